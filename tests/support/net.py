"""A client's side of loopback: connect, read, and ports with nothing listening."""

from __future__ import annotations

import hashlib
import os
import socket

from tests.support.waits import WAIT


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens now: connects to it are refused, and a proxy
    may be told to listen on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that are not all alike (so reordering would show)."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    repeats = size // len(block) + 1
    return (block * repeats)[:size]


def connect(address: tuple[str, int], timeout: float = WAIT) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    sock.settimeout(timeout)
    return sock


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(1 << 20):
        chunks.append(data)
    return b"".join(chunks)


def recv_digest(sock: socket.socket) -> tuple[int, str]:
    """Read to EOF: (byte count, sha256 hex) without holding the bytes."""
    digest, total = hashlib.sha256(), 0
    while chunk := sock.recv(1 << 20):
        digest.update(chunk)
        total += len(chunk)
    return total, digest.hexdigest()


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        data = sock.recv(min(left, 1 << 20))
        if not data:
            break
        chunks.append(data)
        left -= len(data)
    return b"".join(chunks)


def ask(address, payload: bytes = b"") -> bytes:
    """Connect, send `payload`, half-close, and return everything that comes back (b"<reset>"
    for a reset)."""
    with connect(address) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        try:
            return recv_all(client)
        except ConnectionResetError:
            return b"<reset>"


def accepts(port: int) -> bool:
    """Whether something accepts a connection on 127.0.0.1:`port` now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` itself listens on TCP `port` of IPv4 (not some other process that
    took the port meanwhile): one of its descriptors is the listening socket /proc/net/tcp names."""
    fds = f"/proc/{pid}/fd"
    try:
        inodes = set()
        for fd in os.listdir(fds):
            target = os.readlink(f"{fds}/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        with open("/proc/net/tcp") as table:
            rows = [line.split() for line in table.readlines()[1:]]
    except OSError:
        return False  # the process is gone
    return any(row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == port and row[9] in inodes for row in rows)
