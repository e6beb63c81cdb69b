"""End to end: socket and process options (keepalive, user_timeout, source, backlog, the pid file),
each read back from the proxy's own sockets, from `ss`, from what the upstream sees, or from
the file system."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from proxy.config.sockets import somaxconn
from tests.support import (
    WAIT,
    connect,
    echo_handler,
    logfmt,
    ok,
    peer_reporter,
    recv_exactly,
    required_tool,
    run_cli,
    wait_until,
    write,
)

_LIBC = ctypes.CDLL(None, use_errno=True)
_SYS_PIDFD_GETFD = 438  # the same number on every architecture


def proxy_tcp_sockets(pid: int) -> list[socket.socket]:
    """Copies of the TCP sockets process `pid` holds (pidfd_getfd): their options are the proxy's."""
    found = []
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except FileNotFoundError:
                continue
            fd = _LIBC.syscall(_SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                continue
            sock = socket.socket(fileno=fd)
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                found.append(sock)
            else:
                sock.close()
    finally:
        os.close(pidfd)
    return found


def _peer(sock: socket.socket) -> tuple | None:
    try:
        return sock.getpeername()
    except OSError:
        return None  # a listening socket


def proxy_socket(pid: int, *, local_port: int | None = None, peer_port: int | None = None) -> socket.socket:
    """The proxy's connected socket whose own port is `local_port` or whose peer's is `peer_port`."""
    found = None
    for sock in proxy_tcp_sockets(pid):
        peer = _peer(sock)
        wanted = peer is not None and local_port in (None, sock.getsockname()[1]) and peer_port in (None, peer[1])
        if found is None and wanted:
            found = sock
            continue
        sock.close()
    assert found is not None, f"no such socket in process {pid}"
    return found


def tcp_options(sock: socket.socket) -> dict[str, int]:
    with sock:
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }


def both_sides(proxy, upstream, client: socket.socket) -> tuple[dict[str, int], dict[str, int]]:
    """(the client's side, the server's side) of the proxy's connection, once both exist."""
    client.sendall(b"x")
    assert recv_exactly(client, 1) == b"x"  # relayed: the upstream side is connected
    client_side = proxy_socket(proxy.proc.pid, local_port=client.getpeername()[1], peer_port=client.getsockname()[1])
    upstream_side = proxy_socket(proxy.proc.pid, peer_port=upstream.port)
    return tcp_options(client_side), tcp_options(upstream_side)


def listen_backlog(port: int) -> int:
    """The backlog `ss -ltn` shows for the listening socket on `port` (its Send-Q)."""
    ss = required_tool("ss")
    out = subprocess.run([ss, "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=WAIT).stdout
    return int(out.split()[2])


def test_keepalive_and_user_timeout_from_yaml_are_on_each_side_s_sockets(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    config = write(
        tmp_path,
        f"""
        listeners:
          - listen: 127.0.0.1:0
            keepalive: {{idle: 7s, interval: 3s, count: 4}}
            user_timeout: 2500ms
            upstream: app
        upstreams:
          app:
            servers: ["{upstream.address}"]
            keepalive: {{idle: 11s, interval: 5s, count: 2}}
            user_timeout: 1500ms
        """,
    )
    proxy = start_proxy("run", "-c", str(config))
    with connect(proxy.address) as client:
        client_side, upstream_side = both_sides(proxy, upstream, client)
    assert client_side == {"keepalive": 1, "idle": 7, "interval": 3, "count": 4, "user_timeout_ms": 2500}
    assert upstream_side == {"keepalive": 1, "idle": 11, "interval": 5, "count": 2, "user_timeout_ms": 1500}


def test_without_options_neither_side_has_keepalive_nor_a_user_timeout(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address)
    with connect(proxy.address) as client:
        sides = both_sides(proxy, upstream, client)
    for side in sides:
        assert (side["keepalive"], side["user_timeout_ms"]) == (0, 0)
    assert listen_backlog(proxy.port) == min(1024, somaxconn())


def test_forward_flags_set_keepalive_on_both_sides_the_source_and_the_backlog(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address, "--keepalive", "7:3:4", "--source", "127.0.0.2", "--backlog", "77"
    )
    assert listen_backlog(proxy.port) == 77
    with connect(proxy.address) as client:
        client_side, upstream_side = both_sides(proxy, upstream, client)
        with proxy_socket(proxy.proc.pid, peer_port=upstream.port) as toward_server:
            assert toward_server.getsockname()[0] == "127.0.0.2"
    expected = {"keepalive": 1, "idle": 7, "interval": 3, "count": 4, "user_timeout_ms": 0}
    assert client_side == expected
    assert upstream_side == expected


def test_forward_keepalive_on_keeps_the_kernel_s_times(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--keepalive", "on")
    kernel = int(Path("/proc/sys/net/ipv4/tcp_keepalive_time").read_text())
    with connect(proxy.address) as client:
        for side in both_sides(proxy, upstream, client):
            assert (side["keepalive"], side["idle"]) == (1, kernel)


def test_the_upstream_sees_the_source_address_of_its_upstream_or_of_its_server(tmp_path, start_proxy, start_upstream):
    first, second = start_upstream(peer_reporter), start_upstream(peer_reporter)
    config = write(
        tmp_path,
        f"""
        listeners:
          - {{listen: "127.0.0.1:0", name: first, upstream: app}}
          - {{listen: "127.0.0.1:0", name: second, upstream: other}}
        upstreams:
          app:
            servers: ["{first.address}"]
            source: 127.0.0.2
          other:
            servers: [{{address: "{second.address}", source: "127.0.0.3:40000-40999"}}]
            source: 127.0.0.2
        """,
    )
    proxy = start_proxy("run", "-c", str(config), wait_listening=2)
    seen = {}
    for name in ("first", "second"):
        with connect(proxy.listener_address(name)) as client:
            host, port = client.recv(64).decode().split()
            seen[name] = host, int(port)
    assert seen["first"][0] == "127.0.0.2"
    assert seen["second"][0] == "127.0.0.3"
    assert 40000 <= seen["second"][1] <= 40999
    access = proxy.wait_access(2)
    assert {line["result"] for line in access} == {"closed"}


def test_a_source_that_cannot_be_bound_is_a_failed_connect_with_its_reason(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    config = write(
        tmp_path,
        f"""
        listeners:
          - {{listen: "127.0.0.1:0", upstream: app}}
        upstreams:
          app: {{servers: ["{upstream.address}"], source: 192.0.2.1, retries: 0}}
        """,
    )
    proxy = start_proxy("run", "-c", str(config))
    with connect(proxy.address) as client:
        assert client.recv(1) == b""
    (access,) = proxy.wait_access(1)
    assert access["result"] == "upstream_unreachable"
    assert access["reason"] == "cannot bind to source 192.0.2.1: cannot assign requested address"
    assert upstream.accepted == 0


def test_backlog_from_yaml_is_the_listen_backlog_and_show_info_says_it(tmp_path, start_proxy):
    cap = somaxconn()
    admin = tmp_path / "admin.sock"
    config = write(
        tmp_path,
        f"""
        admin: {{socket: {admin}}}
        listeners:
          - {{listen: "127.0.0.1:0", name: small, backlog: 77, upstream: "127.0.0.1:9"}}
          - {{listen: "127.0.0.1:0", name: large, backlog: {cap + 1}, upstream: "127.0.0.1:9"}}
        """,
    )
    checked = run_cli(["check", "-c", str(config)])
    assert checked.returncode == 0
    assert f"backlog: {cap + 1} is above net.core.somaxconn ({cap}): the kernel takes {cap}" in checked.stderr
    proxy = start_proxy("run", "-c", str(config), wait_listening=2)
    assert listen_backlog(proxy.listener_address("small")[1]) == 77
    assert listen_backlog(proxy.listener_address("large")[1]) == cap
    info = ok(admin, "show", "info")
    assert f"somaxconn: {cap}\n" in info
    assert f'backlog: "small=77 large={cap}"' in info


def test_a_reload_changes_a_kept_listener_s_options_and_takes_them_away(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    with_options = f"""
        listeners:
          - {{listen: "127.0.0.1:0", backlog: 77, keepalive: {{idle: 7s}}, user_timeout: 2s, upstream: app}}
        upstreams:
          app: {{servers: ["{upstream.address}"]}}
        """
    config = write(tmp_path, with_options)
    proxy = start_proxy("run", "-c", str(config))
    write(tmp_path, with_options.replace(", backlog: 77, keepalive: {idle: 7s}, user_timeout: 2s", ""))
    proxy.send_signal(signal.SIGHUP)
    proxy.wait_for(" reloaded ")
    assert listen_backlog(proxy.port) == min(1024, somaxconn())
    kernel = int(Path("/proc/sys/net/ipv4/tcp_keepalive_time").read_text())
    with connect(proxy.address) as client:
        client_side, _ = both_sides(proxy, upstream, client)
    assert (client_side["keepalive"], client_side["idle"], client_side["user_timeout_ms"]) == (0, kernel, 0)


# -- a dead peer behind a keepalive ------------------------------------------------------

_SILENCED_PEER = """
import socket, subprocess, sys, threading, time

def ip(*args):
    subprocess.run(["ip", *args], check=True)

ip("link", "set", "lo", "up")
ip("addr", "add", "10.9.9.9/32", "dev", "lo")
server = socket.create_server(("10.9.9.9", 0))
held = []
threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
proxy = subprocess.Popen(
    [sys.executable, "-m", "proxy", "forward", "127.0.0.1:0", f"10.9.9.9:{server.getsockname()[1]}",
     "--keepalive", "1:1:2", "--idle-timeout", "60s"],
    stderr=subprocess.PIPE, text=True,
)
try:
    line = ""
    while " listening " not in line:
        line = proxy.stderr.readline()
    port = int(line.rsplit(":", 1)[1])
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(b"x")
    while not held:
        time.sleep(0.01)
    held[0][0].recv(1)
    # The server's address goes, and what is sent to it is dropped without a word back.
    ip("addr", "del", "10.9.9.9/32", "dev", "lo")
    ip("route", "add", "blackhole", "10.9.9.9/32")
    silenced = time.monotonic()
    client.settimeout(10)
    try:
        client.recv(1)
    except OSError:
        pass
    print(f"{time.monotonic() - silenced:.2f}")
    proxy.terminate()  # a connection still open would wait out the drain: not for long
    try:
        print(proxy.communicate(timeout=5)[1])
    except subprocess.TimeoutExpired:
        proxy.kill()
        print(proxy.communicate()[1])
finally:
    proxy.kill()
"""


def test_a_silenced_server_behind_a_keepalive_is_noticed_within_idle_plus_interval_times_count(tmp_path):
    unshare = required_tool("unshare")
    required_tool("ip")
    script = tmp_path / "silenced.py"
    script.write_text(textwrap.dedent(_SILENCED_PEER))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [unshare, "--net", sys.executable, str(script)], capture_output=True, text=True, timeout=30, env=env
    )
    if done.returncode and "unshare" in done.stderr and "Operation not permitted" in done.stderr:
        pytest.skip("no network namespace for this user")
    assert done.returncode == 0, done.stderr
    elapsed, _, log = done.stdout.partition("\n")
    # idle 1 s, then 2 probes 1 s apart: the proxy gives up about 3 s after the last byte.
    assert 1.5 < float(elapsed) < 8, done.stdout
    (access,) = [logfmt(line) for line in log.splitlines() if " access " in line]
    assert (access["result"], access["reason"]) == ("reset", "upstream: connection timed out")


# -- the pid file --------------------------------------------------------------------------


def _pid_in(path: Path) -> int:
    return int(path.read_text())


def test_the_pid_file_is_written_once_listening_and_removed_at_exit(tmp_path, start_proxy):
    pid_file = tmp_path / "run" / "pairproxy.pid"
    pid_file.parent.mkdir()
    proxy = start_proxy("forward", "127.0.0.1:0", "127.0.0.1:9", "--pid-file", str(pid_file))
    assert wait_until(pid_file.exists)
    assert _pid_in(pid_file) == proxy.proc.pid
    assert os.listdir(pid_file.parent) == ["pairproxy.pid"]  # no temporary file left beside it
    assert proxy.stop() == 0
    assert not pid_file.exists()


def test_a_pid_file_naming_a_live_pairproxy_refuses_the_start(tmp_path, start_proxy):
    pid_file = tmp_path / "pairproxy.pid"
    first = start_proxy("forward", "127.0.0.1:0", "127.0.0.1:9", "--pid-file", str(pid_file))
    assert wait_until(pid_file.exists)
    second = run_cli(["forward", "127.0.0.1:0", "127.0.0.1:9", "--pid-file", str(pid_file)])
    assert second.returncode == 1
    assert second.stderr == f"pairproxy: pid file {pid_file}: pairproxy {first.proc.pid} is running\n"
    assert _pid_in(pid_file) == first.proc.pid


def test_a_stale_pid_file_is_replaced(tmp_path, start_proxy):
    pid_file = tmp_path / "pairproxy.pid"
    with subprocess.Popen(["sleep", "30"]) as other:  # alive, but no pairproxy
        try:
            pid_file.write_text(f"{other.pid}\n")
            proxy = start_proxy("forward", "127.0.0.1:0", "127.0.0.1:9", "--pid-file", str(pid_file))
            assert wait_until(lambda: _pid_in(pid_file) == proxy.proc.pid)
        finally:
            other.kill()


def test_under_workers_only_the_supervisor_writes_the_pid_file(tmp_path, start_proxy):
    pid_file = tmp_path / "pairproxy.pid"
    config = write(tmp_path, 'listeners: [{listen: "127.0.0.1:0", upstream: "127.0.0.1:9"}]\n')
    proxy = start_proxy("run", "-c", str(config), "--workers", "2", "--pid-file", str(pid_file), wait_listening=2)
    assert wait_until(pid_file.exists)
    assert _pid_in(pid_file) == proxy.proc.pid
    worker = int(re.search(r"worker_started worker=0 pid=(\d+)", proxy.log_text()).group(1))
    os.kill(worker, signal.SIGKILL)
    assert wait_until(lambda: proxy.log_text().count("worker_started worker=0 ") == 2), proxy.log_text()
    assert _pid_in(pid_file) == proxy.proc.pid  # the worker that died, and its successor, left it alone
    assert proxy.stop() == 0
    assert not pid_file.exists()


def test_a_pid_file_that_cannot_be_written_stops_the_start_and_leaves_no_socket_file(tmp_path):
    socket_file = tmp_path / "app.sock"
    pid_file = tmp_path / "missing" / "pairproxy.pid"
    done = run_cli(["forward", f"unix:{socket_file}", "127.0.0.1:9", "--pid-file", str(pid_file)])
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == f"pairproxy: pid file {pid_file}: no such file or directory"
    assert not socket_file.exists()
