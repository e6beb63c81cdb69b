"""A reference peer for the bench: the least Python a forwarder on epoll can run per connection.

`python bench/floor_forward.py PORT UPSTREAM_PORT` forwards 127.0.0.1:PORT to
127.0.0.1:UPSTREAM_PORT with one epoll loop and no features at all: no timeouts, no logging, no
limits, no routing, a write buffer of one pending chunk per direction. It is what pairproxy's
own design (a Python reactor over epoll) costs with everything a real proxy does taken out, so
the bench can say how much of pairproxy's CPU per connection is the interpreter's floor and how
much is pairproxy's own. It is not for serving anything.
"""

from __future__ import annotations

import select
import socket
import sys

IN, OUT = select.EPOLLIN, select.EPOLLOUT


class Side:
    __slots__ = ("sock", "fd", "peer", "pending", "ended", "connecting")

    def __init__(self, sock: socket.socket, connecting: bool = False) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer: Side | None = None
        self.pending = b""  # what the peer read and this socket did not take yet
        self.ended = False  # this socket's remote end sent its FIN
        self.connecting = connecting


def main() -> None:
    port, upstream = int(sys.argv[1]), int(sys.argv[2])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)
    poll = select.epoll()
    poll.register(listener.fileno(), IN)
    sides: dict[int, Side] = {}
    buffer = bytearray(65536)

    def close(side: Side) -> None:
        for each in (side, side.peer):
            if each is not None and each.fd in sides:
                del sides[each.fd]
                poll.unregister(each.fd)
                each.sock.close()

    while True:
        born: set[int] = set()  # descriptors made in this batch: its other events are an old socket's
        for fd, events in poll.poll():
            if fd in born:
                continue
            if fd == listener.fileno():
                while True:
                    try:
                        client_sock, _ = listener.accept()
                    except BlockingIOError:
                        break
                    client_sock.setblocking(False)
                    server_sock = socket.socket()
                    server_sock.setblocking(False)
                    server_sock.connect_ex(("127.0.0.1", upstream))
                    client, server = Side(client_sock), Side(server_sock, connecting=True)
                    client.peer, server.peer = server, client
                    sides[client.fd], sides[server.fd] = client, server
                    born.update((client.fd, server.fd))
                    poll.register(server.fd, OUT)
                continue
            side = sides.get(fd)
            if side is None:
                continue
            if side.connecting:
                side.connecting = False
                if side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    close(side)
                    continue
                side.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                poll.modify(side.fd, IN)
                poll.register(side.peer.fd, IN)
                continue
            try:
                if events & OUT:
                    sent = side.sock.send(side.pending)
                    side.pending = side.pending[sent:]
                    if not side.pending:
                        poll.modify(side.fd, IN)
                        poll.modify(side.peer.fd, IN)
                        if side.peer.ended:
                            side.sock.shutdown(socket.SHUT_WR)
                    continue
                count = side.sock.recv_into(buffer)
                peer = side.peer
                if not count:
                    side.ended = True
                    if peer.ended:
                        close(side)
                    elif not peer.pending:
                        peer.sock.shutdown(socket.SHUT_WR)
                    continue
                data = buffer[:count]
                sent = peer.sock.send(data)
                if sent < count:  # wait until the peer takes the rest before reading more
                    peer.pending = bytes(data[sent:])
                    poll.modify(peer.fd, OUT)
                    poll.modify(side.fd, 0)
            except OSError:
                close(side)


if __name__ == "__main__":
    main()
