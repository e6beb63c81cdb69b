"""The process-wide buffer budget (`max_buffered`): many connections that never read cannot
hold more than the budget (plus one read each), and nothing is lost while they wait."""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import sys
import termios
import textwrap
import time

import pytest

from tests.support import WAIT, connect, pattern, proc_status, recv_digest, source_handler, splicing, wait_until


@pytest.fixture
def proxy_env(data_path):
    """Every test here runs with splicing on and with it off."""
    return splicing(data_path)


MiB = 1024 * 1024


@pytest.fixture
def budget_proxy(tmp_path, start_proxy):
    """start(upstream, buffer_size, max_buffered) -> the `pairproxy run -c FILE` process."""

    def start(upstream: str, buffer_size: str, max_buffered: str):
        path = tmp_path / "pairproxy.yaml"
        path.write_text(
            textwrap.dedent(
                f"""\
                defaults:
                  buffer_size: {buffer_size}
                  max_buffered: {max_buffered}
                listeners:
                  - {{listen: "127.0.0.1:0", upstream: "{upstream}"}}
                """
            )
        )
        return start_proxy("run", "-c", str(path))

    return start


def _pipe_bytes(pid: int) -> int:
    """Bytes waiting in the process's pipes (spliced bytes, which RSS does not show)."""
    total, seen = 0, set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        try:
            target = os.readlink(path)
            if not target.startswith("pipe:") or target in seen:
                continue
            seen.add(target)
            opened = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # the same pipe, not a copy
        except OSError:
            continue  # closed meanwhile
        try:
            total += int.from_bytes(fcntl.ioctl(opened, termios.FIONREAD, b"\0" * 4), sys.byteorder)
        finally:
            os.close(opened)
    return total


def _held_mib(pid: int) -> float:
    """What the proxy holds: its resident memory and the bytes in its pipes."""
    return (proc_status(pid, "VmRSS") * 1024 + _pipe_bytes(pid)) / MiB


def _settled_held(pid: int, ceiling: float, timeout: float = 20.0) -> float:
    """`_held_mib` once it has stopped growing for a while (or as soon as it passes `ceiling`)."""
    deadline = time.monotonic() + timeout
    last, still_since = _held_mib(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = _held_mib(pid)
        if now > ceiling:
            return now
        if now > last + 0.5:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since > 1.5:
            return now
    return _held_mib(pid)


def test_connections_that_never_read_hold_no_more_than_the_budget(budget_proxy, start_upstream):
    size, connections, budget = 6 * MiB, 40, 4 * MiB
    upstream = start_upstream(source_handler(size))
    proxy = budget_proxy(upstream.address, buffer_size="1MiB", max_buffered=f"{budget // MiB}MiB")
    pid, address = proxy.pid, proxy.address
    with connect(address) as warm_up:  # the first connection's imports and allocations are not buffers
        warm_up.recv(1)
    before = _held_mib(pid)
    bound = before + (budget + 16 * MiB) / MiB
    clients = []
    try:
        for _ in range(connections):
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel keeps little for us
            client.settimeout(WAIT * 3)
            client.connect(address)
            clients.append(client)
        assert wait_until(lambda: upstream.accepted >= connections + 1)
        stalled = _settled_held(pid, ceiling=bound)
        assert stalled <= bound, f"memory grew from {before:.1f} MiB to {stalled:.1f} MiB (bound {bound:.1f})"
        expected = (size, hashlib.sha256(pattern(size)).hexdigest())
        for client in clients:  # one at a time: the others stay held while the budget is spent
            assert recv_digest(client) == expected
    finally:
        for client in clients:
            client.close()
