"""End to end: the HTTP admin listener of `pairproxy run` (/metrics, /ready, /status, /conns).

Real traffic through the real command, then what a scraper, a load balancer's readiness probe
and an operator's browser see; and one test in process, where a socketpair's small buffer makes
an answer outgrow the kernel's buffers.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import socket
import subprocess
import termios
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from proxy.admin.later import CommandError, Later
from proxy.admin.web import MAX_CLIENTS, AdminHttp
from proxy.config.units import Address
from proxy.log import EventLog
from proxy.loop.reactor import Reactor
from tests.support import (
    WAIT,
    admin_address,
    ask,
    connect,
    echo_handler,
    free_port,
    http,
    labels,
    metrics,
    recv_all,
    recv_exactly,
    required_tool,
    run_cli,
    snapshot,
    wait_until,
)

ODD_NAME = 'we"b\\1'  # a quote and a backslash: both must be escaped in label values


def write_config(tmp_path: Path, good: str, **extra: str) -> Path:
    """Listener ODD_NAME to `good`, listener `bad` to a server that refuses, admin HTTP on a free port."""
    path = tmp_path / "pairproxy.yaml"
    text = f"""\
        admin:
          http: "127.0.0.1:0"
        upstreams:
          app: {{servers: ["{good}"]}}
          gone: {{servers: ["127.0.0.1:{free_port()}"], retries: 0}}
        listeners:
          - {{name: '{ODD_NAME}', listen: "127.0.0.1:0", upstream: app}}
          - {{name: bad, listen: "127.0.0.1:0", upstream: gone}}
        """
    path.write_text(textwrap.dedent(text) + "".join(extra.values()))
    return path


@pytest.fixture
def served(tmp_path, start_proxy, start_upstream):
    """(proxy, admin address, the odd listener's address, bad listener's address, the good server)."""
    good = start_upstream(echo_handler)
    proxy = start_proxy("run", "-c", str(write_config(tmp_path, good.address)), wait_listening=2)
    return proxy, admin_address(proxy), proxy.listener_address(ODD_NAME), proxy.listener_address("bad"), good


def test_metrics_count_the_traffic_sent(served):
    proxy, admin, web, bad, good = served
    payloads = [b"x" * (1000 * n) for n in range(1, 6)]
    for payload in payloads:
        assert ask(web, payload) == payload
    with connect(bad) as client:
        assert recv_all(client) == b""
    access = proxy.wait_access(6)
    found = metrics(admin)
    sent = sum(map(len, payloads))
    assert found[("pairproxy_connections_total", labels(listener=ODD_NAME))] == 5
    assert found[("pairproxy_connections_total", labels(listener="bad"))] == 1
    assert found[("pairproxy_active_connections", labels(listener=ODD_NAME))] == 0
    assert found[("pairproxy_bytes_total", labels(listener=ODD_NAME, direction="up"))] == sent
    assert found[("pairproxy_bytes_total", labels(listener=ODD_NAME, direction="down"))] == sent
    closed = {key[1]: value for key, value in found.items() if key[0] == "pairproxy_closed_total" and value}
    logged = Counter(labels(listener=line["listener"], route="0", result=line["result"]) for line in access)
    assert closed == logged
    assert logged[labels(listener=ODD_NAME, route="0", result="closed")] == 5
    app = labels(upstream="app", server=good.address)
    assert found[("pairproxy_server_up", app)] == 1
    assert found[("pairproxy_server_connections_total", app)] == 5
    assert found[("pairproxy_server_connect_failures_total", app)] == 0
    assert found[("pairproxy_server_connect_seconds_count", app)] == 5
    assert found[("pairproxy_server_connect_seconds_bucket", tuple(sorted((*app, ("le", "+Inf")))))] == 5
    assert 0 < found[("pairproxy_server_connect_seconds_sum", app)] < 5
    gone = [
        key for key in found if key[0] == "pairproxy_server_connect_failures_total" and ("upstream", "gone") in key[1]
    ]
    assert [found[key] for key in gone] == [1]
    assert found[("pairproxy_reloads_total", ())] == 0
    assert found[("process_open_fds", ())] > 0
    assert found[("process_resident_memory_bytes", ())] > 1_000_000


def test_ready_answers_503_while_draining_an_open_connection(served):
    proxy, admin, web, _bad, _good = served
    assert http(admin, "/ready")[::2] == (200, b"ready\n")
    with connect(web) as client:
        client.sendall(b"before")
        assert recv_exactly(client, 6) == b"before"
        status, _, body = http(admin, "/conns")
        assert status == 200
        conns = json.loads(body)["conns"]
        assert [(conn["listener"], conn["client"]) for conn in conns] == [
            (ODD_NAME, f"127.0.0.1:{client.getsockname()[1]}")
        ]
        proxy.send_signal(signal.SIGTERM)
        proxy.wait_for("draining")
        assert http(admin, "/ready")[::2] == (503, b"draining\n")
        assert http(admin, "/ready", "HEAD")[0] == 503
        client.sendall(b"after")  # the open connection is still served
        assert recv_exactly(client, 5) == b"after"
    assert proxy.proc.wait(WAIT) == 0


def test_wrong_requests_get_their_status(served):
    _proxy, admin, _web, _bad, _good = served
    status, headers, _ = http(admin, "/metrics", "POST")
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    assert http(admin, "/nowhere")[0] == 404
    status, headers, body = http(admin, "/ready", "HEAD")
    assert (status, headers["content-length"], body) == (200, "6", b"")
    big = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    assert http(admin, "", raw=big)[0] == 431
    assert http(admin, "", raw=b"\x16\x03\x01 hello\r\n\r\n")[0] == 400


def _flood(address, size: int, outcome: list) -> None:
    """Send a request head of `size` bytes that never ends; note what came back."""
    try:
        with connect(address) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nX-Flood: ")
            block = b"a" * 65536
            for _ in range(size // len(block)):
                sock.sendall(block)
            outcome.append(recv_all(sock)[:12])
    except OSError as exc:  # the proxy answered 431 and closed: a reset may come first
        outcome.append(exc)


def _deaf_client(address, request: bytes) -> socket.socket:
    """A client with a tiny receive window that sends `request` and then reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # before connect: the window follows
    sock.settimeout(WAIT)
    sock.connect(address)
    sock.sendall(request)
    return sock


def test_hostile_admin_clients_stall_nothing(served):
    _proxy, admin, web, _bad, _good = served
    held = []  # open connections, so that /conns is far larger than the deaf client's window
    try:
        for _ in range(HELD):
            client = connect(web)
            held.append(client)
            client.sendall(b".")
            assert recv_exactly(client, 1) == b"."
        _hostile_clients_meanwhile(admin, web)
    finally:
        for client in held:
            client.close()


HELD = 200


def _hostile_clients_meanwhile(admin, web) -> None:
    flood: list = []
    flooder = threading.Thread(target=_flood, args=(admin, 10 * 1024 * 1024, flood), daemon=True)
    flooder.start()
    deaf = _deaf_client(admin, b"GET /conns HTTP/1.1\r\n\r\n")
    slow = connect(admin)  # never finishes its head, however long it trickles
    slow.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
    started = time.monotonic()
    trickling = _trickle(slow)
    try:
        payload = os.urandom(4 * 1024 * 1024)
        assert ask(web, payload) == payload  # the data path goes on meanwhile
        assert http(admin, "/ready")[::2] == (200, b"ready\n")  # and so do other admin clients
        assert time.monotonic() - started < WAIT
        flooder.join(WAIT)
        assert not flooder.is_alive()
        assert flood and (isinstance(flood[0], OSError) or flood[0].startswith(b"HTTP/1.1 431"))
        # The deaf client's answer did not fit its window: it waited (in the kernel's send buffer
        # here, which on loopback holds megabytes; past that in the proxy), and arrives whole.
        waiting = int.from_bytes(fcntl.ioctl(deaf, termios.FIONREAD, b"\0\0\0\0"), "little")
        answer = recv_all(deaf)
        assert waiting < len(answer) // 2
        assert len(json.loads(answer.partition(b"\r\n\r\n")[2])["conns"]) == HELD
        # The one that never finished its head gets 408 at the head's deadline, trickle or not.
        slow.settimeout(12)
        assert slow.recv(100).startswith(b"HTTP/1.1 408 ")
        assert 4 < time.monotonic() - started < 9
    finally:
        trickling.set()
        deaf.close()
        slow.close()
    assert http(admin, "/ready")[0] == 200


def _trickle(sock: socket.socket, interval: float = 0.5) -> threading.Event:
    """Send one more header byte every `interval` until the returned event is set or a send fails."""
    done = threading.Event()

    def trickle() -> None:
        while not done.wait(interval):
            try:
                sock.send(b"a")
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    return done


def _ended(sock: socket.socket) -> bool:
    """Whether the proxy closed `sock` (an end of stream, or a reset for input it never read)."""
    sock.settimeout(WAIT)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def _answers(address, path: str) -> tuple[int, bytes] | OSError:
    """(status, body), or the error of a connection closed at accept."""
    try:
        return http(address, path)[::2]
    except OSError as exc:
        return exc


def test_a_full_house_of_unfinished_heads_makes_room_for_a_new_client(served):
    """MAX_CLIENTS clients that never finish their heads: a probe is served once they have been
    at it for a second, and the oldest of them is shed to make room for it (before, the probe
    itself is closed: they might be a flood that came in after a probe not read yet)."""
    _proxy, admin, _web, _bad, _good = served
    unfinished = []
    try:
        for _ in range(MAX_CLIENTS):
            sock = connect(admin)
            unfinished.append(sock)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        assert wait_until(lambda: _answers(admin, "/ready") == (200, b"ready\n"))
        assert _ended(unfinished[0])
        unfinished[-1].sendall(b"a\r\n\r\n")  # the newest kept its place
        assert recv_all(unfinished[-1]).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in unfinished:
            sock.close()


def test_the_status_page_in_a_real_browser(served, tmp_path):
    """What an operator's browser shows: the listeners, the servers and their states."""
    browser = required_tool("chromium", "chromium-browser")
    proxy, admin, web, _bad, good = served
    with connect(web) as client:  # one live connection to list
        client_address = f"127.0.0.1:{client.getsockname()[1]}"
        client.sendall(b"hi")
        assert recv_exactly(client, 2) == b"hi"
        with connect(proxy.listener_address("bad")) as refused:
            assert recv_all(refused) == b""
        assert wait_until(lambda: "connect_failed" in proxy.log_text())
        dom = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium'}",
                "--dump-dom",
                f"http://{admin[0]}:{admin[1]}/status",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert dom.returncode == 0, dom.stderr
    page = dom.stdout
    assert "<script" not in page
    assert "we&quot;b\\1" in page or 'we"b\\1' in page
    assert good.address in page and "bad" in page
    assert "UP" in page
    assert client_address in page


def test_an_admin_port_in_use_stops_the_start(tmp_path, start_upstream):
    good = start_upstream(echo_handler)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(tmp_path, good.address)
        path.write_text(path.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"', 1))
        result = run_cli(["run", "-c", str(path)])
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"pairproxy: admin http: cannot listen on 127.0.0.1:{port}: address already in use"
    assert " listening " not in result.stderr


def test_an_answer_larger_than_the_socket_buffers_never_blocks_the_loop():
    """In process, on a socketpair with a small send buffer: the loop goes on while the client
    does not read, and the answer arrives whole once it does."""
    conns = 2000
    big = snapshot(conns=conns)
    log = EventLog(stream=io.StringIO())
    reactor = Reactor(log)
    admin = AdminHttp(reactor, log, Address("127.0.0.1", 0), lambda: big, lambda: None)
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    theirs.settimeout(WAIT)
    admin.accept(ours, ("local", 0))
    theirs.sendall(b"GET /conns HTTP/1.1\r\n\r\n")
    reading = threading.Event()
    alive_before_reading: list[bool] = []
    received: list[bytes] = []

    def reader() -> None:
        time.sleep(1.0)
        reading.set()
        received.append(recv_all(theirs))
        reactor.call_soon_threadsafe(reactor.stop)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    reactor.call_later(0.3, lambda: alive_before_reading.append(not reading.is_set()))
    reactor.call_later(WAIT, reactor.stop)
    try:
        reactor.loop()
        thread.join(WAIT)
    finally:
        admin.close()
        reactor.close()
        theirs.close()
    assert alive_before_reading == [True]
    head, _, body = received[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and len(body) > 100 * 4096
    assert len(json.loads(body)["conns"]) == conns


def _in_process(snapshot, *requests: bytes) -> tuple[list[bytes], str]:
    """Each of `requests` sent to an AdminHttp in this process (on a socketpair) over `snapshot`:
    (the answers, what it logged)."""
    logged = io.StringIO()
    log = EventLog(stream=logged)
    reactor = Reactor(log)
    admin = AdminHttp(reactor, log, Address("127.0.0.1", 0), snapshot, lambda: None)
    clients = []
    for request in requests:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.settimeout(WAIT)
        admin.accept(ours, ("local", 0))
        theirs.sendall(request)
        clients.append(theirs)
    answers: list[bytes] = []

    def reader() -> None:
        answers.extend(recv_all(client) for client in clients)
        reactor.call_soon_threadsafe(reactor.stop)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    reactor.call_later(WAIT, reactor.stop)
    try:
        reactor.loop()
        thread.join(WAIT)
    finally:
        admin.close()
        reactor.close()
        for client in clients:
            client.close()
    return answers, logged.getvalue()


def test_a_bug_behind_a_page_is_a_logged_500_and_a_refusal_a_503():
    def merged_wrongly():
        return Later.of(snapshot()).then(lambda _snapshot: int("not a count"))

    def refused():
        later = Later()
        later.refuse(CommandError("worker 1: cannot take a snapshot"))
        return later

    answers, logged = _in_process(merged_wrongly, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert answers[0].startswith(b"HTTP/1.1 500 ") and answers[0].endswith(b"\r\n\r\ninternal error\n")
    assert [line for line in logged.splitlines() if " admin_failed " in line and "not a count" in line]
    answers, logged = _in_process(refused, b"GET /status HTTP/1.1\r\n\r\n")
    assert answers[0].startswith(b"HTTP/1.1 503 ") and answers[0].endswith(b"worker 1: cannot take a snapshot\n")
    assert " ERROR " not in logged


def test_a_flood_of_new_connections_does_not_shed_a_probe():
    """A probe's whole request, then more than MAX_CLIENTS connections accepted before the loop
    reads it: the probe is answered; the newcomers past the house are closed, since nobody has
    been sending a head for long enough to be shed for them."""
    log = EventLog(stream=io.StringIO())
    reactor = Reactor(log)
    admin = AdminHttp(reactor, log, Address("127.0.0.1", 0), snapshot, lambda: None)
    ours, probe = socket.socketpair()
    ours.setblocking(False)
    probe.settimeout(WAIT)
    probe.sendall(b"GET /ready HTTP/1.1\r\n\r\n")
    admin.accept(ours, ("local", 0))
    flood = []
    for _ in range(MAX_CLIENTS + 10):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.settimeout(WAIT)
        flood.append(theirs)
        admin.accept(ours, ("local", 0))
    answered: list[bytes] = []

    def reader() -> None:
        answered.append(recv_all(probe))
        reactor.call_soon_threadsafe(reactor.stop)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    reactor.call_later(WAIT, reactor.stop)
    try:
        reactor.loop()
        thread.join(WAIT)
        assert flood[-1].recv(1) == b""  # a newcomer past the house, closed at once
    finally:
        admin.close()
        reactor.close()
        for sock in (probe, *flood):
            sock.close()
    assert answered[0].startswith(b"HTTP/1.1 200 ") and answered[0].endswith(b"ready\n")
