"""TLS as a state machine over memory buffers: the handshake, plaintext both ways, close_notify.

Theory of operation
-------------------
A TlsSession wraps `ssl.SSLObject` between two `ssl.MemoryBIO`s and never touches a socket:
the dispatcher feeds it the ciphertext it received (`receive`), asks for the plaintext in a
buffer of its own (`read_into`: no bytes object per record), gives it plaintext to protect
(`write`), and sends whatever ciphertext it produced (`pending_ciphertext`). The handshake
advances in `handshake` until it completes. Asked for plaintext or a handshake step when
nothing it received is left to process, it answers at once: OpenSSL would answer by raising
SSLWantReadError, which costs more than decrypting a record.

States (checked: any other move is a TlsStateError):

    HANDSHAKING --handshake done--> OPEN --our close_notify, or the peer's--> CLOSING
    CLOSING --the other one too--> CLOSED;  any state --TlsError--> CLOSED

Two flags say which half ended, and the rest of the proxy reads them: `write_closed` once our
close_notify went out, `eof` once the peer's arrived (or its TCP stream ended without one, which
`truncated` tells apart: an attacker may cut a stream short, so the access log says so).
CLOSING is exactly "one of the two", CLOSED after an orderly end is "both". TLS 1.3 treats
close_notify as the end of one direction only, so a half-close maps onto it: the proxy forwards
a client's close_notify as a TCP half-close to the plaintext side, and answers a plaintext EOF
with a close_notify while still reading. Peers that close the TCP connection right after their
close_notify (common with TLS 1.2 stacks) simply end both directions.
"""

from __future__ import annotations

import enum
import ssl

from proxy.errors import describe_ssl_error


class TlsError(Exception):
    """The handshake or the record layer failed; the message says why, for the access log."""


class TlsStateError(TlsError):
    """A call the session's state does not allow (a bug in the caller, not the peer's doing).

    A TlsError all the same, so a caller that ends the connection on TlsError does so here too.
    """


class TlsState(enum.Enum):
    HANDSHAKING = "handshaking"  # no plaintext either way yet
    OPEN = "open"  # plaintext both ways
    CLOSING = "closing"  # one close_notify went either way (see `eof`, `write_closed`), not both
    CLOSED = "closed"  # both went, or the session failed (see `error`)


_HANDSHAKING = TlsState.HANDSHAKING  # a global for the per-record paths: see relay/side.py

_MOVES: dict[TlsState, frozenset[TlsState]] = {
    TlsState.HANDSHAKING: frozenset({TlsState.OPEN, TlsState.CLOSED}),
    TlsState.OPEN: frozenset({TlsState.CLOSING, TlsState.CLOSED}),
    TlsState.CLOSING: frozenset({TlsState.CLOSED}),
    TlsState.CLOSED: frozenset(),
}


class TlsSession:
    """One TLS connection's protocol state; the socket is someone else's.

    After a TlsError the session is CLOSED with the reason in `error`, and `handshake`, `read`
    and `write` raise that same error again; `pending_ciphertext` still yields the alert.
    """

    def __init__(self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self._server_side = server_side
        self.state = TlsState.HANDSHAKING
        self.eof = False  # the peer's close_notify arrived (or its TCP stream ended without one)
        self.write_closed = False  # our close_notify went out
        self.error: str | None = None  # why the session failed, once it has
        self.truncated = False  # the peer's TCP stream ended without its close_notify
        # What was agreed, kept from the end of the handshake (the SSLObject forgets some of it
        # once a close_notify has gone either way).
        self.version: str | None = None
        self.server_name: str | None = None  # on a server session: the SNI the client sent
        self.peer_certificate_presented = False

    # -- states --------------------------------------------------------------------------

    def _move(self, new: TlsState) -> None:
        if new not in _MOVES[self.state]:
            raise TlsStateError(f"TLS session cannot go from {self.state.value} to {new.value}")
        self.state = new

    def _fail(self, exc: ssl.SSLError) -> TlsError:
        """The session is broken: CLOSED from whatever state, and the error to raise."""
        self.error = describe_ssl_error(exc)
        self.state = TlsState.CLOSED  # every state may fail
        return TlsError(self.error)

    def _half_closed(self) -> None:
        """One more direction ended (`eof` or `write_closed` was just set)."""
        self._move(TlsState.CLOSED if self.eof and self.write_closed else TlsState.CLOSING)

    def _unusable(self, operation: str) -> TlsError:
        """What `operation` raises in a session that failed or has not finished its handshake
        (the callers test for those two first: a call on every record's path costs as much)."""
        if self.error is not None:
            return TlsError(self.error)
        return TlsStateError(f"cannot {operation} before the TLS handshake is complete")

    # -- ciphertext in and out -----------------------------------------------------------

    def receive(self, ciphertext: bytes | memoryview) -> None:
        """Ciphertext from the socket; b"" means the TCP connection ended. Any state."""
        if ciphertext:
            self._incoming.write(ciphertext)
        else:
            self._incoming.write_eof()

    def pending_ciphertext(self) -> bytes:
        """Ciphertext to send to the peer (handshake records, data, alerts); b"" when none."""
        return self._outgoing.read() if self._outgoing.pending else b""

    # -- the handshake -------------------------------------------------------------------

    def handshake(self) -> bool:
        """Advance the handshake with what has been received; True once it is complete.

        True at once in any later state; TlsError if it failed (now or before).
        """
        if self.error is not None:
            raise TlsError(self.error)
        if self.state is not TlsState.HANDSHAKING:
            return True
        incoming = self._incoming
        if self._server_side and not incoming.pending and not incoming.eof:
            return False  # a server's every step answers what the client sent: nothing new yet
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            raise self._fail(exc) from None
        self._move(TlsState.OPEN)
        self.version = self._ssl.version()
        self.server_name = getattr(self._ssl, "sni_name", None)
        self.peer_certificate_presented = self._ssl.getpeercert(binary_form=True) is not None
        return True

    def details(self) -> dict[str, object]:
        """What the completed handshake agreed: version, cipher, SNI, ALPN and the peer
        certificate's subject (only a verified certificate has one to tell; else `unverified`)."""
        ssl_object = self._ssl
        cipher = ssl_object.cipher()
        certificate = ssl_object.getpeercert()
        if certificate:
            subject = ",".join(f"{key}={value}" for rdn in certificate.get("subject", ()) for key, value in rdn)
        else:
            subject = "unverified" if self.peer_certificate_presented else None
        return {
            "version": self.version,
            "cipher": cipher[0] if cipher else None,
            "sni": self.server_name if ssl_object.server_side else ssl_object.server_hostname,
            "alpn": ssl_object.selected_alpn_protocol(),
            "peer_cert": subject,
        }

    # -- plaintext -----------------------------------------------------------------------

    def read_into(self, buffer: memoryview, size: int) -> int | None:
        """Plaintext received, at most `size` bytes written into `buffer`: the byte count, 0 at
        the peer's close_notify, None when more ciphertext is needed.

        Only once the handshake is complete. The first 0 ends the peer's direction (OPEN ->
        CLOSING, or CLOSING -> CLOSED when ours had ended); every later read is 0 again.
        """
        if self.eof:
            return 0
        if self.error is not None or self.state is _HANDSHAKING:
            raise self._unusable("read")
        incoming = self._incoming
        if not incoming.pending and not incoming.eof and not self._ssl.pending():
            return None  # nothing received is left to decrypt (see the theory of operation)
        try:
            count = self._ssl.read(size, buffer)
        except ssl.SSLWantReadError:
            return None  # part of a record only, or a record with no plaintext (a key update)
        except ssl.SSLZeroReturnError:
            count = 0  # close_notify (raised only when ours went first; otherwise read gives 0)
        except ssl.SSLEOFError:
            count = 0  # the TCP connection ended without a close_notify: an end of stream all the same
            self.truncated = True
        except ssl.SSLError as exc:
            raise self._fail(exc) from None
        if not count:
            self.eof = True
            self._half_closed()
        return count

    def write(self, plaintext: bytes | memoryview) -> None:
        """Protect `plaintext`; the records are then in `pending_ciphertext()`.

        Only once the handshake is complete and before `close_write`; the peer's close_notify
        does not stop it (that is the half-close).
        """
        if self.error is not None or self.state is _HANDSHAKING:
            raise self._unusable("write")
        if self.write_closed:
            raise TlsStateError("cannot write after our close_notify")
        try:
            self._ssl.write(plaintext)
        except ssl.SSLError as exc:
            raise self._fail(exc) from None

    def close_write(self) -> None:
        """Send close_notify: no more plaintext from us, though the peer may go on sending.

        OPEN -> CLOSING, or CLOSING -> CLOSED when the peer's end had arrived. Does nothing a
        second time, before the handshake is complete or after a failure: there is no
        close_notify to send then, and the caller's TCP half-close ends the direction alone.
        """
        if self.write_closed or self.state not in (TlsState.OPEN, TlsState.CLOSING):
            return
        self.write_closed = True
        if self.truncated:
            # The peer's stream ended without a close_notify: OpenSSL counts that as a failure and
            # will send nothing more. Our direction ends with the caller's TCP half-close.
            self._half_closed()
            return
        try:
            self._ssl.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass  # our close_notify is written; the peer's may come later
        except ssl.SSLError as exc:
            raise self._fail(exc) from None
        self._half_closed()
