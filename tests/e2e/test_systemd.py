"""Under systemd: the notify protocol against a datagram socket the test binds, socket activation with
sockets the test passes as descriptors 3.., and the shipped unit files."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.schema import DEFAULT_SHUTDOWN_GRACE, ListenerConfig, listener_key
from proxy.config.units import parse_address, parse_duration
from proxy.serve.systemd import (
    Passed,
    match_passed,
    notify_address,
    passed_descriptors,
    same_address,
    watchdog_interval,
)
from tests.support import REPOSITORY, WAIT, connect, echo_handler, recv_exactly, run_cli, wait_until

# As systemd does: the sockets given as argv[1] ("5,6") become descriptors 3, 4, ... and LISTEN_PID
# is the pid of the process that then runs the rest of the command line.
ACTIVATE = textwrap.dedent("""\
    import fcntl, os, sys
    fds = [int(fd) for fd in sys.argv[1].split(",")]
    spare = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
    for index, fd in enumerate(spare):
        os.dup2(fd, 3 + index)
        os.close(fd)
    for fd in fds:
        if fd >= 3 + len(fds):
            os.close(fd)
    os.execve(sys.argv[2], sys.argv[2:], {**os.environ, "LISTEN_PID": str(os.getpid())})
    """)


# -- the pure parts ---------------------------------------------------------------------------


def test_notify_address_is_a_path_or_an_abstract_name():
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abstract/name") == "\0abstract/name"
    assert notify_address("vsock:2:1234") is None
    assert notify_address("") is None
    assert notify_address(None) is None


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_its_pid():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "41"}, 42) is None
    assert watchdog_interval({}, 42) is None
    with pytest.raises(ValueError, match="WATCHDOG_USEC=soon"):
        watchdog_interval({"WATCHDOG_USEC": "soon"}, 42)
    for digits in ("\u0663", "\u00b2"):  # ARABIC-INDIC THREE and SUPERSCRIPT TWO pass str.isdigit
        with pytest.raises(ValueError, match="WATCHDOG_USEC="):
            watchdog_interval({"WATCHDOG_USEC": digits}, 42)


def test_passed_descriptors_only_for_our_pid_with_their_names():
    environ = {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "edge:"}
    assert passed_descriptors(environ, 42) == [(3, "edge"), (4, None)]
    assert passed_descriptors({"LISTEN_PID": "42", "LISTEN_FDS": "1"}, 42) == [(3, None)]
    assert passed_descriptors(environ, 43) == []
    assert passed_descriptors({}, 42) == []
    with pytest.raises(ValueError, match="LISTEN_FDS=two"):
        passed_descriptors({"LISTEN_PID": "42", "LISTEN_FDS": "two"}, 42)
    for digits in ("\u0663", "\u00b2"):
        with pytest.raises(ValueError, match="LISTEN_FDS="):
            passed_descriptors({"LISTEN_PID": "42", "LISTEN_FDS": digits}, 42)
    with pytest.raises(ValueError, match="3 names for LISTEN_FDS=2"):
        passed_descriptors({**environ, "LISTEN_FDNAMES": "a:b:c"}, 42)


def test_same_address_compares_ip_and_port():
    assert same_address(parse_address("127.0.0.1:80"), ("127.0.0.1", 80))
    assert same_address(parse_address("[::1]:80"), ("::1", 80, 0, 0))
    assert same_address(parse_address("[::]:80"), ("::", 80, 0, 0))
    assert not same_address(parse_address("127.0.0.1:81"), ("127.0.0.1", 80))
    assert not same_address(parse_address("127.0.0.2:80"), ("127.0.0.1", 80))
    assert not same_address(parse_address("localhost:80"), ("127.0.0.1", 80)), "a name matches by name only"
    assert not same_address(parse_address("127.0.0.1:0"), ("127.0.0.1", 80)), "port 0 matches by name only"


def _listener(name: str | None, listen: str) -> ListenerConfig:
    return ListenerConfig(name=name, listen=parse_address(listen), routes=())


def test_match_passed_by_name_first_then_by_address_each_descriptor_once():
    listeners = [_listener("edge", "127.0.0.1:0"), _listener(None, "127.0.0.1:8080"), _listener("b", "127.0.0.1:9")]
    passed = [
        Passed(3, "other", ("127.0.0.1", 8080)),
        Passed(4, "edge", ("0.0.0.0", 443)),
        Passed(5, None, ("127.0.0.1", 7)),
    ]
    assert match_passed(listeners, passed) == {"edge@127.0.0.1:0": 4, "127.0.0.1:8080": 3}
    # A descriptor named for one listener and bound at another's address goes to the one it names.
    named = [Passed(3, "b", ("127.0.0.1", 8080))]
    assert match_passed(listeners, named) == {"127.0.0.1:9": 3}
    assert match_passed(listeners, []) == {}


_NAMES = st.sampled_from(["edge", "api", "admin", None])
_HOSTS = st.sampled_from(["127.0.0.1", "0.0.0.0", "::1", "localhost"])
_PORTS = st.sampled_from([0, 80, 443])


@st.composite
def _tables(draw):
    """Listeners with distinct names and keys, as a valid file has them, and passed sockets of any kind."""
    listeners, keys, names = [], set(), set()
    for name, host, port in draw(st.lists(st.tuples(_NAMES, _HOSTS, _PORTS), max_size=5)):
        listener = _listener(name, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        if listener_key(listener) in keys or (name is not None and name in names):
            continue
        keys.add(listener_key(listener))
        names.add(name)
        listeners.append(listener)
    ips = st.sampled_from(["127.0.0.1", "0.0.0.0", "::1"])
    sockets = draw(st.lists(st.tuples(_NAMES, ips, st.sampled_from([80, 443])), max_size=4))
    return listeners, [Passed(3 + i, name, (ip, port)) for i, (name, ip, port) in enumerate(sockets)]


@settings(max_examples=200, deadline=None)
@given(_tables())
def test_match_passed_gives_each_socket_once_for_a_reason_and_leaves_nothing_matchable(table):
    listeners, passed = table
    assigned = match_passed(listeners, passed)
    assert len(set(assigned.values())) == len(assigned), "one listener per socket"
    by_fd = {candidate.fd: candidate for candidate in passed}
    by_key = {listener_key(listener): listener for listener in listeners}
    for key, fd in assigned.items():
        listener, candidate = by_key[key], by_fd[fd]
        named = listener.name is not None and candidate.name == listener.name
        assert named or same_address(listener.listen, candidate.sockaddr)
    free = [candidate for candidate in passed if candidate.fd not in assigned.values()]
    for listener in listeners:
        if listener_key(listener) in assigned:
            continue
        for candidate in free:
            assert candidate.name is None or candidate.name != listener.name
            assert not same_address(listener.listen, candidate.sockaddr)
    # A name wins over an address: a listener whose name a socket has gets a socket of that name.
    for listener in listeners:
        if listener.name is not None and any(candidate.name == listener.name for candidate in passed):
            assert by_fd[assigned[listener_key(listener)]].name == listener.name


# -- notify, end to end -------------------------------------------------------------------------


class Manager:
    """The service manager's end of NOTIFY_SOCKET: a datagram socket that learns each sender's pid."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.address = address
        self.received: list[tuple[float, int, dict[str, str]]] = []  # (when, sender pid, fields)

    def next(self, timeout: float = WAIT) -> dict[str, str]:
        """The next notification's fields; TimeoutError if none comes in time."""
        self.sock.settimeout(timeout)
        data, ancillary, _flags, _address = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = next(struct.unpack("iII", payload)[0] for _, kind, payload in ancillary if kind == socket.SCM_CREDENTIALS)
        fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
        self.received.append((time.monotonic(), pid, fields))
        return fields

    def wait_for(self, key: str, timeout: float = WAIT) -> dict[str, str]:
        """The next notification with `key`, skipping others (watchdog pings)."""
        deadline = time.monotonic() + timeout
        while True:
            fields = self.next(max(deadline - time.monotonic(), 0.001))
            if key in fields:
                return fields

    def senders(self) -> set[int]:
        return {pid for _when, pid, _fields in self.received}

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager():
    started = Manager(f"@pairproxy-test-{uuid.uuid4().hex}")
    yield started
    started.close()


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "pairproxy.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def _echo_config(tmp_path: Path, upstream, listen: str = "127.0.0.1:0", name: str = "web") -> Path:
    return _config(
        tmp_path,
        f"""\
        listeners:
          - {{name: {name}, listen: "{listen}", upstream: "{upstream.address}"}}
        """,
    )


def _round_trip(address: tuple[str, int], payload: bytes = b"ping") -> None:
    with connect(address) as client:
        client.sendall(payload)
        assert recv_exactly(client, len(payload)) == payload


def test_ready_after_listening_reloading_then_ready_on_sighup_stopping_on_sigterm(
    tmp_path, start_proxy, start_upstream, manager
):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(
        "run", "-c", str(_echo_config(tmp_path, upstream)), env={"NOTIFY_SOCKET": manager.address}, wait_listening=0
    )
    ready = manager.wait_for("READY")
    assert ready == {"READY": "1", "STATUS": "serving 1 listener"}
    proxy.wait_for(" listening ")
    _round_trip(proxy.listener_address("web"))

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    proxy.send_signal(signal.SIGHUP)
    reloading = manager.wait_for("RELOADING")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading["RELOADING"] == "1"
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after, "CLOCK_MONOTONIC in microseconds, as systemd reads it"
    assert manager.wait_for("READY") == {"READY": "1", "STATUS": "serving 1 listener"}
    proxy.wait_for(" reloaded ")

    proxy.send_signal(signal.SIGTERM)
    assert manager.wait_for("STOPPING")["STOPPING"] == "1"
    assert proxy.stop() == 0
    assert manager.senders() == {proxy.pid}


def test_a_failed_reload_says_why_in_status_and_the_old_table_serves_on(tmp_path, start_proxy, start_upstream, manager):
    upstream = start_upstream(echo_handler)
    path = _echo_config(tmp_path, upstream)
    proxy = start_proxy("run", "-c", str(path), env={"NOTIFY_SOCKET": manager.address})
    manager.wait_for("READY")
    path.write_text("listeners:\n  - {name: web, listen: 127.0.0.1:0, upstream: nowhere}\n")
    proxy.send_signal(signal.SIGHUP)
    manager.wait_for("RELOADING")
    after = manager.wait_for("READY")
    assert after["STATUS"].startswith("serving 1 listener; reload failed: "), after
    assert "pairproxy.yaml:2:" in after["STATUS"], "the first problem, located"
    proxy.wait_for("reload_rejected")
    _round_trip(proxy.listener_address("web"))


def test_forward_answers_a_reload_it_cannot_do(start_proxy, start_upstream, manager):
    """Type=notify-reload waits for RELOADING=1 and READY=1 after its SIGHUP: forward must not leave it waiting."""
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, env={"NOTIFY_SOCKET": manager.address})
    manager.wait_for("READY")
    proxy.send_signal(signal.SIGHUP)
    assert manager.wait_for("RELOADING")["RELOADING"] == "1"
    status = manager.wait_for("READY")["STATUS"]
    assert status == "serving 1 listener; reload failed: no configuration file (forward mode)"
    proxy.wait_for("reload_ignored")


def test_watchdog_pings_from_the_loop_at_half_of_watchdog_usec(tmp_path, start_proxy, start_upstream, manager):
    upstream = start_upstream(echo_handler)
    env = {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "400000"}  # a ping every 0.2 s
    start_proxy("run", "-c", str(_echo_config(tmp_path, upstream)), env=env)
    manager.wait_for("READY")
    start = time.monotonic()
    pings = 0
    while time.monotonic() - start < 2.0:
        pings += "WATCHDOG" in manager.next()
    assert 5 <= pings <= 14, f"{pings} pings in 2 s at an interval of 0.2 s"


def test_no_watchdog_pings_when_they_are_asked_of_another_process(tmp_path, start_proxy, start_upstream, manager):
    upstream = start_upstream(echo_handler)
    env = {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    start_proxy("run", "-c", str(_echo_config(tmp_path, upstream)), env=env)
    manager.wait_for("READY")
    with pytest.raises(TimeoutError):
        manager.next(timeout=0.8)


def test_an_unreachable_notify_socket_is_one_warning_and_serving_goes_on(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    env = {"NOTIFY_SOCKET": str(tmp_path / "gone.sock"), "WATCHDOG_USEC": "100000"}
    proxy = start_proxy("run", "-c", str(_echo_config(tmp_path, upstream)), env=env)
    proxy.send_signal(signal.SIGHUP)
    proxy.wait_for(" reloaded ")
    time.sleep(0.3)  # watchdog pings fail too
    _round_trip(proxy.listener_address("web"))
    assert proxy.log_text().count("notify_failed") == 1, proxy.log_text()
    assert "no such file or directory" in proxy.wait_for("notify_failed")
    assert proxy.stop() == 0


def test_with_workers_only_the_supervisor_notifies_ready_once_all_serve(tmp_path, start_proxy, start_upstream, manager):
    upstream = start_upstream(echo_handler)
    env = {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "400000"}
    proxy = start_proxy("run", "-c", str(_echo_config(tmp_path, upstream)), "--workers", "2", env=env, wait_listening=0)
    assert manager.wait_for("READY")["STATUS"] == "serving 1 listener"
    assert proxy.log_text().count(" listening ") == 2, "READY=1 only once both workers listen"
    proxy.send_signal(signal.SIGHUP)
    assert manager.wait_for("RELOADING")["RELOADING"] == "1"
    assert manager.wait_for("READY")["READY"] == "1"
    assert wait_until(lambda: proxy.log_text().count(" reloaded ") == 2)
    proxy.send_signal(signal.SIGTERM)
    assert manager.wait_for("STOPPING")["STOPPING"] == "1"
    assert proxy.stop() == 0
    assert manager.senders() == {proxy.pid}, "no worker speaks to the manager"
    assert sum("READY" in fields for _when, _pid, fields in manager.received) == 2  # the start, the reload


# -- socket activation, end to end --------------------------------------------------------------


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def _activated(start_proxy, config: Path, sockets: list[socket.socket], *extra: str, names=None, **kwargs):
    """`run -c config` with `sockets` passed as descriptors 3.. the way systemd passes them; the test's
    own copies are closed once the proxy has started, so only the proxy holds them."""
    fds = [sock.fileno() for sock in sockets]
    env = {"LISTEN_FDS": str(len(sockets)), **({"LISTEN_FDNAMES": ":".join(names)} if names else {})}
    try:
        return start_proxy(
            "run",
            "-c",
            str(config),
            *extra,
            env=env,
            wrapper=[sys.executable, "-c", ACTIVATE, ",".join(map(str, fds))],
            pass_fds=fds,
            **kwargs,
        )
    finally:
        for sock in sockets:
            sock.close()


def test_a_passed_socket_serves_its_listener_by_name_and_a_reload_keeps_it(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    passed = _listening_socket()
    address = passed.getsockname()
    # Port 0 in the file: only the name can match, and a bind would pick another port.
    proxy = _activated(start_proxy, _echo_config(tmp_path, upstream), [passed], names=["web"])
    assert proxy.listener_address("web") == address
    assert f"fd=3 name=web address=127.0.0.1:{address[1]}" in proxy.wait_for("socket_passed")
    _round_trip(address)
    proxy.send_signal(signal.SIGHUP)
    assert "kept=1" in proxy.wait_for(" reloaded ")
    _round_trip(address, b"after the reload")
    assert proxy.stop() == 0
    assert "socket_unused" not in proxy.log_text()


def test_a_passed_socket_is_matched_by_address_and_never_bound_again(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    passed = _listening_socket()
    host, port = passed.getsockname()
    config = _echo_config(tmp_path, upstream, listen=f"{host}:{port}")
    proxy = _activated(start_proxy, config, [passed], names=["unknown"])
    _round_trip((host, port))
    # Removed by a reload, then added back: the socket systemd passed is used again, not bound anew
    # (a bind would fail: the proxy itself still holds the passed socket).
    config.write_text(f'listeners:\n  - {{name: other, listen: "127.0.0.1:0", upstream: "{upstream.address}"}}\n')
    proxy.send_signal(signal.SIGHUP)
    proxy.wait_for("listener_stopped")
    _echo_config(tmp_path, upstream, listen=f"{host}:{port}")
    proxy.send_signal(signal.SIGHUP)
    assert wait_until(lambda: proxy.log_text().count(" reloaded ") == 2), proxy.log_text()
    assert "reload_failed" not in proxy.log_text()
    _round_trip((host, port), b"back again")


def test_a_passed_socket_no_listener_takes_is_a_warning_until_a_reload_adds_one(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    web, spare = _listening_socket(), _listening_socket()
    spare_address = spare.getsockname()
    proxy = _activated(start_proxy, _echo_config(tmp_path, upstream), [web, spare], names=["web", "spare"])
    unused = proxy.wait_for("socket_unused")
    assert "fd=4 name=spare" in unused and "WARNING" in unused
    _config(
        tmp_path,
        f"""\
        listeners:
          - {{name: web, listen: "127.0.0.1:0", upstream: "{upstream.address}"}}
          - {{name: spare, listen: "127.0.0.1:0", upstream: "{upstream.address}"}}
        """,
    )
    proxy.send_signal(signal.SIGHUP)
    assert "started=1" in proxy.wait_for(" reloaded ")
    assert proxy.listener_address("spare") == spare_address
    _round_trip(spare_address)


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one process", "workers"])
def test_a_passed_socket_that_does_not_listen_stops_the_start_with_one_line(
    tmp_path, start_proxy, start_upstream, workers
):
    upstream = start_upstream(echo_handler)
    bound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    bound.bind(("127.0.0.1", 0))
    config = _echo_config(tmp_path, upstream)
    proxy = _activated(start_proxy, config, [bound], *workers, names=["web"], wait_listening=0)
    assert proxy.proc.wait(WAIT) == 1
    proxy.stop()
    assert proxy.lines == [
        "pairproxy: socket activation: descriptor 3 (web): not a listening TCP socket"
        " (ListenStream= with an IP address and port)"
    ]


def test_names_that_do_not_fit_the_descriptors_stop_the_start_with_one_line(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    passed = _listening_socket()
    proxy = _activated(start_proxy, _echo_config(tmp_path, upstream), [passed], names=["web", "api"], wait_listening=0)
    assert proxy.proc.wait(WAIT) == 1
    proxy.stop()
    assert proxy.lines == ["pairproxy: LISTEN_FDNAMES has 2 names for LISTEN_FDS=1 descriptors"]


def test_sockets_passed_to_another_process_are_left_alone(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"}
    proxy = start_proxy("run", "-c", str(_echo_config(tmp_path, upstream)), env=env)
    assert "socket_passed" not in proxy.log_text()
    _round_trip(proxy.listener_address("web"))


def test_with_workers_the_supervisor_shares_the_passed_socket(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    passed = _listening_socket()
    address = passed.getsockname()
    proxy = _activated(
        start_proxy, _echo_config(tmp_path, upstream), [passed], "--workers", "2", names=["web"], wait_listening=2
    )
    assert set(proxy.addresses) == {f"127.0.0.1:{address[1]}"}
    for i in range(10):
        _round_trip(address, b"%d" % i)
    proxy.send_signal(signal.SIGHUP)
    assert wait_until(lambda: proxy.log_text().count(" reloaded ") == 2)
    for i in range(10):
        _round_trip(address, b"after %d" % i)
    # A worker that dies is restarted on a copy of the same socket, not on a socket of its own.
    victim = int(re.search(r"worker_started worker=0 pid=(\d+)", proxy.log_text()).group(1))
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: proxy.log_text().count(" listening ") == 3), proxy.log_text()
    assert set(re.findall(r" listening .*address=(\S+)", proxy.log_text())) == {f"127.0.0.1:{address[1]}"}
    for i in range(10):
        _round_trip(address, b"restarted %d" % i)
    assert proxy.stop() == 0


# -- the unit files -------------------------------------------------------------------------------


def _unit(name: str) -> dict[str, str]:
    """The settings of a unit file (the last one of each key)."""
    settings = {}
    for line in (REPOSITORY / "config" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_the_unit_checks_the_file_first_and_outlasts_the_shutdown_grace():
    service = _unit("pairproxy.service")
    assert service["Type"] == "notify-reload"
    assert service["ExecStartPre"].split()[1:] == ["check", "-c", "/etc/pairproxy/pairproxy.yaml"]
    assert service["ExecStart"].split()[1:] == ["run", "-c", "/etc/pairproxy/pairproxy.yaml"]
    assert parse_duration(service["TimeoutStopSec"]) > DEFAULT_SHUTDOWN_GRACE
    assert _unit("pairproxy.socket")["Service"] == "pairproxy.service"


def test_the_example_config_of_the_socket_unit_is_valid(tmp_path):
    """The listener the socket unit's comment shows checks, and its name is the FileDescriptorName."""
    text = (REPOSITORY / "config" / "pairproxy.socket").read_text()
    listener = re.search(r"#     - (\{.*\})", text).group(1)
    path = _config(tmp_path, f"upstreams:\n  app: {{servers: [127.0.0.1:9000]}}\nlisteners:\n  - {listener}\n")
    assert run_cli(["check", "-c", str(path)]).returncode == 0
    assert f"name: {_unit('pairproxy.socket')['FileDescriptorName']}," in listener


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_units(tmp_path):
    pairproxy = Path(sys.executable).parent / "pairproxy"
    if not pairproxy.exists():
        pytest.skip("no pairproxy console script next to the interpreter")
    for name in ("pairproxy.service", "pairproxy.socket"):
        text = (REPOSITORY / "config" / name).read_text().replace("/usr/local/bin/pairproxy", str(pairproxy))
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "pairproxy.service", "pairproxy.socket"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # systemd before 253 does not know Type=notify-reload yet (the unit's comment says what to use there).
    problems = [line for line in result.stderr.splitlines() if "notify-reload" not in line and line.strip()]
    assert result.returncode == 0 and not problems, result.stderr
