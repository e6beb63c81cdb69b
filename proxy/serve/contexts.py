"""SSL contexts the configuration asks for: terminating TLS from clients (with certificates chosen
by SNI, optional client certificates) and originating TLS to upstream servers.
"""

from __future__ import annotations

import ssl

from proxy.config.certificates import CertificatePair, certificate_names


def server_context(
    default: CertificatePair, others: tuple[CertificatePair, ...] = (), client_ca: str | None = None
) -> ssl.SSLContext:
    """A context for terminating TLS: `default` unless the client's SNI picks one of `others`.

    The chosen name is kept on the SSLObject as `sni_name` for routing and the access log.
    """
    context = _new_server_context(default, client_ca)
    by_name: dict[str, ssl.SSLContext] = {}
    for pair in others:
        other = _new_server_context(pair, client_ca)
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


def _new_server_context(pair: CertificatePair, client_ca: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(pair.cert, pair.key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: str | None = None, verify: bool = True, client_cert: CertificatePair | None = None
) -> ssl.SSLContext:
    """A context for originating TLS: verification against `ca` (or the system store) unless off."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
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
