"""A side whose socket speaks TLS: ciphertext on the socket, plaintext to and from the pair.

It runs the handshake first (reading even before the pair is open: the handshake is not
payload), encrypts what it is given, and turns close_notify into the same end of stream a plain
side gets from a TCP FIN. The TLS protocol itself is proxy/protocol/tls.py's TlsSession.
"""

from __future__ import annotations

from typing import Any

from proxy.loop.poller import READ
from proxy.protocol.tls import TlsError, TlsSession
from proxy.relay.side import _HANDSHAKING, _READING, Reading, Side


class TlsSide(Side):
    """A side whose socket speaks TLS; the pair sees only plaintext.

    It reads during the handshake even before the pair is open (the handshake is not payload),
    then tells its owner `handshake_done(self)` once, and delivers plaintext only once the
    owner has called `start_reading`. The arguments are Side's, then the session.
    """

    def __init__(self, *args: Any, session: TlsSession, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session = session

    def readable(self) -> bool:
        read = self.read
        return read is _READING or read is _HANDSHAKING

    def interest(self) -> int:
        return Side.interest(self) | (READ if self.read is _HANDSHAKING else 0)

    def start(self) -> None:
        """Begin the handshake (a client sends its ClientHello now) and start reading."""
        self._read_to(Reading.HANDSHAKING)
        self._advance_handshake()

    def handle_read(self) -> None:
        count = self.receive()
        if count is None:
            return
        self.session.receive(self.scratch[:count])
        if self.read is _HANDSHAKING and not self._advance_handshake():
            if not count and not self.closed:
                self.owner.handshake_failed(self, "tls_error", "connection closed during the handshake")
            return
        if self.read is _READING:
            self.drain_plaintext()

    def _advance_handshake(self) -> bool:
        try:
            done = self.session.handshake()
        except TlsError as exc:
            self._send_ciphertext()  # the alert tells the peer why
            self.owner.handshake_failed(self, "tls_error", str(exc))
            return False
        self._send_ciphertext()
        if done:
            self._read_to(Reading.IDLE)  # no plaintext until the owner has a peer to take it
            self.last_active = self.reactor.now  # the idle clock did not run during the handshake
            self.owner.handshake_done(self)
        return done

    def drain_plaintext(self) -> None:
        """Deliver the plaintext the session holds, until it needs more or the peer is full."""
        session = self.session
        while self.read is _READING and not self.closed:
            try:
                data = session.read(self.read_size)
            except TlsError as exc:
                self.owner.protocol_failed(self, "tls_error", str(exc))
                return
            if data is None:
                break
            if not data:
                self.end_of_stream()
                break
            self.deliver(memoryview(data))
        if not self.closed:
            self._send_ciphertext()  # reading can answer too (TLS 1.3 key updates)

    def resume(self) -> None:
        super().resume()
        # Plaintext may be waiting inside the session with no socket event left to announce it.
        self.reactor.call_soon(self._resume_plaintext)

    def start_reading(self) -> None:
        super().start_reading()
        self.reactor.call_soon(self._resume_plaintext)

    def _resume_plaintext(self) -> None:
        if self.read is Reading.READING and not self.closed:
            self.drain_plaintext()

    def forward(self, data: memoryview, flags: int = 0) -> None:
        # `flags` are for a plain socket's send: the records carry no such hint.
        try:
            self.session.write(data)
        except TlsError as exc:
            self.owner.protocol_failed(self, "tls_error", str(exc))
            return
        self._send_ciphertext()

    def _send_ciphertext(self) -> None:
        ciphertext = self.session.pending_ciphertext()
        if ciphertext:
            Side.forward(self, memoryview(ciphertext))

    def shutdown_write(self, last: bool) -> bool:
        if not self.session.write_closed:
            try:
                self.session.close_write()
            except TlsError:
                pass  # the session is broken; the TCP half-close below still ends our direction
            self._send_ciphertext()
            if self.outgoing.size:
                return False
        return super().shutdown_write(last)

    def truncated(self) -> bool:
        return self.session.truncated

    def tls_details(self) -> dict[str, object]:
        return self.session.details()

    def log_fields(self) -> dict[str, object]:
        session = self.session
        fields: dict[str, object] = {f"{self.name}_tls": session.version}
        if self.name == "client":
            fields["sni"] = session.server_name
            fields["client_cert"] = "yes" if session.peer_certificate_presented else "no"
        return fields
