"""System calls per proxied connection, counted by strace: the number may fall, never rise.

A connection (accept, connect, one small request and answer, both half-closes) is measured as
the difference between runs of 60 and 260 connections made one after the other, so start-up
and shut-down cancel out. epoll_wait is left out: how many waits a connection takes depends on
how the kernel's wake-ups fall, not on the proxy. Each budget is today's count; lower it when a
change saves a call.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support import WAIT, Upstream, accepts, echo_handler, free_port, recv_all, required_tool, wait_until

# The calls one plain connection costs: the client's accept (and the accept that finds the
# queue empty), the upstream's socket and connect (no SO_ERROR: epoll says when a connect
# failed, and only then is the socket asked why), TCP_NODELAY, the accepted
# socket made non-blocking (and CPython's getsockname when it wraps it), four interest changes,
# a read and a send each way, the two reads of the end of stream, one half-close, two closes.
BUDGET = {
    "accept4": 2,
    "socket": 1,
    "connect": 1,
    "setsockopt": 1,
    "ioctl": 1,
    "getsockname": 1,
    "epoll_ctl": 4,
    "recvfrom": 4,
    "sendto": 2,
    "shutdown": 1,
    "close": 2,
}


def counted_calls(strace: str, tmp_path: Path, upstream: str, connections: int) -> dict[str, int]:
    """strace -c of a `forward` serving `connections` connections one after the other."""
    port = free_port()
    summary = tmp_path / f"strace-{connections}.txt"
    command = [strace, "-f", "-c", "-o", str(summary), sys.executable, "-m", "proxy"]
    command += ["forward", f"127.0.0.1:{port}", upstream, "--log-level", "warning"]
    errors = tmp_path / f"stderr-{connections}.txt"
    with open(errors, "wb") as stderr:
        tracer = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        assert wait_until(lambda: accepts(port), timeout=WAIT * 3), "the traced proxy never listened"
        for index in range(connections):
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
                client.sendall(b"request %d" % index)
                client.shutdown(socket.SHUT_WR)
                assert recv_all(client) == b"request %d" % index
        time.sleep(0.2)  # the proxy's last closes
        children = Path(f"/proc/{tracer.pid}/task/{tracer.pid}/children").read_text().split()
        os.kill(int(children[0]), signal.SIGTERM)  # the proxy; strace then writes its summary
        tracer.wait(WAIT * 3)
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait(WAIT)
    text = summary.read_text()
    counts = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[3].isdigit() and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3])
    assert counts, f"no strace summary: {errors.read_text(errors='replace')[-2000:]}"
    return counts


def test_a_plain_connection_costs_no_more_system_calls_than_its_budget(tmp_path):
    strace = required_tool("strace")
    upstream = Upstream(echo_handler)
    try:
        few = counted_calls(strace, tmp_path, upstream.address, 60)
        many = counted_calls(strace, tmp_path, upstream.address, 260)
    finally:
        upstream.close()
    per_connection = {
        name: (many.get(name, 0) - few.get(name, 0)) / 200 for name in set(few) | set(many) if name != "epoll_wait"
    }
    over = {name: round(count, 2) for name, count in per_connection.items() if count > BUDGET.get(name, 0) + 0.1}
    assert not over, f"more system calls per connection than budgeted {BUDGET}: {over}"
    assert sum(per_connection.values()) <= sum(BUDGET.values()) + 0.2


def answer_and_end_in_one_segment(conn: socket.socket) -> None:
    """Answer the request with bytes and FIN in one segment, so the proxy sees them together."""
    conn.recv(100)
    conn.send(b"answer", socket.MSG_MORE)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(100)  # until the proxy closes


@contextlib.contextmanager
def traced_proxy(tmp_path: Path, calls: str, port: int, arguments: list[str]) -> Iterator[Path]:
    """A proxy (`python -m proxy ARGUMENTS`, listening on `port`) under `strace -e trace=CALLS`;
    yields the trace file, complete once the block has ended."""
    trace = tmp_path / "trace.txt"
    command = [required_tool("strace"), "-f", "-e", f"trace={calls}", "-o", str(trace), sys.executable, "-m", "proxy"]
    tracer = subprocess.Popen(
        command + arguments, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        assert wait_until(lambda: accepts(port), timeout=WAIT * 3), "the traced proxy never listened"
        yield trace
        time.sleep(0.2)
    finally:
        # The proxy first: killing strace alone detaches its tracee, which would go on serving.
        with contextlib.suppress(OSError):  # a tracer that has already ended has no tracee left
            for pid in Path(f"/proc/{tracer.pid}/task/{tracer.pid}/children").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
        try:
            tracer.wait(WAIT)
        finally:
            tracer.kill()
            tracer.wait(WAIT)


def test_the_last_bytes_of_a_stream_leave_with_its_end(tmp_path):
    """An upstream's last bytes and its FIN reach the client as they left the upstream: sent with
    MSG_MORE and followed at once by the shutdown (or the close, when the client had ended first),
    which puts the FIN in the same segment."""
    upstream = Upstream(answer_and_end_in_one_segment)
    port = free_port()
    arguments = ["forward", f"127.0.0.1:{port}", upstream.address, "--log-level", "warning"]
    try:
        with traced_proxy(tmp_path, "sendto,shutdown,close", port, arguments) as trace:
            for _ in range(5):
                with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
                    client.sendall(b"question")
                    assert recv_all(client) == b"answer"
    finally:
        upstream.close()
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines() if "(" in line]
    answers = [index for index, call in enumerate(calls) if call.startswith("sendto(") and '"answer"' in call]
    assert len(answers) >= 5, calls  # the connections above, and the probe that saw the proxy listen
    for index in answers:
        fd = calls[index].split("(", 1)[1].split(",", 1)[0]
        assert "MSG_MORE" in calls[index], calls[index]
        after = next(
            call for call in calls[index + 1 :] if call.startswith((f"shutdown({fd},", f"close({fd})", f"sendto({fd},"))
        )
        assert after.startswith((f"shutdown({fd}, SHUT_WR)", f"close({fd})")), (calls[index], after)


def test_a_proxy_header_leaves_with_the_clients_first_bytes(tmp_path):
    """A PROXY header to the upstream goes with MSG_MORE when the client's first bytes are already
    there, and those follow at once: the upstream gets both in one segment."""
    upstream = Upstream(echo_handler)
    port = free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"upstreams:\n  app: {{servers: ['{upstream.address}'], proxy_protocol: v1}}\n"
        f"listeners:\n  - {{listen: '127.0.0.1:{port}', upstream: app}}\n"
    )
    try:
        with traced_proxy(
            tmp_path, "sendto,shutdown,close", port, ["run", "-c", str(config), "--log-level", "warning"]
        ) as trace:
            for _ in range(5):
                with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
                    client.sendall(b"request")
                    client.shutdown(socket.SHUT_WR)
                    assert recv_all(client).endswith(b"request")
    finally:
        upstream.close()
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines() if "(" in line]
    # The header alone, to the upstream (the echo of header and request back to the client is one call).
    headers = [index for index, call in enumerate(calls) if '"PROXY TCP4 ' in call and "request" not in call]
    assert len(headers) >= 5, calls  # the connections above, and the probe that saw the proxy listen
    # A client's bytes that arrive only after the upstream connected (a busy machine) leave on their
    # own, after a header sent alone; so every corked header is checked, and some must be corked.
    together = 0
    for index in headers:
        if "MSG_MORE" not in calls[index]:
            continue
        fd = calls[index].split("(", 1)[1].split(",", 1)[0]
        after = next(
            call for call in calls[index + 1 :] if call.startswith((f"shutdown({fd},", f"close({fd})", f"sendto({fd},"))
        )
        # The client's bytes, or its end when it sent none (the probe that saw the proxy listen).
        assert after.startswith((f'sendto({fd}, "request"', f"shutdown({fd},", f"close({fd})")), (calls[index], after)
        together += 1
    assert together >= 1, calls
