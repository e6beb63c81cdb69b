"""`run --workers N`: processes sharing a port, restarted when they die, stopped and reloaded together;
no restarts when they cannot start, no workers left behind by their supervisor, signals safe from the start."""

from __future__ import annotations

import os
import re
import signal
import socket
import textwrap
import time
from pathlib import Path

import pytest

from tests.support import WAIT, connect, echo_handler, recv_exactly, run_cli, wait_until


def _config(tmp_path, upstream, port: int = 0) -> str:
    path = tmp_path / "pairproxy.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            listeners:
              - {{name: shared, listen: "127.0.0.1:{port}", upstream: "{upstream.address}"}}
            """)
    )
    return str(path)


def _round_trips(proxy, count: int) -> None:
    for i in range(count):
        with connect(proxy.address) as client:
            payload = b"%d" % i
            client.sendall(payload)
            assert recv_exactly(client, len(payload)) == payload


def _worker_pids(proxy) -> list[int]:
    return [int(pid) for pid in re.findall(r"worker_started worker=\d+ pid=(\d+)", proxy.log_text())]


def test_two_workers_share_one_port(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("run", "-c", _config(tmp_path, upstream), "--workers", "2", wait_listening=2)
    assert len(set(proxy.addresses)) == 1, "both workers listen on the one reserved port"
    _round_trips(proxy, 40)
    lines = proxy.wait_access(40)
    conns = [int(line["conn"]) for line in lines]
    assert len(set(conns)) == 40, "connection ids are unique across workers"
    assert {conn % 2 for conn in conns} == {0, 1}, "both workers served"
    assert proxy.stop() == 0


def test_a_dead_worker_is_restarted(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("run", "-c", _config(tmp_path, upstream), "--workers", "2", wait_listening=2)
    victim = _worker_pids(proxy)[0]
    os.kill(victim, signal.SIGKILL)
    proxy.wait_for("worker_exited")
    assert wait_until(lambda: len(_worker_pids(proxy)) == 3)
    assert wait_until(lambda: proxy.log_text().count(" listening ") == 3)
    _round_trips(proxy, 10)
    assert proxy.stop() == 0


def test_sighup_reaches_every_worker(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("run", "-c", _config(tmp_path, upstream), "--workers", "2", wait_listening=2)
    proxy.send_signal(signal.SIGHUP)
    assert wait_until(lambda: proxy.log_text().count(" reloaded ") == 2)
    assert "kept=1" in proxy.wait_for("reloaded")
    _round_trips(proxy, 5)
    assert proxy.stop(signal.SIGINT) == 0
    assert proxy.proc.wait(WAIT) == 0


def test_a_worker_restarted_after_a_reload_serves_the_new_table(tmp_path, start_proxy, start_upstream):
    old = start_upstream(tagged_echo(b"old:"))
    new = start_upstream(tagged_echo(b"new:"))
    path = _config(tmp_path, old)
    proxy = start_proxy("run", "-c", path, "--workers", "2", wait_listening=2)
    Path(path).write_text(Path(path).read_text().replace(old.address, new.address))
    proxy.send_signal(signal.SIGHUP)
    assert wait_until(lambda: proxy.log_text().count(" reloaded ") == 2)
    os.kill(_worker_pids(proxy)[0], signal.SIGKILL)
    assert wait_until(lambda: proxy.log_text().count(" listening ") == 3)
    replies = set()
    for _ in range(20):  # the kernel spreads these over both workers, the restarted one included
        with connect(proxy.address) as client:
            client.sendall(b"x")
            replies.add(recv_exactly(client, 5))
    assert replies == {b"new:x"}
    assert proxy.stop() == 0


def tagged_echo(tag: bytes):
    def handler(conn) -> None:
        conn.sendall(tag)
        echo_handler(conn)

    return handler


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry))
    return found


def _catches(pid: int, signum: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False


def _kill_all(pids) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_workers_exit_1_when_the_port_is_taken(tmp_path, start_upstream):
    upstream = start_upstream(echo_handler)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = run_cli(["run", "-c", _config(tmp_path, upstream, port), "--workers", "2"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"pairproxy: cannot listen on 127.0.0.1:{port}: address already in use"]
    assert time.monotonic() - started < WAIT / 2, "no restarts before giving up"


def test_workers_exit_when_the_supervisor_is_killed(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("run", "-c", _config(tmp_path, upstream), "--workers", "2", wait_listening=2)
    workers = _worker_pids(proxy)
    try:
        assert all(_alive(pid) for pid in workers)
        os.kill(proxy.pid, signal.SIGKILL)
        proxy.proc.wait(WAIT)
        assert wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=5), "orphaned workers"
        with pytest.raises(ConnectionRefusedError):
            connect(proxy.address).close()
    finally:
        _kill_all(workers)


def _signal_during_startup(tmp_path, start_proxy, upstream, signum: int, count: int, *, until_all: bool):
    """Start `run --workers COUNT` and send `signum` to the supervisor over and over from the moment
    it handles that signal (or, if it forks first, has a worker) until it has a worker (or them all)."""
    proxy = start_proxy("run", "-c", _config(tmp_path, upstream), "--workers", str(count), wait_listening=0)
    seen: set[int] = set()
    sent = 0
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and proxy.proc.poll() is None and len(seen) < count:
        try:
            seen |= _children(proxy.pid)
            if seen or _catches(proxy.pid, signum):
                proxy.send_signal(signum)
                sent += 1
                if seen and not until_all:
                    break
        except (FileNotFoundError, ProcessLookupError):
            break  # it exited
    assert sent, "the signal was sent at least once"
    return proxy, seen


def test_sigterm_during_startup_stops_cleanly(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy, seen = _signal_during_startup(tmp_path, start_proxy, upstream, signal.SIGTERM, 4, until_all=False)
    try:
        assert proxy.proc.wait(WAIT) == 0
        workers = seen | set(_worker_pids(proxy))
        assert wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=5), "orphaned workers"
    finally:
        _kill_all(seen | set(_worker_pids(proxy)))


def test_sighup_during_startup_never_kills_the_supervisor(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy, seen = _signal_during_startup(tmp_path, start_proxy, upstream, signal.SIGHUP, 4, until_all=True)
    try:
        proxy.wait_for(lambda _line: proxy.log_text().count(" listening ") >= 4)
        assert proxy.proc.poll() is None, "the supervisor survived"
        proxy.addresses = [re.search(r"address=(\S+)", proxy.wait_for(" listening ")).group(1)]
        _round_trips(proxy, 8)
        assert proxy.stop() == 0
    finally:
        _kill_all(seen | set(_worker_pids(proxy)))
