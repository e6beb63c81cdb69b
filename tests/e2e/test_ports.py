"""A served address is never shared: a second pairproxy on it exits 1, whatever each of them runs."""

from __future__ import annotations

import os
import re
import signal
import textwrap

import pytest

from tests.support import WAIT, connect, echo_handler, recv_exactly, wait_until

MODES = ["forward", "run", "workers"]


def _args(mode: str, tmp_path, upstream, port: int, name: str) -> list[str]:
    if mode == "forward":
        return ["forward", f"127.0.0.1:{port}", upstream.address]
    path = tmp_path / f"{name}.yaml"
    path.write_text(f'listeners:\n  - {{name: {name}, listen: "127.0.0.1:{port}", upstream: "{upstream.address}"}}\n')
    return ["run", "-c", str(path), *(["--workers", "2"] if mode == "workers" else [])]


def _round_trips(address, count: int) -> None:
    for i in range(count):
        with connect(address) as client:
            client.sendall(b"%d" % i)
            assert recv_exactly(client, len(b"%d" % i)) == b"%d" % i


@pytest.mark.parametrize("second", MODES)
@pytest.mark.parametrize("first", MODES)
def test_a_second_instance_on_a_served_port_exits_1(tmp_path, start_proxy, start_upstream, first, second):
    upstream = start_upstream(echo_handler)
    serving = start_proxy(*_args(first, tmp_path, upstream, 0, "first"), wait_listening=2 if first == "workers" else 1)
    # Not run_cli: workers that joined the port would keep its stderr open past the timeout.
    refused = start_proxy(*_args(second, tmp_path, upstream, serving.port, "second"), wait_listening=0)
    assert refused.proc.wait(WAIT) == 1
    assert refused.stop() == 1
    assert refused.lines == [f"pairproxy: cannot listen on 127.0.0.1:{serving.port}: address already in use"]
    _round_trips(serving.address, 20)
    assert len(serving.wait_access(20)) == 20, "the first instance served every connection"
    assert serving.stop() == 0


def test_a_reload_under_workers_never_joins_a_served_port(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    serving = start_proxy(*_args("workers", tmp_path, upstream, 0, "first"), wait_listening=2)
    path = tmp_path / "second.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            listeners:
              - {{name: own, listen: "127.0.0.1:0", upstream: "{upstream.address}"}}
            """)
    )
    second = start_proxy("run", "-c", str(path), "--workers", "2", wait_listening=2)
    path.write_text(
        path.read_text() + f'  - {{name: taken, listen: "127.0.0.1:{serving.port}", upstream: "{upstream.address}"}}\n'
    )
    second.send_signal(signal.SIGHUP)
    # A reload is all or nothing: each worker rejects the table it cannot serve whole.
    assert wait_until(lambda: second.log_text().count(" reload_rejected ") == 2), second.log_text()
    failures = [line for line in second.lines if " reload_failed " in line]
    assert len(failures) == 2, second.log_text()
    assert all("address already in use" in line for line in failures)
    assert " reloaded " not in second.log_text()
    _round_trips(serving.address, 20)
    assert len(serving.wait_access(20)) == 20, "the first instance served every connection"
    assert not second.access_lines()
    _round_trips(second.address, 2)  # its own listener still serves
    assert second.stop() == 0
    assert serving.stop() == 0


def test_a_worker_restarted_after_a_rejected_reload_serves_the_old_table(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    serving = start_proxy(*_args("run", tmp_path, upstream, 0, "first"))
    path = tmp_path / "second.yaml"
    path.write_text(f'listeners:\n  - {{name: own, listen: "127.0.0.1:0", upstream: "{upstream.address}"}}\n')
    second = start_proxy("run", "-c", str(path), "--workers", "2", wait_listening=2)
    path.write_text(
        path.read_text() + f'  - {{name: taken, listen: "127.0.0.1:{serving.port}", upstream: "{upstream.address}"}}\n'
    )
    second.send_signal(signal.SIGHUP)
    assert wait_until(lambda: second.log_text().count(" reload_rejected ") == 2), second.log_text()
    victim = int(re.search(r"worker_started worker=0 pid=(\d+)", second.log_text()).group(1))
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: second.log_text().count(" worker_started ") == 3), second.log_text()
    # The restarted worker starts from the table the workers kept, not from the one they refused.
    assert wait_until(lambda: second.log_text().count(" listening ") == 3), second.log_text()
    assert "listener=taken" not in second.log_text()
    _round_trips(serving.address, 20)
    assert len(serving.wait_access(20)) == 20, "the first instance served every connection"
    assert not second.access_lines()
    assert second.stop() == 0
    assert serving.stop() == 0
