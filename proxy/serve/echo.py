"""`pairproxy echo`: the classic echo server, as dispatchers on the same reactor.

Every byte a client sends comes back in order. A client's half-close is answered by a
half-close once its bytes are echoed. Memory per client is bounded: past ECHO_BUFFER unsent
bytes the server stops reading that client until it catches up.
"""

from __future__ import annotations

import signal
import socket

from proxy.config.units import Address
from proxy.log import EventLog
from proxy.loop.dispatcher import PeerDispatcher
from proxy.loop.drain import attach_output
from proxy.loop.listener import Listener, bind_listening_socket, raise_fd_limit
from proxy.loop.reactor import Reactor
from proxy.relay.buffer import SendBuffer

ECHO_BUFFER = 1024 * 1024
READ_SIZE = 64 * 1024


class EchoConnection(PeerDispatcher):
    def __init__(self, reactor: Reactor, sock: socket.socket) -> None:
        super().__init__(reactor, sock)
        self.outgoing = SendBuffer(ECHO_BUFFER)
        self.eof = False
        self.interest_changed()

    def readable(self) -> bool:
        return not self.eof and not self.outgoing.full

    def writable(self) -> bool:
        return self.outgoing.size > 0

    def handle_read(self) -> None:
        data = self.socket.recv(READ_SIZE)  # an OSError goes to handle_error
        if not data:
            self.eof = True
            self.interest_changed()
        else:
            self.outgoing.append(data)
        self.handle_write()

    def handle_write(self) -> None:
        outgoing = self.outgoing
        outgoing.send_with(self.socket.send)
        if not outgoing.size and self.eof:
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the client is gone already; closing is all that is left
            self.close()
            return
        self.interest_changed()  # cheap: the reactor touches the poller only if the mask moved


def serve_echo(address: Address, log: EventLog) -> None:
    """Serve the echo protocol on `address` until SIGINT or SIGTERM; SIGHUP is logged and ignored.

    The signal handlers are in place before `listening` is logged, so a signal sent by whoever
    waited for that line is never met by the default action.
    """
    raise_fd_limit()
    reactor = Reactor(log)
    attach_output(reactor, log.output)
    try:
        reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
        reactor.add_signal_handler(signal.SIGINT, reactor.stop)
        reactor.add_signal_handler(
            signal.SIGHUP, lambda: log.warning("reload_ignored", reason="nothing to reload (echo)")
        )
        sock = bind_listening_socket(address)
        listener = Listener(reactor, sock, "echo", lambda client, _peer: EchoConnection(reactor, client))
        log.info("listening", listener="echo", address=listener.address)
        reactor.loop()
    finally:
        log.output.detach()
        reactor.close()
