"""Certificate files as the configuration names them: a cert/key pair that must load and belong
together, CA files, the DNS names a certificate is for, and server-name patterns.

Used by the loader (to check files and warn about uncovered SNI routes), by the route table (name
patterns) and by the SSL context builders in proxy/serve/contexts.py.
"""

from __future__ import annotations

import base64
import binascii
import re
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
    """The DNS names a PEM certificate file's first certificate is for; ValueError if it has none readable."""
    try:
        with open(cert_path, "rb") as file:
            pem = file.read(_MAX_PEM)
    except OSError as exc:
        raise ValueError(f"cannot read the certificate: {exc.strerror or exc}") from None
    return pem_names(pem)


# -- the DNS names of a certificate, read from its DER ----------------------------------------
#
# The standard library decodes certificates only on a live connection, so the few fields needed
# are read here: Certificate -> tbsCertificate -> extensions -> subjectAltName's dNSName entries,
# or without any, the subject's commonName (RFC 5280 4.1, 4.2.1.6).

_MAX_PEM = 1024 * 1024  # far more than any certificate chain; a bound on what is read
# The labels OpenSSL reads a certificate from; a TRUSTED one has OpenSSL's trust settings after it.
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN ((?:X509 |TRUSTED )?CERTIFICATE)-----(.*?)-----END \1-----", re.DOTALL)
_SEQUENCE, _SET, _OID, _OCTET_STRING = 0x30, 0x31, 0x06, 0x04
_VERSION, _EXTENSIONS, _DNS_NAME = 0xA0, 0xA3, 0x82  # context tags [0], [3] (explicit), [2] (implicit)
_SUBJECT_ALT_NAME = bytes.fromhex("551d11")  # 2.5.29.17
_COMMON_NAME = bytes.fromhex("550403")  # 2.5.4.3
_STRING_ENCODINGS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1", 0x1E: "utf-16-be"}


def pem_names(pem: bytes) -> list[str]:
    """The DNS names of the first certificate in PEM text; ValueError unless it is a readable certificate."""
    found = _PEM_CERTIFICATE.search(pem)
    if found is None:
        raise ValueError("no PEM certificate found")
    try:
        der = base64.b64decode(b"".join(found.group(2).split()), validate=True)
    except binascii.Error:
        raise ValueError("the PEM certificate is not valid base64") from None
    if found.group(1).startswith(b"TRUSTED"):
        der = der[: _element(der, 0)[2]]
    return der_names(der)


def der_names(der: bytes) -> list[str]:
    """subjectAltName dNSName entries of a DER certificate, else its subject's commonName; ValueError if malformed."""
    certificate = _only(der, _SEQUENCE, "certificate")
    tbs = _elements(_first(certificate, _SEQUENCE, "tbsCertificate"))
    if tbs and tbs[0][0] == _VERSION:
        tbs = tbs[1:]
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, then optional fields
    if len(tbs) < 6:
        raise ValueError("malformed certificate: tbsCertificate is too short")
    subject = tbs[4]
    extensions = [value for tag, value in tbs[6:] if tag == _EXTENSIONS]
    names = _alt_names(extensions[0]) if extensions else []
    return names or _common_names(_expect(subject, _SEQUENCE, "subject"))


def _alt_names(explicit: bytes) -> list[str]:
    for extension in _elements(_only(explicit, _SEQUENCE, "extensions")):
        fields = _elements(_expect(extension, _SEQUENCE, "extension"))
        if not fields or _expect(fields[0], _OID, "extension id") != _SUBJECT_ALT_NAME:
            continue
        value = _only(_expect(fields[-1], _OCTET_STRING, "extension value"), _SEQUENCE, "subjectAltName")
        return [_decode(0x16, name) for tag, name in _elements(value) if tag == _DNS_NAME]
    return []


def _common_names(subject: bytes) -> list[str]:
    names = []
    for rdn in _elements(subject):
        for attribute in _elements(_expect(rdn, _SET, "name")):
            fields = _elements(_expect(attribute, _SEQUENCE, "attribute"))
            if len(fields) == 2 and _expect(fields[0], _OID, "attribute type") == _COMMON_NAME:
                tag, value = fields[1]
                if tag in _STRING_ENCODINGS:
                    names.append(_decode(tag, value))
    return names


def _decode(tag: int, value: bytes) -> str:
    try:
        return value.decode(_STRING_ENCODINGS[tag])
    except UnicodeDecodeError:
        raise ValueError("malformed certificate: a name is not valid text") from None


def _expect(element: tuple[int, bytes], tag: int, what: str) -> bytes:
    if element[0] != tag:
        raise ValueError(f"malformed certificate: {what} has tag 0x{element[0]:02x}, expected 0x{tag:02x}")
    return element[1]


def _first(data: bytes, tag: int, what: str) -> bytes:
    elements = _elements(data)
    if not elements:
        raise ValueError(f"malformed certificate: no {what}")
    return _expect(elements[0], tag, what)


def _only(data: bytes, tag: int, what: str) -> bytes:
    elements = _elements(data)
    if len(elements) != 1:
        raise ValueError(f"malformed certificate: {what} is not one element")
    return _expect(elements[0], tag, what)


def _elements(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, contents) of consecutive DER elements filling `data` exactly."""
    elements = []
    offset = 0
    while offset < len(data):
        tag, start, offset = _element(data, offset)
        elements.append((tag, data[start:offset]))
    return elements


def _element(data: bytes, offset: int) -> tuple[int, int, int]:
    """The tag of the DER element at `offset`, where its contents start and where it ends."""
    if offset + 2 > len(data):
        raise ValueError("malformed certificate: truncated element")
    tag, length = data[offset], data[offset + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError("malformed certificate: multi-byte tags are not used in certificates")
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or offset + count > len(data):
            raise ValueError("malformed certificate: bad length")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    if offset + length > len(data):
        raise ValueError("malformed certificate: an element runs past its end")
    return tag, offset, offset + length
