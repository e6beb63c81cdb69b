"""The command line as a user meets it: exit statuses, one-line errors, logs, signals."""

from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import WAIT, connect, echo_handler, recv_exactly, run_cli, wait_until


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
    line = _one_line_error(result)
    assert line.startswith("pairproxy forward: argument LISTEN: bad address ")
    assert message in line
    assert result.stdout == ""


def test_upstream_port_zero_is_refused():
    result = run_cli(["forward", "127.0.0.1:0", "127.0.0.1:0"])
    assert result.returncode == 2
    line = _one_line_error(result)
    assert line.startswith("pairproxy forward: argument UPSTREAM: ")
    assert "port 0" in line


def test_bad_duration_and_size_are_usage_errors():
    result = run_cli(["forward", "0", "127.0.0.1:9", "--idle-timeout", "5 parsecs"])
    assert result.returncode == 2
    line = _one_line_error(result)
    assert line.startswith("pairproxy forward: argument --idle-timeout: ")
    assert "bad duration" in line
    result = run_cli(["forward", "0", "127.0.0.1:9", "--buffer-size", "12 bananas"])
    assert result.returncode == 2
    line = _one_line_error(result)
    assert line.startswith("pairproxy forward: argument --buffer-size: ")
    assert "unknown unit" in line


def test_usage_error_is_exactly_one_line():
    result = run_cli(["forward", "99999", "x"])
    assert result.returncode == 2
    assert (
        result.stderr == "pairproxy forward: argument LISTEN: bad address '99999': port 99999 is out of range 0-65535\n"
    )
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (
            ["forward", "--log-level", "trace", "1", "2"],
            "pairproxy forward: argument --log-level: invalid choice: 'trace'",
        ),
        (["forward", "127.0.0.1:0"], "pairproxy forward: the following arguments are required: UPSTREAM"),
        (["forward", "0", "127.0.0.1:9", "--bogus"], "pairproxy forward: unrecognized arguments: --bogus"),
        (["forward", "0", "127.0.0.1:9", "extra"], "pairproxy forward: unrecognized arguments: extra"),
        (["bogus"], "pairproxy: argument COMMAND: invalid choice: 'bogus'"),
        ([], "pairproxy: the following arguments are required: COMMAND"),
        (["--bogus"], "pairproxy: "),
        (["run", "--workers", "0"], "pairproxy run: argument --workers: expected a whole number"),
        (["run", "--workers", "\u0663"], "pairproxy run: argument --workers: expected a whole number of at least 1"),
        (["check", "--log-format", "xml"], "pairproxy check: argument --log-format: invalid choice: 'xml'"),
        (["echo"], "pairproxy echo: the following arguments are required: LISTEN"),
        (["echo", "127.0.0.1:0", "--hexdump"], "pairproxy echo: unrecognized arguments: --hexdump"),
    ],
)
def test_every_usage_error_is_one_line_with_exit_2(args, start):
    result = run_cli(args)
    assert result.returncode == 2
    assert _one_line_error(result).startswith(start), result.stderr
    assert "usage:" not in result.stderr
    assert result.stdout == ""


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
    assert result.stdout.startswith("usage: pairproxy forward ")
    assert "--hexdump" in result.stdout
    assert "--upstream-insecure" in result.stdout
    assert result.stderr == ""
    result = run_cli(["--help"])
    assert result.returncode == 0
    assert result.stdout.startswith("usage: pairproxy ")
    for command in ("run", "check", "forward", "echo"):
        assert command in result.stdout
    assert result.stderr == ""


def test_echo_survives_sighup(start_proxy):
    echo = start_proxy("echo", "127.0.0.1:0")
    echo.send_signal(signal.SIGHUP)
    echo.wait_for("reload_ignored")
    assert echo.proc.poll() is None
    with connect(echo.address) as client:
        client.sendall(b"still here")
        assert recv_exactly(client, 10) == b"still here"
    assert echo.stop(signal.SIGTERM) == 0


def test_soft_fd_limit_is_raised_to_the_hard_limit(start_proxy):
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 64:
        pytest.skip(f"hard RLIMIT_NOFILE is {hard}: nothing to raise to")
    lowered = min(256, hard - 1)

    def lower_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))

    proxy = start_proxy("forward", "127.0.0.1:0", "127.0.0.1:9", preexec_fn=lower_soft_limit)

    def open_files_limits() -> tuple[int, int]:
        limits = Path(f"/proc/{proxy.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        soft, hard = re.split(r"\s{2,}", line)[1:3]
        return int(soft), int(hard)

    # "listening" is logged by bind(); the limit is raised as serving starts, a moment later.
    wait_until(lambda: open_files_limits()[0] != lowered)
    assert open_files_limits() == (hard, hard)
    assert proxy.stop(signal.SIGTERM) == 0


def _console_script() -> str:
    """The installed `pairproxy` entry point in the same environment as this interpreter."""
    script = shutil.which("pairproxy", path=os.path.dirname(sys.executable))
    assert script is not None, f"no pairproxy script beside {sys.executable}: pip install -e ."
    return script


def test_console_script_version():
    result = subprocess.run(
        [_console_script(), "--version"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=WAIT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pairproxy ")


def test_console_script_echo_serves_and_stops_on_sigterm(tmp_path):
    stderr_path = tmp_path / "echo-stderr.txt"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [_console_script(), "echo", "127.0.0.1:0"], stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
        )
    try:
        assert wait_until(lambda: " listening " in stderr_path.read_text() or proc.poll() is not None)
        log = stderr_path.read_text()
        found = re.search(r" listening .*address=(\S+):(\d+)", log)
        assert found, log
        with connect((found.group(1), int(found.group(2)))) as client:
            client.sendall(b"hello script")
            assert recv_exactly(client, 12) == b"hello script"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0, stderr_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_right_after_listening_is_handled(tmp_path, signum):
    # The handlers must be in place before `listening` is logged: a supervisor that signals as
    # soon as it sees that line must not kill the process by the signal's default action.
    config = tmp_path / "pairproxy.yaml"
    config.write_text("listeners:\n  - {listen: '127.0.0.1:0', upstream: '127.0.0.1:9'}\n")
    for _ in range(10):
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            for line in proc.stderr:
                if " listening " in line:
                    proc.send_signal(signum)
                    break
            if signum == signal.SIGHUP:
                with pytest.raises(subprocess.TimeoutExpired):
                    proc.wait(0.3)  # SIGHUP must not have killed it
                proc.send_signal(signal.SIGTERM)
            assert proc.wait(WAIT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(WAIT)
            proc.stderr.close()
