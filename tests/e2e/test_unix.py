"""End to end: UNIX domain sockets on either side, with the real `pairproxy` command."""

from __future__ import annotations

import contextlib
import grp
import hashlib
import html
import json
import os
import pwd
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.config.loader import ConfigError, parse_config
from proxy.config.units import UnixAddress, parse_address
from proxy.loop.listener import SocketFileError, listen_unix
from proxy.protocol import proxyproto
from proxy.protocol.hexdump import parse_dump_line
from tests.support import (
    WAIT,
    connect,
    echo_handler,
    http,
    logfmt,
    pattern,
    recv_all,
    recv_digest,
    recv_exactly,
    required_tool,
    run_cli,
    splicing,
    wait_until,
)
from tests.support.wireshark import fields, find_tshark, follow

MiB = 1024 * 1024
BULK = 50 * MiB


def unix_connect(path: str | bytes, bind: str | bytes | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    if bind is not None:
        sock.bind(bind)
    sock.connect(path)
    return sock


def abstract_name() -> str:
    return f"pairproxy-test-{uuid.uuid4().hex[:12]}"


def upload_then_download(conn: socket.socket) -> None:
    """Read the client's stream to its end, answer `LENGTH SHA256\\n`, then send BULK bytes and half-close."""
    digest, total = hashlib.sha256(), 0
    while data := conn.recv(1 << 20):
        digest.update(data)
        total += len(data)
    conn.sendall(f"{total} {digest.hexdigest()}\n".encode())
    block = pattern(MiB, seed=7)
    for _ in range(BULK // MiB):
        conn.sendall(block)
    conn.shutdown(socket.SHUT_WR)


def both_ways(client: socket.socket) -> None:
    """BULK bytes up, the client half-closes, BULK bytes down: both sha256-checked."""
    upload = pattern(BULK, seed=3)
    client.sendall(upload)
    client.shutdown(socket.SHUT_WR)
    line = b""
    while not line.endswith(b"\n"):
        line += client.recv(1)
    assert line.decode().split() == [str(BULK), hashlib.sha256(upload).hexdigest()]
    assert recv_digest(client) == (BULK, hashlib.sha256(pattern(MiB, seed=7) * (BULK // MiB)).hexdigest())


# -- bytes both ways, on every pairing of families ----------------------------------------------


def test_tcp_to_unix_50_mib_each_way(start_proxy, start_unix_upstream, tmp_path, data_path):
    upstream = start_unix_upstream(upload_then_download, str(tmp_path / "up.sock"))
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, env=splicing(data_path))
    with connect(proxy.address, timeout=60) as client:
        both_ways(client)
    access = proxy.wait_access(1)[0]
    assert (access["server"], access["result"]) == (upstream.address, "closed")
    assert int(access["bytes_up"]) == BULK


def test_unix_to_tcp_50_mib_each_way(start_proxy, start_upstream, tmp_path, data_path):
    upstream = start_upstream(upload_then_download)
    front = tmp_path / "front.sock"
    proxy = start_proxy("forward", f"unix:{front}", upstream.address, env=splicing(data_path))
    assert proxy.addresses == [f"unix:{front}"]
    with unix_connect(str(front)) as client:
        client.settimeout(60)
        both_ways(client)
    access = proxy.wait_access(1)[0]
    assert (access["client"], access["result"]) == (f"unix:{front}", "closed")
    assert int(access["bytes_down"]) > BULK


def test_unix_to_unix_50_mib_each_way(start_proxy, start_unix_upstream, tmp_path, data_path):
    upstream = start_unix_upstream(upload_then_download, str(tmp_path / "up.sock"))
    front = tmp_path / "front.sock"
    proxy = start_proxy("forward", f"unix:{front}", upstream.address, env=splicing(data_path))
    with unix_connect(str(front)) as client:
        client.settimeout(60)
        both_ways(client)
    access = proxy.wait_access(1)[0]
    assert (access["server"], access["result"], access["close_by"]) == (upstream.address, "closed", "client")


def test_the_upstream_half_closes_first_and_the_client_still_sends(
    start_proxy, start_unix_upstream, tmp_path, data_path
):
    received = []

    def greet_then_listen(conn: socket.socket) -> None:
        conn.sendall(b"greeting")
        conn.shutdown(socket.SHUT_WR)
        received.append(recv_all(conn))

    upstream = start_unix_upstream(greet_then_listen, str(tmp_path / "up.sock"))
    front = tmp_path / "front.sock"
    proxy = start_proxy("forward", f"unix:{front}", upstream.address, env=splicing(data_path))
    with unix_connect(str(front)) as client:
        assert recv_all(client) == b"greeting"  # the upstream's end of stream reached the client
        client.sendall(b"still talking")
        client.shutdown(socket.SHUT_WR)
        assert wait_until(lambda: received == [b"still talking"])
    access = proxy.wait_access(1)[0]
    assert (access["result"], access["close_by"]) == ("closed", "upstream")


def test_abstract_names_on_both_sides(start_proxy, start_unix_upstream):
    up_name, front_name = abstract_name(), abstract_name()
    upstream = start_unix_upstream(echo_handler, b"\0" + up_name.encode())
    proxy = start_proxy("forward", f"unix:@{front_name}", f"unix:@{up_name}")
    assert proxy.addresses == [f"unix:@{front_name}"]
    with unix_connect(b"\0" + front_name.encode()) as client:
        client.sendall(b"abstract")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"abstract"
    access = proxy.wait_access(1)[0]
    assert (access["listener"], access["server"]) == (f"unix:@{front_name}", upstream.address)
    assert proxy.stop() == 0


# -- who the client is ---------------------------------------------------------------------------


def test_the_access_line_names_the_client_and_its_credentials(start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    front, named = tmp_path / "front.sock", tmp_path / "client.sock"
    proxy = start_proxy("forward", f"unix:{front}", upstream.address)
    for bind in (None, str(named)):
        with unix_connect(str(front), bind=bind) as client:
            client.sendall(b"x")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"x"
    unnamed, bound = proxy.wait_access(2)
    assert unnamed["client"] == f"unix:{front}", "an unnamed client is named by the socket it came in by"
    assert bound["client"] == f"unix:{named}"
    for access in (unnamed, bound):
        assert (access["peer_uid"], access["peer_pid"]) == (str(os.getuid()), str(os.getpid()))


def test_a_client_bound_to_a_path_that_starts_with_an_at_sign_cannot_pose_as_an_abstract_one(
    start_proxy, start_upstream, tmp_path
):
    upstream = start_upstream(echo_handler)
    front = tmp_path / "front.sock"
    proxy = start_proxy("forward", f"unix:{front}", upstream.address)
    name = abstract_name()
    with unix_connect(str(front), bind=b"\0" + name.encode()) as client:
        client.sendall(b"x")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"x"
    # A relative path is bound from the binding process's folder: a client of its own, in tmp_path.
    poser = f"""if True:
        import socket
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout({WAIT})
        sock.bind("@{name}")
        sock.connect({str(front)!r})
        sock.sendall(b"x")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b"x"
        """
    subprocess.run([sys.executable, "-c", poser], cwd=tmp_path, check=True, timeout=WAIT)
    abstract, path = proxy.wait_access(2)
    assert abstract["client"] == f"unix:@{name}"
    assert path["client"] == f"unix:\\x40{name}"


def test_a_tcp_client_has_no_peer_credentials(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address)
    with connect(proxy.address) as client:
        client.sendall(b"x")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"x"
    access = proxy.wait_access(1)[0]
    assert "peer_uid" not in access and "peer_pid" not in access


def test_an_upstream_socket_nobody_listens_on_is_a_failed_connect(start_proxy, tmp_path):
    proxy = start_proxy("forward", "127.0.0.1:0", f"unix:{tmp_path / 'nobody.sock'}")
    with connect(proxy.address) as client:
        assert recv_all(client) == b""
    access = proxy.wait_access(1)[0]
    assert (access["result"], access["reason"]) == ("upstream_unreachable", "no such file or directory")
    failed = logfmt(proxy.wait_for(" connect_failed "))
    assert (failed["server"], failed["reason"]) == (f"unix:{tmp_path / 'nobody.sock'}", "no such file or directory")


# -- the socket file -----------------------------------------------------------------------------


def test_a_stale_socket_file_is_taken_over(start_proxy, start_upstream, tmp_path):
    front = tmp_path / "front.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(front))  # closed without removing its file: what a crash leaves
    assert front.is_socket()
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", f"unix:{front}", upstream.address)
    with unix_connect(str(front)) as client:
        client.sendall(b"alive")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"alive"
    assert proxy.stop() == 0
    assert not front.exists(), "a clean exit removes the socket file"


def test_a_live_socket_is_address_in_use_and_left_alone(start_upstream, tmp_path):
    front = tmp_path / "front.sock"
    upstream = start_upstream(echo_handler)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(front))
        live.listen(1)
        result = run_cli(["forward", f"unix:{front}", upstream.address], cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.strip() == f"pairproxy: cannot listen on unix:{front}: address already in use"
        assert front.is_socket()
        with unix_connect(str(front)):
            live.accept()[0].close()  # still the other program's socket


def test_a_file_that_is_not_a_socket_is_not_replaced(start_upstream, tmp_path):
    front = tmp_path / "front.sock"
    front.write_text("precious")
    result = run_cli(["forward", f"unix:{front}", "127.0.0.1:9"], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == f"pairproxy: cannot listen on unix:{front}: the file exists and is not a socket"
    assert front.read_text() == "precious"


# What a socket file is made for: (configuration, its name in run/, the error line's words for it).
SOCKET_FILES = {
    "listener": (
        'listeners:\n  - listen: unix:run/app.sock\n    mode: "0666"\n    upstream: 127.0.0.1:9\n',
        "app.sock",
        "cannot listen on unix:{}",
    ),
    "admin": (
        "admin: {socket: run/admin.sock}\nlisteners:\n  - listen: 127.0.0.1:0\n    upstream: 127.0.0.1:9\n",
        "admin.sock",
        "admin socket {}",
    ),
}


@pytest.mark.parametrize("plant", [os.symlink, os.link], ids=["symlink", "hard link"])
@pytest.mark.parametrize("made_for", SOCKET_FILES)
def test_a_file_swapped_in_after_the_bind_never_gets_the_mode(made_for, plant, tmp_path):
    """Whoever may write in the socket's folder can swap the new socket file for a link to a file
    of their choice before its mode is set (strace holds each bind's return for a second to make
    that moment certain): that file keeps its mode, and the proxy refuses to start."""
    text, name, words = SOCKET_FILES[made_for]
    victim = tmp_path / "victim"
    victim.write_text("secret")
    victim.chmod(0o640)
    (tmp_path / "run").mkdir()
    socket_file = tmp_path / "run" / name
    config = tmp_path / "pairproxy.yaml"
    write_config(config, text)
    strace = [required_tool("strace"), "-f", "-qq", "-o", os.devnull, "-e", "trace=bind"]
    slow_bind = ["-e", "inject=bind:delay_exit=1000000"]
    command = [*strace, *slow_bind, sys.executable, "-m", "proxy", "run", "-c", str(config)]
    errors = tmp_path / "stderr.txt"
    with open(errors, "wb") as stderr:
        tracer = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        assert wait_until(socket_file.is_socket, interval=0.001), "the proxy never bound"
        swap = tmp_path / "run" / "swap"
        plant(victim, swap)
        planted = os.lstat(swap).st_ino
        os.replace(swap, socket_file)
        wait_until(lambda: tracer.poll() is not None or victim.stat().st_mode & 0o777 != 0o640)
    finally:
        if tracer.poll() is None:  # still serving: stop the proxy, and strace ends with it
            children = Path(f"/proc/{tracer.pid}/task/{tracer.pid}/children").read_text().split()
            os.kill(int(children[0]), signal.SIGTERM)
        tracer.wait(WAIT)
    assert oct(victim.stat().st_mode & 0o7777) == oct(0o640)
    assert victim.read_text() == "secret"
    where = words.format(socket_file)
    assert (tracer.returncode, errors.read_text()) == (
        1,
        f"pairproxy: {where}: the socket file was replaced as it was being made\n",
    )
    assert os.lstat(socket_file).st_ino == planted, "what took the socket's place is not the proxy's to remove"


def current_umask() -> int:
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def test_without_proc_a_mode_is_given_by_the_bind_itself(tmp_path):
    """Where /proc is not mounted the file gets its mode from a umask set for the bind alone."""
    path = tmp_path / "front.sock"
    umask = current_umask()
    sock = listen_unix(str(path), mode=0o640, proc_fds=str(tmp_path / "no-proc"))
    try:
        assert stat.S_IMODE(path.lstat().st_mode) == 0o640
        assert current_umask() == umask, "the process's umask is its own again"
        with unix_connect(str(path)):
            pass
    finally:
        sock.close()
    assert not path.exists()


@pytest.mark.parametrize(
    ("wanted", "why"),
    [
        (
            {"owner": os.getuid()},
            "cannot set the socket file's owner and group: {proc} is not there (is /proc mounted?),"
            " and by its name they could go to a file swapped in after the bind",
        ),
        (
            {"mode": 0o1770},
            "cannot set the socket file's mode: without {proc} it is made under a umask, which gave it 0770, not 1770",
        ),
    ],
    ids=["owner", "mode beyond a umask's"],
)
def test_without_proc_what_cannot_be_set_safely_is_refused_in_one_line(wanted, why, tmp_path):
    path, proc = tmp_path / "front.sock", tmp_path / "no-proc"
    with pytest.raises(SocketFileError) as caught:
        listen_unix(str(path), proc_fds=str(proc), **wanted)
    assert str(caught.value) == why.format(proc=proc)
    assert not path.exists()


def test_a_path_longer_than_the_kernel_takes_is_an_error(tmp_path):
    long_path = "/tmp/" + "d" * 120 + ".sock"
    result = run_cli(["forward", f"unix:{long_path}", "127.0.0.1:9"], cwd=tmp_path)
    assert result.returncode == 2
    assert "is 130 bytes, over the 107 of a UNIX socket" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_relative_paths_on_the_command_line_are_from_the_current_folder(start_proxy, start_unix_upstream, tmp_path):
    upstream = start_unix_upstream(echo_handler, str(tmp_path / "up.sock"))
    proxy = start_proxy("forward", "unix:front.sock", "unix:up.sock")  # run in tmp_path
    assert proxy.addresses == [f"unix:{tmp_path / 'front.sock'}"]
    with unix_connect(str(tmp_path / "front.sock")) as client:
        client.sendall(b"relative")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"relative"
    assert proxy.wait_access(1)[0]["server"] == upstream.address


def write_config(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_mode_owner_and_group_are_applied_and_paths_are_from_the_config_folder(start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    config = tmp_path / "etc" / "pairproxy.yaml"
    write_config(
        config,
        f"""\
        listeners:
          - listen: unix:run/app.sock
            mode: "0660"
            owner: {user}
            group: {group}
            upstream: {upstream.address}
        """,
    )
    (tmp_path / "etc" / "run").mkdir()
    proxy = start_proxy("run", "-c", str(config))
    socket_file = tmp_path / "etc" / "run" / "app.sock"
    assert proxy.addresses == [f"unix:{socket_file}"]
    found = socket_file.stat()
    assert (found.st_mode & 0o7777, found.st_uid, found.st_gid) == (0o660, os.getuid(), os.getgid())


def test_an_unknown_owner_is_a_located_error(tmp_path):
    config = tmp_path / "pairproxy.yaml"
    write_config(
        config,
        """\
        listeners:
          - listen: unix:app.sock
            owner: no-such-user-here
            upstream: 127.0.0.1:9
        """,
    )
    result = run_cli(["check", "-c", str(config)], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{config}:3:12: owner: no user named 'no-such-user-here' on this system"


def test_an_owner_in_digits_other_than_ascii_is_a_name(tmp_path):
    # "\u0663" (ARABIC-INDIC DIGIT THREE) passes str.isdigit and int() reads it as 3: it must not
    # give the socket file to user 3.
    config = tmp_path / "pairproxy.yaml"
    config.write_text('listeners:\n  - listen: unix:app.sock\n    owner: "\u0663"\n    upstream: 127.0.0.1:9\n')
    result = run_cli(["check", "-c", str(config)], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{config}:3:12: owner: no user named '\u0663' on this system"


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("allow: [10.0.0.0/8]", "3:5: allow: clients of a UNIX socket listener have no IP address"),
        ("deny: [10.0.0.0/8]", "3:5: deny: clients of a UNIX socket listener have no IP address"),
        ("accept_proxy_protocol: {trusted: [10.0.0.1]}", "3:28: accept_proxy_protocol: trusted: clients of a UNIX"),
    ],
)
def test_rules_on_client_addresses_are_located_errors_on_a_unix_listener(rule, message, tmp_path):
    config = tmp_path / "pairproxy.yaml"
    write_config(
        config,
        f"""\
        listeners:
          - listen: unix:app.sock
            {rule}
            upstream: 127.0.0.1:9
        """,
    )
    result = run_cli(["check", "-c", str(config)], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{config}:{message}")
    assert len(result.stderr.strip().splitlines()) == 1


def test_mode_on_a_tcp_listener_is_a_located_error(tmp_path):
    config = tmp_path / "pairproxy.yaml"
    write_config(
        config,
        """\
        listeners:
          - listen: 127.0.0.1:0
            mode: "0660"
            upstream: 127.0.0.1:9
        """,
    )
    result = run_cli(["check", "-c", str(config)], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"{config}:3:5: mode applies to a listener on a socket file (unix:/PATH): 127.0.0.1:0 is not a UNIX socket"
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_reload_keeps_the_socket_file_and_a_clean_exit_removes_it(workers, start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    config = tmp_path / "pairproxy.yaml"
    listener = f"listeners:\n  - listen: unix:app.sock\n    upstream: {upstream.address}\n"
    write_config(config, listener)
    proxy = start_proxy("run", "-c", str(config), "--workers", str(workers), wait_listening=workers)
    socket_file = tmp_path / "app.sock"
    inode = socket_file.stat().st_ino

    def echoed(text: bytes) -> bool:
        with unix_connect(str(socket_file)) as client:
            client.sendall(text)
            client.shutdown(socket.SHUT_WR)
            return recv_all(client) == text

    assert all(echoed(b"before %d" % index) for index in range(4))
    write_config(config, listener + "  - listen: 127.0.0.1:0\n    upstream: " + upstream.address + "\n")
    proxy.send_signal(signal.SIGHUP)
    assert wait_until(lambda: proxy.log_text().count(" reloaded ") == workers)
    assert "reload_failed" not in proxy.log_text()
    assert socket_file.stat().st_ino == inode, "the socket (and its file) stayed"
    assert all(echoed(b"after %d" % index) for index in range(4))
    assert proxy.stop() == 0
    assert not socket_file.exists()


def test_a_reload_that_drops_the_listener_removes_its_file(start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    config = tmp_path / "pairproxy.yaml"
    write_config(config, f"listeners:\n  - listen: unix:app.sock\n    upstream: {upstream.address}\n")
    proxy = start_proxy("run", "-c", str(config))
    assert (tmp_path / "app.sock").is_socket()
    write_config(config, f"listeners:\n  - listen: 127.0.0.1:0\n    upstream: {upstream.address}\n")
    proxy.send_signal(signal.SIGHUP)
    proxy.wait_for(" reloaded ")
    assert not (tmp_path / "app.sock").exists()


# -- PROXY protocol to the upstream --------------------------------------------------------------


def header_reader(headers: list[bytes]):
    """An upstream that keeps the PROXY v2 header it was sent, then echoes the rest."""

    def handler(conn: socket.socket) -> None:
        head = recv_exactly(conn, 16)
        headers.append(head + recv_exactly(conn, struct.unpack("!H", head[14:16])[0]))
        echo_handler(conn)

    return handler


def test_proxy_v2_from_a_unix_listener_names_both_sockets(start_proxy, start_upstream, tmp_path):
    headers: list[bytes] = []
    upstream = start_upstream(header_reader(headers))
    config = tmp_path / "pairproxy.yaml"
    write_config(
        config,
        f"""\
        upstreams:
          app:
            proxy_protocol: v2
            servers: [{upstream.address}]
        listeners:
          - listen: unix:front.sock
            upstream: app
        """,
    )
    start_proxy("run", "-c", str(config))
    front, named = tmp_path / "front.sock", tmp_path / "client.sock"
    for bind in (str(named), None):
        with unix_connect(str(front), bind=bind) as client:
            client.sendall(b"payload")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"payload"
    assert wait_until(lambda: len(headers) == 2)
    named_header, unnamed_header = headers
    info, length = proxyproto.parse(named_header)
    assert (info, length) == (proxyproto.ProxyInfo(None, None), 16 + 216)
    assert named_header[12:14] == bytes([0x21, 0x31]), "PROXY, AF_UNIX over a stream"
    source, destination = named_header[16:124], named_header[124:232]
    assert source.rstrip(b"\0") == os.fsencode(named) and destination.rstrip(b"\0") == os.fsencode(front)
    assert proxyproto.parse(unnamed_header) == (proxyproto.ProxyInfo(None, None), 16)
    assert unnamed_header[12:14] == bytes([0x20, 0x00]), "LOCAL: an unnamed client has no address to give"


def test_proxy_v1_from_a_unix_listener_is_unknown(start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    config = tmp_path / "pairproxy.yaml"
    write_config(
        config,
        f"""\
        upstreams:
          app:
            proxy_protocol: v1
            servers: [{upstream.address}]
        listeners:
          - listen: unix:front.sock
            upstream: app
        """,
    )
    start_proxy("run", "-c", str(config))
    with unix_connect(str(tmp_path / "front.sock")) as client:
        client.sendall(b"payload")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"PROXY UNKNOWN\r\npayload"


# -- names a client chose ------------------------------------------------------------------------

# Abstract names a client may bind to: a NUL and a byte that is no UTF-8, a newline and a space,
# quotes and a backslash, and a newline followed by a record of the hex dump, to be forged.
FORGED = b"2026-01-01T00:00:00.000000+00:00 conn=999 close result=closed"
ODD_NAMES = (b"\0e\xff", b"a\nb c", b"q\"'\\", b"x\n" + FORGED + b"\n")
DUMP_RECORD = re.compile(
    r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00 conn=(\d+) "
    r"(open \S+ -> \S+|close result=\w+|(client->upstream|upstream->client) offset=(\d+) len=(\d+) \S+ -> \S+)\Z"
)


def shown(name: bytes) -> str:
    """How every output names a client bound to the abstract `name`: printable ASCII, no space."""
    kept = set(range(0x21, 0x7F)) - set(b"\\\"'")
    return "unix:@" + "".join(chr(b) if b in kept else f"\\x{b:02x}" for b in name)


def parse_dump(text: str) -> dict[int, list[tuple[str, bytes]]]:
    """Each connection's records in a hex dump, as (kind, the bytes its dump lines hold);
    AssertionError for a line that is neither a record nor a dump line of the chunk before it."""
    records: dict[int, list[tuple[str, bytes]]] = {}
    missing = 0  # bytes the last chunk header announced that its dump lines have not given yet
    for line in text.splitlines():
        if match := DUMP_RECORD.match(line):
            assert not missing, f"a chunk cut short before {line!r}"
            conn, direction = int(match[1]), match[3]
            records.setdefault(conn, []).append((direction or match[2].split()[0], b""))
            missing = int(match[5]) if direction else 0
            continue
        offset, data = parse_dump_line(line)
        kind, held = records[conn][-1]
        assert 0 < len(data) <= missing and offset == len(held), f"not a dump line of its chunk: {line!r}"
        records[conn][-1] = (kind, held + data)
        missing -= len(data)
    assert not missing, "the dump ends inside a chunk"
    return records


@pytest.fixture
def odd_clients(start_proxy, start_upstream, tmp_path):
    """A proxy with a dumped UNIX listener, an admin socket and admin HTTP, and one open client per
    ODD_NAMES (each name made unique): (proxy, admin HTTP address, admin socket, {name: client})."""
    upstream = start_upstream(echo_handler)
    config = tmp_path / "pairproxy.yaml"
    write_config(
        config,
        f"""\
        admin: {{socket: admin.sock, http: "127.0.0.1:0"}}
        listeners:
          - {{name: front, listen: unix:front.sock, upstream: "{upstream.address}", hexdump: true}}
        """,
    )
    proxy = start_proxy("run", "-c", str(config), "--dump-file", "dump.txt")
    host, _, port = logfmt(proxy.wait_for("admin_listening"))["address"].rpartition(":")
    tag = uuid.uuid4().hex[:8].encode()  # the abstract namespace is the whole machine's
    with contextlib.ExitStack() as open_clients:
        clients = {}
        for name in ODD_NAMES:
            client = unix_connect(str(tmp_path / "front.sock"), bind=b"\0" + name + tag)
            clients[name + tag] = open_clients.enter_context(client)
            client.sendall(b"hi")
            assert recv_exactly(client, 2) == b"hi"
        yield proxy, (host, int(port)), tmp_path / "admin.sock", clients


def test_the_status_page_shows_odd_client_names_escaped(odd_clients):
    _proxy, admin_http, _sock, clients = odd_clients
    status, _headers, body = http(admin_http, "/status")
    assert status == 200
    page = body.decode("ascii")
    for name in clients:
        assert f'<td class="name">{html.escape(shown(name))}</td>' in page


def test_conns_and_metrics_parse_with_odd_client_names(odd_clients):
    _proxy, admin_http, _sock, clients = odd_clients
    status, _headers, body = http(admin_http, "/conns")
    assert status == 200
    assert sorted(conn["client"] for conn in json.loads(body.decode("ascii"))["conns"]) == sorted(map(shown, clients))
    status, _headers, body = http(admin_http, "/metrics")
    assert status == 200
    families = {family.name for family in text_string_to_metric_families(body.decode("ascii"))}
    assert "pairproxy_connections" in families


def test_ctl_show_conns_gives_one_line_per_odd_client(odd_clients):
    _proxy, _admin_http, sock, clients = odd_clients
    done = run_cli(["ctl", "-s", str(sock), "show", "conns"])
    assert done.returncode == 0, done.stderr
    rows = [logfmt(line) for line in done.stdout.splitlines()]
    assert sorted(row["client"] for row in rows) == sorted(map(shown, clients))
    assert {row["state"] for row in rows} == {"relaying"}


def test_odd_client_names_end_closed_on_one_access_line_and_forge_no_dump_record(odd_clients):
    proxy, _admin_http, _sock, clients = odd_clients
    for client in clients.values():
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b""
    access = proxy.wait_access(len(clients))
    assert sorted((line["client"], line["result"]) for line in access) == sorted(
        (shown(name), "closed") for name in clients
    )
    assert proxy.stop() == 0
    stamp = re.compile(r"\d{4}-\d\d-\d\dT")
    assert all(stamp.match(line) for line in proxy.lines), proxy.log_text()  # every line is a whole event
    records = parse_dump((proxy.stdout_path.parent / "dump.txt").read_text("ascii"))
    assert sorted(records) == sorted(int(line["conn"]) for line in access)
    for conn in records.values():
        assert conn == [("open", b""), ("client->upstream", b"hi"), ("upstream->client", b"hi"), ("close", b"")]


def test_the_proxy_header_names_an_odd_client_by_its_own_bytes(start_proxy, start_upstream, tmp_path):
    headers: list[bytes] = []
    upstream = start_upstream(header_reader(headers))
    config = tmp_path / "pairproxy.yaml"
    write_config(
        config,
        f"""\
        upstreams:
          app: {{proxy_protocol: v2, servers: ["{upstream.address}"]}}
        listeners:
          - {{listen: unix:front.sock, upstream: app}}
        """,
    )
    start_proxy("run", "-c", str(config))
    name = b"\0e\xff\n " + uuid.uuid4().hex[:8].encode()
    with unix_connect(str(tmp_path / "front.sock"), bind=name) as client:
        client.sendall(b"x")
        assert recv_exactly(client, 1) == b"x"
    assert wait_until(lambda: len(headers) == 1)
    assert headers[0][16:124].rstrip(b"\0") == name.rstrip(b"\0"), "what the upstream is told is not escaped"


# -- the dumps -----------------------------------------------------------------------------------


def test_the_hex_dump_names_unix_endpoints(start_proxy, start_unix_upstream, tmp_path):
    upstream = start_unix_upstream(echo_handler, str(tmp_path / "up.sock"))
    front = tmp_path / "front.sock"
    proxy = start_proxy("forward", f"unix:{front}", upstream.address, "--hexdump")
    with unix_connect(str(front)) as client:
        client.sendall(b"dumped")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"dumped"
    proxy.wait_access(1)
    assert proxy.stop() == 0
    dump = proxy.stdout_path.read_text()
    assert f"conn=1 open unix:{front} -> {upstream.address}\n" in dump
    assert f"conn=1 client->upstream offset=0 len=6 unix:{front} -> {upstream.address}\n" in dump


def test_a_capture_writes_unix_legs_with_made_up_loopback_addresses(start_proxy, start_unix_upstream, tmp_path):
    tshark = find_tshark()
    upstream = start_unix_upstream(echo_handler, str(tmp_path / "up.sock"))
    front, capture = tmp_path / "front.sock", tmp_path / "capture.pcapng"
    proxy = start_proxy("forward", f"unix:{front}", upstream.address, "--pcap", str(capture))
    with unix_connect(str(front)) as client:
        client.sendall(b"captured")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"captured"
    proxy.wait_access(1)
    assert proxy.stop() == 0
    path = str(capture)
    assert follow(tshark, path, 0) == (b"captured", b"captured")
    assert follow(tshark, path, 1) == (b"captured", b"captured")
    base = f"conn=1 listener=unix:{front} route=0"
    found = [(int(row[0]), row[1]) for row in fields(tshark, path, "tcp.stream", "frame.comment") if row[1]]
    assert found == [(0, f"{base} leg=client unix={front}"), (1, f"{base} leg=upstream unix={tmp_path / 'up.sock'}")]
    names = ("tcp.stream", "ip.src", "ip.dst")
    syns = {row[0]: row[1:] for row in fields(tshark, path, *names, display_filter="tcp.flags == 0x002")}
    assert syns == {"0": ["127.0.0.1", "127.0.0.1"], "1": ["127.0.0.1", "127.0.0.1"]}


def test_a_capture_names_an_odd_unix_socket_escaped(start_proxy, start_unix_upstream, tmp_path):
    tshark = find_tshark()
    upstream = start_unix_upstream(echo_handler, str(tmp_path / "up.sock"))
    name, capture = b"cap\nture \xff" + uuid.uuid4().hex[:8].encode(), tmp_path / "capture.pcapng"
    proxy = start_proxy("forward", "unix:@" + os.fsdecode(name), upstream.address, "--pcap", str(capture))
    with unix_connect(b"\0" + name) as client:
        client.sendall(b"captured")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"captured"
    assert proxy.wait_access(1)[0]["result"] == "closed"
    assert proxy.stop() == 0
    base = f"conn=1 listener={shown(name)} route=0"
    comments = [row[0] for row in fields(tshark, str(capture), "frame.comment") if row[0]]
    assert comments == [f"{base} leg=client unix={shown(name)[5:]}", f"{base} leg=upstream unix={tmp_path / 'up.sock'}"]


def test_a_worker_restarted_after_a_crash_serves_the_same_socket(start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    config = tmp_path / "pairproxy.yaml"
    write_config(config, f"listeners:\n  - listen: unix:app.sock\n    upstream: {upstream.address}\n")
    proxy = start_proxy("run", "-c", str(config), "--workers", "2", wait_listening=2)
    socket_file = tmp_path / "app.sock"
    inode = socket_file.stat().st_ino
    victim = int(logfmt(proxy.wait_for(" worker_started "))["pid"])
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: proxy.log_text().count(" worker_started ") == 3)
    assert wait_until(lambda: proxy.log_text().count(" listening ") == 3)
    assert socket_file.stat().st_ino == inode, "the socket the supervisor keeps, not a new one"
    for index in range(6):
        with unix_connect(str(socket_file)) as client:
            client.sendall(b"after %d" % index)
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"after %d" % index
    assert proxy.stop() == 0
    assert not socket_file.exists()


def test_a_health_check_reaches_a_unix_server(start_proxy, start_unix_upstream, tmp_path):
    upstream = start_unix_upstream(echo_handler, str(tmp_path / "up.sock"))
    config = tmp_path / "pairproxy.yaml"
    write_config(
        config,
        f"""\
        upstreams:
          app:
            health_check: {{interval: 100ms, timeout: 1s, rise: 1, fall: 1}}
            servers: [{upstream.address}, "unix:nobody.sock"]
        listeners:
          - listen: 127.0.0.1:0
            upstream: app
        """,
    )
    proxy = start_proxy("run", "-c", str(config))
    down = logfmt(proxy.wait_for(" server_down "))
    assert down["server"] == f"unix:{tmp_path / 'nobody.sock'}"
    assert f"server={upstream.address}" not in proxy.log_text()


def test_tls_to_a_unix_server_needs_a_server_name(tmp_path):
    config = tmp_path / "pairproxy.yaml"
    write_config(
        config,
        """\
        upstreams:
          app:
            tls: {}
            servers: ["unix:app.sock"]
        listeners:
          - listen: 127.0.0.1:0
            upstream: app
        """,
    )
    result = run_cli(["check", "-c", str(config)], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"{config}:3:5: upstream 'app': TLS to a UNIX socket server needs 'server_name:',"
        " the name its certificate is checked for"
    )
    result = run_cli(["forward", "127.0.0.1:0", "unix:app.sock", "--upstream-tls"], cwd=tmp_path)
    assert result.returncode == 2
    assert "TLS to a UNIX socket needs --upstream-server-name" in result.stderr


def test_two_listeners_on_one_socket_file_are_a_located_error(tmp_path):
    config = tmp_path / "pairproxy.yaml"
    write_config(
        config,
        f"""\
        listeners:
          - listen: unix:app.sock
            upstream: 127.0.0.1:9
          - listen: unix:{tmp_path}/./app.sock
            name: other
            upstream: 127.0.0.1:9
        """,
    )
    result = run_cli(["check", "-c", str(config)], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{config}:4:5: two listeners on unix:{tmp_path}/app.sock (first at {config}:2:5)"


# -- the address forms ---------------------------------------------------------------------------


def test_unix_addresses_parse_and_print_as_written():
    assert parse_address("unix:/run/app.sock") == UnixAddress("/run/app.sock")
    assert str(parse_address("unix:/run/./x/../app.sock")) == "unix:/run/app.sock"
    assert parse_address("unix:app.sock", base_dir="/etc/pairproxy") == UnixAddress("/etc/pairproxy/app.sock")
    assert parse_address("unix:@name") == UnixAddress("name", abstract=True)
    assert str(parse_address("unix:@name")) == "unix:@name"
    assert parse_address("unix:@" + "n" * 107).sockaddr == b"\0" + b"n" * 107
    assert parse_address("unix:/" + "p" * 106).sockaddr == "/" + "p" * 106
    for text, why in [
        ("unix:", "expected unix:/PATH or unix:@NAME"),
        ("unix:@", "expected unix:/PATH or unix:@NAME"),
        ("unix:/a\0b", "the path holds a NUL character"),
        ("unix:@" + "n" * 108, "the name is 108 bytes, over the 107 of a UNIX socket"),
        ("unix:/" + "p" * 107, "the path is 108 bytes, over the 107 of a UNIX socket"),
    ]:
        with pytest.raises(ValueError, match=re.escape(why)):
            parse_address(text)


def test_a_relative_config_path_still_gives_an_absolute_socket_path(start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    write_config(
        tmp_path / "pairproxy.yaml", f"listeners:\n  - listen: unix:app.sock\n    upstream: {upstream.address}\n"
    )
    proxy = start_proxy("run", "-c", "pairproxy.yaml")  # run in tmp_path
    assert proxy.addresses == [f"unix:{tmp_path / 'app.sock'}"]


def test_match_source_on_a_unix_listener_is_a_located_error(tmp_path):
    config = tmp_path / "pairproxy.yaml"
    write_config(
        config,
        """\
        listeners:
          - listen: unix:app.sock
            routes:
              - match: {source: 10.0.0.0/8}
                upstream: 127.0.0.1:9
              - upstream: 127.0.0.1:9
        """,
    )
    result = run_cli(["check", "-c", str(config)], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"{config}:4:9: route matches on source, but clients of a UNIX socket listener have no IP address"
    )


@pytest.mark.parametrize(("written", "mode"), [('"0660"', 0o660), ("0660", 0o660), ("660", 0o660), ("'0600'", 0o600)])
def test_a_mode_is_octal_however_it_is_written(written, mode, tmp_path):
    text = f"listeners:\n  - listen: unix:app.sock\n    mode: {written}\n    upstream: 127.0.0.1:9\n"
    listen = parse_config(text, "t.yaml", tmp_path).config.listeners[0].listen
    assert (listen.path, listen.mode) == (str(tmp_path / "app.sock"), mode)


def test_a_mode_that_is_not_octal_is_a_located_error(tmp_path):
    text = "listeners:\n  - listen: unix:app.sock\n    mode: rw-rw----\n    upstream: 127.0.0.1:9\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "t.yaml", tmp_path)
    assert caught.value.messages == ["t.yaml:3:11: mode: must be an octal file mode such as \"0660\", got 'rw-rw----'"]


def test_unix_pairs_splice_unless_told_not_to(start_proxy, start_unix_upstream, tmp_path, data_path):
    upstream = start_unix_upstream(echo_handler, str(tmp_path / "up.sock"))
    front = tmp_path / "front.sock"
    proxy = start_proxy("forward", f"unix:{front}", upstream.address, env=splicing(data_path))
    before = proxy.pipe_count()
    with unix_connect(str(front)) as client:
        bulk = pattern(4 * MiB, seed=4)  # past the 1 MiB after which a direction splices
        for start in range(0, len(bulk), MiB):
            client.sendall(bulk[start : start + MiB])
            assert recv_exactly(client, MiB) == bulk[start : start + MiB]
        during = proxy.pipe_count()
    assert during - before == (4 if data_path == "splice" else 0)  # a pipe per direction, two ends each


def test_an_idle_unix_pair_times_out(start_proxy, start_unix_upstream, tmp_path):
    upstream = start_unix_upstream(echo_handler, str(tmp_path / "up.sock"))
    front = tmp_path / "front.sock"
    proxy = start_proxy("forward", f"unix:{front}", upstream.address, "--idle-timeout", "300ms")
    with unix_connect(str(front)) as client:
        client.sendall(b"once")
        assert recv_exactly(client, 4) == b"once"
        assert recv_all(client) == b""  # then nothing either way, until the proxy closes it
    access = proxy.wait_access(1)[0]
    assert (access["result"], access["reason"]) == ("timeout", "idle")


def test_a_client_that_stops_reading_stops_a_unix_upstream(start_proxy, start_unix_upstream, tmp_path, data_path):
    sent = [0]

    def flood(conn: socket.socket) -> None:
        block = pattern(64 * 1024)
        while True:
            conn.sendall(block)
            sent[0] += len(block)

    upstream = start_unix_upstream(flood, str(tmp_path / "up.sock"))
    front = tmp_path / "front.sock"
    env = splicing(data_path)
    proxy = start_proxy("forward", f"unix:{front}", upstream.address, "--buffer-size", "64KiB", env=env)
    with unix_connect(str(front)) as client:
        assert recv_exactly(client, 1) == pattern(1)
        assert wait_until(lambda: sent[0] > 0)
        stalled = None
        for _ in range(20):  # until the upstream's sends stop moving: the proxy stopped reading it
            before = sent[0]
            time.sleep(0.1)
            if sent[0] == before:
                stalled = before
                break
        assert stalled is not None and stalled < 16 * MiB, f"the upstream kept sending ({sent[0]} bytes)"
    proxy.wait_access(1)


def test_a_dump_filter_on_the_client_address_of_a_unix_listener_is_a_warning(tmp_path):
    text = "listeners:\n  - listen: unix:app.sock\n    dump_only: [client=10.0.0.0/8]\n    upstream: 127.0.0.1:9\n"
    loaded = parse_config(text, "t.yaml", tmp_path)
    assert list(loaded.warnings) == [
        "t.yaml:3:16: warning: dump_only: 'client=10.0.0.0/8' never holds on a UNIX socket listener"
        " (its clients have no IP address)"
    ]


def test_a_captured_unix_leg_ends_as_its_peer_saw_it_not_with_a_reset(start_proxy, start_unix_upstream, tmp_path):
    tshark = find_tshark()
    seen = []

    def reader(conn: socket.socket) -> None:
        data = b""
        while chunk := conn.recv(100):
            data += chunk
        seen.append(data)  # an orderly end: a UNIX socket has no reset

    upstream = start_unix_upstream(reader, str(tmp_path / "app.sock"))
    capture = tmp_path / "capture.pcapng"
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--pcap", str(capture))
    client = socket.create_connection(proxy.address, timeout=WAIT)
    client.sendall(b"half a request")
    assert wait_until(lambda: "half a request" in capture.read_bytes().decode("latin-1"))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # the client resets; the proxy aborts the upstream leg
    assert proxy.wait_access(1)[0]["result"] == "reset"
    assert wait_until(lambda: seen == [b"half a request"])
    assert proxy.stop() == 0
    rows = fields(tshark, str(capture), "tcp.stream", "tcp.flags.reset", "tcp.flags.fin")
    upstream_leg = [row for row in rows if row[0] == "1"]
    assert not [row for row in upstream_leg if row[1] == "1"], "no RST on the UNIX leg"
    assert [row for row in upstream_leg if row[2] == "1"], "its end, as a FIN"
