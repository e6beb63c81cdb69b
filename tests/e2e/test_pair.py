"""The pair's own rules, end to end: what counts as activity for the idle timeout."""

from __future__ import annotations

import gc
import hashlib
import os
import socket
import time

import pytest

from proxy.config.loader import load_config
from proxy.relay.capture import Leg
from proxy.relay.side import Side
from tests.support import (
    WAIT,
    connect,
    echo_handler,
    listener_address,
    pattern,
    recv_exactly,
    serving,
    source_handler,
    splicing,
    wait_until,
    write,
)


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


def test_a_side_that_fails_to_close_leaves_neither_the_other_open_nor_the_access_line_unwritten(
    tmp_path, start_upstream, monkeypatch
):
    # A bug planted in the capture: closing the client's recording socket raises. The pair must
    # still close its upstream side, write its access line (result=error: a bug ended it, logged
    # once, no traceback), and leave nothing registered; the listener keeps serving.
    recorded_close = Leg.closed

    def failing_close(leg: Leg) -> None:
        if leg.label == "client":
            raise RuntimeError("the capture failed")
        recorded_close(leg)

    monkeypatch.setattr(Leg, "closed", failing_close)
    upstream = start_upstream(echo_handler)
    capture = tmp_path / "capture.pcapng"
    config = load_config(
        write(tmp_path, f"listeners:\n  - {{listen: 127.0.0.1:0, upstream: {upstream.address}, pcap: {capture}}}\n")
    ).config
    with serving(config) as (server, lines):
        with socket.create_connection(listener_address(server), timeout=WAIT) as client:
            client.sendall(b"ping")
            assert recv_exactly(client, 4) == b"ping"
            client.shutdown(socket.SHUT_WR)
            assert client.recv(1) == b""
            assert wait_until(lambda: len(lines.events("access")) == 1), lines.text()
        # Nothing of the connection stays registered (the capture's output may come and go as it drains).
        assert wait_until(lambda: not any(isinstance(found, Side) for found in server.reactor.map.values()))
        assert not server.runtime.pairs
    (access,) = lines.events("access")
    assert (access["result"], access["reason"]) == ("error", "RuntimeError: the capture failed")
    assert [error["error"] for error in lines.events("connection_error")] == ["RuntimeError: the capture failed"]
    assert "Traceback" not in lines.text()


@pytest.mark.parametrize(
    "looking",
    ["", "faults: [{type: latency, latency: 1ms}], ", f"pcap: {os.devnull}, "],
    ids=["plain", "faulted", "captured"],
)
def test_a_finished_connection_leaves_nothing_for_the_cycle_collector(looking, start_upstream, tmp_path):
    # A pair breaks its references back to itself once it has finished, so reference counting
    # frees a connection at once: objects left in cycles would cost every connection the cycle
    # collector's time (a third more CPU per new connection, measured, when the dialer kept its pair).
    upstream = start_upstream(echo_handler)
    listener = f"{{{looking}listen: 127.0.0.1:0, upstream: {upstream.address}}}"
    config = load_config(write(tmp_path, f"listeners:\n  - {listener}\n")).config
    with serving(config) as (server, lines):
        gc.collect()
        gc.disable()
        try:
            for _ in range(20):
                with socket.create_connection(listener_address(server), timeout=WAIT) as client:
                    client.sendall(b"ping")
                    assert recv_exactly(client, 4) == b"ping"
            assert wait_until(lambda: len(lines.events("access")) == 20 and not server.runtime.pairs), lines.text()
            time.sleep(0.2)  # the loop's next pass, where finished pairs are released
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            left = [type(found).__name__ for found in gc.garbage if type(found).__module__.startswith("proxy.")]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert left == []
