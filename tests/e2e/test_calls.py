"""Python calls per proxied connection and per request, counted by cProfile: the number may fall,
never rise unnoticed.

cProfile counts every Python function and built-in called, whatever the machine's load, so the
count is a measure of the work done that a busy machine does not blur (a time would be). Each
figure is the difference between two runs of `forward` under `python -m cProfile`, one serving
FEW and one MANY units of work (connections one after the other, or requests on one connection),
divided by the difference: start-up and shut-down cancel out.
"""

from __future__ import annotations

import pstats
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.support import WAIT, Upstream, echo_handler, free_port, listens, recv_all, recv_exactly, wait_until

# Each budget is today's count with a little room (a loop pass more or less, as the kernel's
# wake-ups fall); lower it when a change saves calls, and raise it only with the change that
# needs the calls, saying why in its commit. Measure with this file's `calls_per_unit`.
BUDGET = {
    "connection": 235,  # accept, connect, a request and its answer, both ends, no access line: 222 (was 247)
    "access_line": 30,  # what the access line adds to a connection (info over warning): 16-23 (was 68)
    "request": 31,  # a request and its answer on a connection that stays open: 28 (was 36)
}
FEW, MANY = 50, 250


def profiled_calls(tmp_path: Path, upstream: str, work, units: int, level: str) -> int:
    """The calls a `forward` at log `level` makes while `work(port, units)` uses it, start to end."""
    profile = tmp_path / f"profile-{level}-{units}.out"
    for _ in range(5):  # a port found free may be taken by another test before the proxy binds it
        port = free_port()
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "proxy"]
        command += ["forward", f"127.0.0.1:{port}", upstream, "--log-level", level]
        proxy = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            started = lambda proxy=proxy, port=port: proxy.poll() is not None or listens(proxy.pid, port)  # noqa: E731
            assert wait_until(started, timeout=WAIT * 3), "the profiled proxy never listened"
            if proxy.poll() is not None:
                continue
            work(port, units)
            proxy.send_signal(signal.SIGINT)  # a drain: the proxy exits, and cProfile writes its file
            assert proxy.wait(WAIT * 3) == 0
        finally:
            if proxy.poll() is None:
                proxy.kill()
                proxy.wait(WAIT)
        return pstats.Stats(str(profile)).total_calls
    raise AssertionError("the profiled proxy could not listen on any of five free ports")


def connections(port: int, count: int) -> None:
    for index in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
            client.sendall(b"request %d" % index)
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"request %d" % index


def requests(port: int, count: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        for index in range(count):
            request = b"request %05d" % index
            client.sendall(request)
            assert recv_exactly(client, len(request)) == request


def calls_per_unit(tmp_path: Path, work, level: str = "warning") -> float:
    upstream = Upstream(echo_handler)
    try:
        few = profiled_calls(tmp_path, upstream.address, work, FEW, level)
        many = profiled_calls(tmp_path, upstream.address, work, MANY, level)
    finally:
        upstream.close()
    return (many - few) / (MANY - FEW)


def test_a_plain_connection_costs_no_more_python_calls_than_its_budget(tmp_path):
    per_connection = calls_per_unit(tmp_path, connections)
    assert per_connection <= BUDGET["connection"], f"{per_connection:.1f} calls per connection"


def test_the_access_line_costs_no_more_python_calls_than_its_budget(tmp_path):
    without = calls_per_unit(tmp_path, connections, "warning")
    with_line = calls_per_unit(tmp_path, connections, "info")
    added = with_line - without
    assert added <= BUDGET["access_line"], f"the access line adds {added:.1f} calls ({with_line:.1f} - {without:.1f})"


def test_a_request_on_an_open_connection_costs_no_more_python_calls_than_its_budget(tmp_path):
    per_request = calls_per_unit(tmp_path, requests)
    assert per_request <= BUDGET["request"], f"{per_request:.1f} calls per request"
