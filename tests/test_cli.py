"""The command line as a user meets it: exit statuses, one-line errors, logs, signals."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket

import pytest

from tests.support import WAIT, connect, echo_handler, recv_exactly, run_cli


def _one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("99999", "out of range"),
        ("127.0.0.1:http", "not a number"),
        ("::1:80", "[IPv6]:PORT"),
        ("999.1.1.1:80", "not a valid IPv4"),
    ],
)
def test_bad_listen_address_is_a_usage_error(argument, message):
    result = run_cli(["forward", argument, "127.0.0.1:9"])
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_upstream_port_zero_is_refused():
    result = run_cli(["forward", "127.0.0.1:0", "127.0.0.1:0"])
    assert result.returncode == 2
    assert "port 0" in result.stderr


def test_bad_duration_and_size_are_usage_errors():
    result = run_cli(["forward", "0", "127.0.0.1:9", "--idle-timeout", "5 parsecs"])
    assert result.returncode == 2
    assert "bad duration" in result.stderr
    result = run_cli(["forward", "0", "127.0.0.1:9", "--buffer-size", "12 bananas"])
    assert result.returncode == 2
    assert "unknown unit" in result.stderr


def test_address_in_use_exits_1_with_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["forward", str(port), "127.0.0.1:9"])
    assert result.returncode == 1
    line = _one_line_error(result)
    assert line == f"pairproxy: cannot listen on 127.0.0.1:{port}: address already in use"


def _drop_bind_service_capability() -> None:
    """As root: remove CAP_NET_BIND_SERVICE from the bounding set, so the exec'd child lacks it."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_net_bind_service = 24, 10
    if libc.prctl(pr_capbset_drop, cap_net_bind_service, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_privileged_port_without_permission_exits_1():
    preexec = _drop_bind_service_capability if os.geteuid() == 0 else None
    result = run_cli(["forward", "127.0.0.1:1", "127.0.0.1:9"], preexec_fn=preexec)
    assert result.returncode == 1
    assert _one_line_error(result) == "pairproxy: cannot listen on 127.0.0.1:1: permission denied"


def test_sigterm_stops_cleanly_with_exit_0(start_proxy):
    proxy = start_proxy("echo", "127.0.0.1:0")
    assert proxy.stop(signal.SIGTERM) == 0


def test_sigterm_lets_an_open_connection_finish(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address)
    with connect(proxy.address) as client:
        client.sendall(b"before")
        assert recv_exactly(client, 6) == b"before"
        proxy.send_signal(signal.SIGTERM)
        proxy.wait_for("draining")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=WAIT).close()
        client.sendall(b"after")
        assert recv_exactly(client, 5) == b"after"
        assert proxy.proc.poll() is None
    assert proxy.proc.wait(WAIT) == 0
    assert proxy.access_lines()[0]["result"] == "closed"


def test_second_sigint_exits_at_once(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address)
    with connect(proxy.address) as client:
        client.sendall(b"x")
        assert recv_exactly(client, 1) == b"x"
        proxy.send_signal(signal.SIGINT)
        proxy.wait_for("draining")
        assert proxy.proc.poll() is None  # still draining: the connection is open
        proxy.send_signal(signal.SIGINT)
        assert proxy.proc.wait(WAIT) == 0
        assert client.recv(1) == b""
    assert proxy.access_lines()[0]["result"] == "shutdown"


def test_json_log_format(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--log-format", "json", wait_listening=0)
    listening = json.loads(proxy.wait_for('"listening"'))
    host, port = listening["address"].rsplit(":", 1)
    with connect((host, int(port))) as client:
        client.sendall(b"json")
        assert recv_exactly(client, 4) == b"json"
    record = json.loads(proxy.wait_for('"access"'))
    assert record["event"] == "access"
    assert record["level"] == "INFO"
    assert record["bytes_up"] == 4
    assert record["result"] == "closed"
    for key in ("time", "conn", "listener", "route", "client", "server", "bytes_down", "duration_ms"):
        assert key in record


def test_echo_command_echoes_and_answers_half_close(start_proxy):
    echo = start_proxy("echo", "127.0.0.1:0")
    with connect(echo.address) as client:
        client.sendall(b"ping")
        client.shutdown(socket.SHUT_WR)
        assert recv_exactly(client, 5) == b"ping"
        assert client.recv(1) == b""


def test_version_and_help():
    assert run_cli(["--version"]).stdout.startswith("pairproxy ")
    result = run_cli(["forward", "--help"])
    assert result.returncode == 0
    assert "--hexdump" in result.stdout
