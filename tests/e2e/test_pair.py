"""The pair's own rules, end to end: what counts as activity for the idle timeout."""

from __future__ import annotations

import hashlib
import socket
import time

import pytest

from tests.support import WAIT, connect, echo_handler, pattern, recv_exactly, source_handler, splicing


@pytest.fixture
def proxy_env(data_path):
    """Every test here runs with splicing on and with it off."""
    return splicing(data_path)


def test_a_slow_reader_still_receiving_is_not_idle(start_proxy, start_upstream):
    # The upstream sends everything at once; the proxy holds it and then only writes, to a client
    # that reads 16 KiB every 50 ms (about 2.3 s in all, several idle timeouts). Writes are
    # activity too: the transfer must finish whole.
    size = 384 * 1024
    upstream = start_upstream(source_handler(size))
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--idle-timeout", "600ms", "--buffer-size", "1MiB")
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024)  # keep the bytes in the proxy
    client.settimeout(WAIT)
    client.connect(proxy.address)
    digest, total = hashlib.sha256(), 0
    deadline = time.monotonic() + 30
    with client:
        while time.monotonic() < deadline:
            chunk = client.recv(16 * 1024)
            if not chunk:
                break
            digest.update(chunk)
            total += len(chunk)
            time.sleep(0.05)
    assert total == size
    assert digest.hexdigest() == hashlib.sha256(pattern(1 << 20)[:size]).hexdigest()  # what source_handler sends
    assert proxy.wait_access(1)[0]["result"] == "closed"


def test_a_reader_that_stopped_reading_times_out(start_proxy, start_upstream):
    # Bytes stuck in the kernel's queues are not traffic: the pair idles out, at most one extra
    # interval after the queues stop moving.
    upstream = start_upstream(source_handler(8 * 1024 * 1024))
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--idle-timeout", "400ms")
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024)
    client.settimeout(WAIT)
    with client:
        client.connect(proxy.address)
        started = time.monotonic()
        access = proxy.wait_access(1)[0]
        assert access["result"] == "timeout"
        assert access["reason"] == "idle"
        assert time.monotonic() - started < 3.0


def test_many_small_exchanges_never_splice(start_proxy, start_upstream, data_path):
    # Request/response traffic stays copied however much of it there is: only big reads (a
    # sender ahead of the proxy) make a direction switch to a pipe.
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address)
    before = proxy.pipe_count()
    message = pattern(2048, seed=9)
    with connect(proxy.address) as client:
        for _ in range(1024):  # 2 MiB each way, past the 1 MiB a bulk flow needs
            client.sendall(message)
            assert recv_exactly(client, len(message)) == message
        assert proxy.pipe_count() == before
    assert proxy.wait_access(1)[0]["bytes_up"] == str(2 * 1024 * 1024)
