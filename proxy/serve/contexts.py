"""SSL contexts the configuration asks for: terminating TLS from clients (with certificates chosen
by SNI, optional client certificates) and originating TLS to upstream servers.

A context given a key log (`keylog=`, a file `open_keylog` made ready) writes its sessions'
secrets to that file in the NSS key log format, so that Wireshark can decrypt a capture.
"""

from __future__ import annotations

import os
import ssl

from proxy.config.certificates import CertificatePair, certificate_names
from proxy.output import open_private


def open_keylog(path: str) -> str:
    """Make the key log at `path` ready for contexts to write TLS secrets to; its absolute form,
    the `keylog` to give them.

    The file is appended to, and created readable by its owner only (it decrypts traffic): it is
    created here because the stdlib would create it with the umask's mode. OSError if it cannot
    be opened for appending.
    """
    path = os.path.abspath(path)
    os.close(open_private(path, append=True))
    return path


def _logged(context: ssl.SSLContext, keylog: str | None) -> ssl.SSLContext:
    if keylog is not None:
        context.keylog_filename = keylog
    return context


def server_context(
    default: CertificatePair,
    others: tuple[CertificatePair, ...] = (),
    client_ca: str | None = None,
    *,
    keylog: str | None = None,
    alpn: tuple[str, ...] = (),
) -> ssl.SSLContext:
    """A context for terminating TLS: `default` unless the client's SNI picks one of `others`.

    The chosen name is kept on the SSLObject as `sni_name` for routing and the access log.
    With `alpn`, the handshake answers the first of these the client offers (every certificate's
    context says the same, since OpenSSL asks the one SNI chose).
    """
    context = _new_server_context(default, client_ca, keylog, alpn)
    by_name: dict[str, ssl.SSLContext] = {}
    for pair in others:
        other = _new_server_context(pair, client_ca, keylog, alpn)
        for name in certificate_names(pair.cert):
            by_name.setdefault(name.lower(), other)

    def choose(ssl_object: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext) -> None:
        ssl_object.sni_name = server_name
        if server_name:
            chosen = _lookup(by_name, server_name.lower())
            if chosen is not None:
                ssl_object.context = chosen

    context.sni_callback = choose
    return context


def _lookup(by_name: dict[str, ssl.SSLContext], name: str) -> ssl.SSLContext | None:
    if name in by_name:
        return by_name[name]
    _, dot, parent = name.partition(".")
    return by_name.get(f"*.{parent}") if dot else None


def _new_server_context(
    pair: CertificatePair, client_ca: str | None, keylog: str | None, alpn: tuple[str, ...]
) -> ssl.SSLContext:
    context = _logged(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), keylog)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(pair.cert, pair.key)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: str | None = None,
    verify: bool = True,
    client_cert: CertificatePair | None = None,
    *,
    keylog: str | None = None,
) -> ssl.SSLContext:
    """A context for originating TLS: verification against `ca` (or the system store) unless off."""
    context = _logged(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), keylog)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        if ca is not None:
            context.load_verify_locations(ca)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_cert is not None:
        context.load_cert_chain(client_cert.cert, client_cert.key)
    return context
