"""`run --workers N`: processes sharing a port, restarted when they die, stopped and reloaded together."""

from __future__ import annotations

import os
import re
import signal
import textwrap
from pathlib import Path

from tests.support import WAIT, connect, echo_handler, recv_exactly, wait_until


def _config(tmp_path, upstream) -> str:
    path = tmp_path / "pairproxy.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            listeners:
              - {{name: shared, listen: "127.0.0.1:0", upstream: "{upstream.address}"}}
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
