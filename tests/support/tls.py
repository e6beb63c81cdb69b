"""TLS for the tests: certificate files from trustme, contexts on them, a TLS upstream and
client, and ClientHellos built by hand."""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path

import trustme

from tests.support.net import connect, recv_exactly

# The certificates `write_pki` issues: file stem -> the identities it is for.
IDENTITIES = {
    "proxy": ["proxy.test", "*.proxy.test"],
    "other": ["other.test"],
    "a": ["a.test"],
    "b": ["b.test"],
    "upstream": ["upstream.test"],
    "client": ["client@example.test"],
}


def write_pki(ca: trustme.CA, folder: Path) -> dict[str, str]:
    """PEM files in `folder`: "ca", "NAME.pem" and "NAME.key" for each of IDENTITIES, and
    "other-ca", a CA that issued none of them."""
    files = {"ca": folder / "ca.pem"}
    ca.cert_pem.write_to_path(files["ca"])
    for name, identities in IDENTITIES.items():
        cert = ca.issue_cert(*identities)
        files[f"{name}.pem"] = folder / f"{name}.pem"
        files[f"{name}.key"] = folder / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(files[f"{name}.pem"])
        cert.private_key_pem.write_to_path(files[f"{name}.key"])
    files["other-ca"] = folder / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(files["other-ca"])
    return {key: str(value) for key, value in files.items()}


def client_context(pki, *, cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki["ca"])
    if cert:
        context.load_cert_chain(pki[f"{cert}.pem"], pki[f"{cert}.key"])
    return context


def server_context(pki, name: str, *, client_ca: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki[f"{name}.pem"], pki[f"{name}.key"])
    if client_ca:
        context.load_verify_locations(pki["ca"])
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def tls_upstream(context: ssl.SSLContext, tag: bytes = b""):
    """A handler that completes a TLS handshake, sends `tag`, then echoes."""

    def handler(conn: socket.socket) -> None:
        try:
            tls = context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with tls:
            tls.sendall(tag)
            while data := tls.recv(65536):
                tls.sendall(data)

    return handler


def tls_connect(address, context: ssl.SSLContext, server_name: str) -> ssl.SSLSocket:
    raw = connect(address)
    return context.wrap_socket(raw, server_hostname=server_name)


def echo_through(sock: socket.socket, data: bytes, step: int = 256 * 1024) -> bytes:
    """Send `data` a step at a time, reading each echo back (an SSLSocket is not for two threads)."""
    received = []
    for start in range(0, len(data), step):
        chunk = data[start : start + step]
        sock.sendall(chunk)
        received.append(recv_exactly(sock, len(chunk)))
    return b"".join(received)


def extension(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def synthetic_client_hello(server_name: str | None, padding: int = 0) -> bytes:
    """A handshake message (not yet in records) with an optional SNI and a padding extension."""
    extensions = b""
    if server_name is not None:
        name = server_name.encode()
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        extensions += extension(0x0000, struct.pack("!H", len(entry)) + entry)
    if padding:
        extensions += extension(0x0015, b"\x00" * padding)
    body = b"\x03\x03" + b"\x11" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += struct.pack("!H", len(extensions)) + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


def in_records(message: bytes, size: int) -> bytes:
    return b"".join(
        b"\x16\x03\x01" + struct.pack("!H", len(message[i : i + size])) + message[i : i + size]
        for i in range(0, len(message), size)
    )
