"""A side whose socket speaks TLS: ciphertext on the socket, plaintext to and from the pair.

It runs the handshake first (reading even before the pair is open: the handshake is not
payload), encrypts what it is given, and turns close_notify into the same end of stream a plain
side gets from a TCP FIN. The TLS protocol itself is proxy/protocol/tls.py's TlsSession.
"""

from __future__ import annotations

from typing import Any

from proxy.protocol.tls import TlsError, TlsSession
from proxy.relay.side import Side
from proxy.relay.states import HANDSHAKING, IDLE, READ_CLOSED, READING, TLS_READS


class TlsSide(Side):
    """A side whose socket speaks TLS; the pair sees only plaintext.

    It reads during the handshake even before the pair is open (the handshake is not payload),
    then tells its owner `handshake_done(self)` once, and delivers plaintext only once the
    owner has called `start_reading`. The arguments are Side's, then the session.
    """

    def __init__(self, *args: Any, session: TlsSession, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session = session

    reads = TLS_READS  # it reads its handshake too

    def start(self) -> None:
        """Begin the handshake (a client sends its ClientHello now) and start reading."""
        self._read_to(HANDSHAKING)
        self._advance_handshake(ended=False)

    def handle_read(self) -> None:
        count = self.receive()
        if count is None:
            return
        self.session.receive(self.scratch[:count])
        if self.read is HANDSHAKING:
            self._advance_handshake(ended=not count)
        elif self.read is READING:
            self.drain_plaintext()

    def _advance_handshake(self, ended: bool) -> None:
        """One step of the handshake; `ended`: the peer closed, so no step will follow. The
        owner hears once: done, or failed."""
        try:
            done = self.session.handshake()
        except TlsError as exc:
            self._send_ciphertext()  # the alert tells the peer why
            self.owner.handshake_failed(self, "tls_error", str(exc))
            return
        self._send_ciphertext()
        if done:
            self._read_to(IDLE)  # no plaintext until the owner has a peer to take it
            self.last_active = self.reactor.now  # the idle clock did not run during the handshake
            self.owner.handshake_done(self)
        elif ended:
            self.owner.handshake_failed(self, "tls_error", "connection closed during the handshake")

    def drain_plaintext(self) -> None:
        """Deliver the plaintext the session holds, until it needs more or the peer is full.

        The plaintext is decrypted into the scratch buffer, as a plain side's reads are: the
        ciphertext it held is in the session by then, and the peer sends or copies what it is
        given before the next read."""
        session, scratch, size = self.session, self.scratch, self.read_size
        ended = False
        while self.read is READING:  # a side closed meanwhile is not READING
            try:
                count = session.read_into(scratch, size)
            except TlsError as exc:
                self.owner.protocol_failed(self, "tls_error", str(exc))
                return
            if not count:
                ended = count is not None
                break
            self.deliver(scratch[:count])
        if self.read is READ_CLOSED:
            return  # the peer failed taking what was delivered, and the pair is over
        self._send_ciphertext()  # reading can answer too (TLS 1.3 key updates)
        if ended:
            self.end_of_stream()

    def resume(self) -> None:
        super().resume()
        # Plaintext may be waiting inside the session with no socket event left to announce it.
        self.reactor.call_soon(self._resume_plaintext)

    def start_reading(self) -> None:
        super().start_reading()
        self.reactor.call_soon(self._resume_plaintext)

    def _resume_plaintext(self) -> None:
        if self.read is READING:
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
