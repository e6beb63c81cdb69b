"""Certificate files as the configuration names them: a cert/key pair that must load and belong
together, CA files, the DNS names a certificate is for, and server-name patterns.

Used by the loader (to check files and warn about uncovered SNI routes), by the route table (name
patterns) and by the SSL context builders in proxy/serve/contexts.py.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from proxy.errors import describe_ssl_error


@dataclass(frozen=True)
class CertificatePair:
    cert: str
    key: str


def name_matches(pattern: str, server_name: str) -> bool:
    """Exact names, or `*.example.com` for exactly one more label; case-insensitive."""
    pattern = pattern.lower().rstrip(".")
    name = server_name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, dot, rest = name.partition(".")
        return bool(head) and bool(dot) and rest == pattern[2:]
    return name == pattern


def check_certificate(pair: CertificatePair) -> None:
    """ValueError with a readable reason unless cert and key load and belong together."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(pair.cert, pair.key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ValueError("the certificate and the key do not belong together") from None
        raise ValueError(f"cannot load the certificate and key: {describe_ssl_error(exc)}") from None
    except OSError as exc:
        raise ValueError(f"cannot load the certificate and key: {exc.strerror or exc}") from None


def check_ca_file(path: str) -> None:
    """ValueError unless `path` holds at least one CA certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(path)
    except ssl.SSLError as exc:
        raise ValueError(f"not a PEM certificate file ({describe_ssl_error(exc)})") from None
    if not context.cert_store_stats().get("x509_ca"):
        raise ValueError("holds no CA certificate")


def certificate_names(cert_path: str) -> list[str]:
    """The DNS names a PEM certificate is for (subjectAltName, else the common name)."""
    # The standard library's only certificate decoder that needs no live connection.
    decoded = ssl._ssl._test_decode_cert(cert_path)
    names = [value for kind, value in decoded.get("subjectAltName", ()) if kind == "DNS"]
    if not names:
        for rdn in decoded.get("subject", ()):
            names.extend(value for key, value in rdn if key == "commonName")
    return names
