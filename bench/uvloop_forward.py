"""A reference peer for the bench: the smallest correct TCP forwarder on asyncio and uvloop.

`python bench/uvloop_forward.py PORT UPSTREAM_PORT` forwards 127.0.0.1:PORT to
127.0.0.1:UPSTREAM_PORT. Correct where it matters to a fair comparison: the client is not read
until the upstream is connected, each direction pauses its reader when the other side's write
buffer is full (asyncio's watermarks), an end of stream is passed on as a half-close, and the
connection is closed once both directions have ended, or at once when either side fails.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import uvloop


class Side(asyncio.Protocol):
    """One socket; `peer` is the other side, whose transport gets what this one receives."""

    def __init__(self, peer: Side | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.ended = False  # our remote end sent its FIN

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.ended = True
        if self.peer.ended:
            self.peer.transport.close()  # both directions are over (write() flushes first)
            self.transport.close()
        elif not self.peer.transport.is_closing():
            self.peer.transport.write_eof()
        return True  # keep our writing half open for the other direction

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            (peer.transport.abort if exc is not None else peer.transport.close)()


class Client(Side):
    """The accepted side: it connects the upstream, and reads only once that is done (what came
    before, a read already under way, is held and sent first)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.early: list[bytes] = []
        transport.pause_reading()  # type: ignore[attr-defined]
        self.connecting = asyncio.ensure_future(self.connect())  # held: a task nobody holds may be collected

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
            self.transport.pause_reading()
        else:
            super().data_received(data)

    def eof_received(self) -> bool:
        if self.peer is None:
            self.ended = True  # passed on once the upstream is there
            return True
        return super().eof_received()

    async def connect(self) -> None:
        try:
            await asyncio.get_running_loop().create_connection(lambda: Upstream(self), "127.0.0.1", UPSTREAM)
        except OSError:
            self.transport.abort()

    def upstream_ready(self, upstream: Side) -> None:
        self.peer = upstream
        for data in self.early:
            upstream.transport.write(data)
        self.early.clear()
        if self.ended:
            upstream.transport.write_eof()
        self.transport.resume_reading()


class Upstream(Side):
    """The connected side: once it is up, its client starts reading."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peer.upstream_ready(self)


UPSTREAM = int(sys.argv[2]) if len(sys.argv) > 2 else 0


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
