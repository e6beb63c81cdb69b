"""End to end: the admin socket and the HTTP admin of `run --workers 2`, served by the supervisor
for the whole process tree (each worker asked over its own pair), and what an operator changes
there reaching every worker (servers added, removed and weighed at run time among it)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from proxy.admin import workers as supervisor_side
from proxy.admin.worker_pair import WorkerAdminPair, frame
from proxy.admin.workers import ASK_TIMEOUT, Workers
from proxy.log import EventLog
from proxy.loop.reactor import Reactor
from tests.support import (
    WAIT,
    admin_address,
    ask,
    connect,
    ctl,
    echo_handler,
    http,
    labels,
    logfmt,
    metrics,
    ok,
    recv_exactly,
    run_cli,
    snapshot,
    tagged,
    wait_until,
    write,
)

WORKERS = 2


@pytest.fixture
def tree(tmp_path, start_proxy, start_upstream):
    """start(*servers) -> (proxy, admin socket path, HTTP admin address): listener `web` over
    upstream `app` (round robin over `servers`, an echo server if none), `run --workers 2`."""

    def start(*servers: str, grace: float = 10.0):
        if not servers:
            servers = (start_upstream(echo_handler).address,)
        listed = ", ".join(f'"{address}"' for address in servers)
        path = write(
            tmp_path,
            f"""\
            admin: {{socket: admin.sock, http: "127.0.0.1:0"}}
            defaults: {{shutdown_grace: {grace}s}}
            upstreams:
              app: {{balance: round_robin, servers: [{listed}]}}
            listeners:
              - {{name: web, listen: "127.0.0.1:0", upstream: app}}
            """,
        )
        proxy = start_proxy("run", "-c", str(path), "--workers", str(WORKERS), wait_listening=WORKERS)
        return proxy, tmp_path / "admin.sock", admin_address(proxy)

    return start


def conns(sock_path) -> list[dict[str, str]]:
    return [logfmt(line) for line in ok(sock_path, "show", "conns").splitlines()]


def worker_pids(proxy) -> dict[int, int]:
    # The supervisor's worker_started lines may come after the workers' own listening lines.
    proxy.wait_for(lambda _line: proxy.log_text().count(" worker_started ") >= WORKERS)
    started = [logfmt(line) for line in proxy.lines if " worker_started " in line]
    return {int(each["worker"]): int(each["pid"]) for each in started}


def open_in_every_worker(proxy, sock_path, count: int = 40) -> dict[str, socket.socket]:
    """`count` relaying clients, by their address as `show conns` gives it; SO_REUSEPORT spreads
    them by hash, so `count` is enough for every worker to have some."""
    clients = {}
    for _ in range(count):
        client = connect(proxy.address)
        client.sendall(b"hi")
        assert recv_exactly(client, 2) == b"hi"
        host, port = client.getsockname()
        clients[f"{host}:{port}"] = client
    assert {row["worker"] for row in conns(sock_path)} == {str(index) for index in range(WORKERS)}
    return clients


def test_metrics_count_the_traffic_of_every_worker(tree, start_upstream):
    upstream = start_upstream(echo_handler).address
    proxy, sock_path, address = tree(upstream)
    for index in range(20):
        assert ask(proxy.address, b"x" * (index + 1)) == b"x" * (index + 1)
    proxy.wait_access(20)
    found = metrics(address)
    sent = sum(range(1, 21))
    assert found[("pairproxy_connections_total", labels(listener="web"))] == 20
    assert found[("pairproxy_bytes_total", labels(listener="web", direction="up"))] == sent
    assert found[("pairproxy_bytes_total", labels(listener="web", direction="down"))] == sent
    assert found[("pairproxy_closed_total", labels(listener="web", route="0", result="closed"))] == 20
    assert found[("pairproxy_server_connect_seconds_count", labels(upstream="app", server=upstream))] == 20
    assert found[("pairproxy_server_connections_total", labels(upstream="app", server=upstream))] == 20
    assert found[("pairproxy_workers_missing", ())] == 0
    assert found[("pairproxy_active_connections", labels(listener="web"))] == 0
    info = dict(line.split(": ", 1) for line in ok(sock_path, "show", "info").splitlines())
    assert (info["pid"], info["workers"], info["missing_workers"]) == (str(proxy.pid), "2", "0")
    assert len(worker_pids(proxy)) == WORKERS


def test_show_conns_and_conns_cover_both_workers_and_kill_conn_reaches_either(tree):
    proxy, sock_path, address = tree()
    clients = open_in_every_worker(proxy, sock_path)
    rows = conns(sock_path)
    assert sorted(row["client"] for row in rows) == sorted(clients)
    status, _headers, body = http(address, "/conns")
    assert status == 200
    assert {row["worker"] for row in json.loads(body)["conns"]} == set(range(WORKERS))
    assert ok(sock_path, "dump", "on", "listener=web") == f"{len(clients)} open connections dumped; 1 run-time rules\n"
    assert ok(sock_path, "dump", "off", "listener=web").startswith(f"{len(clients)} open connections no longer")
    done = ctl(sock_path, "dump", "on", "colour=red")
    assert done.returncode == 1 and "unknown dump filter key 'colour'" in done.stderr
    for worker in map(str, range(WORKERS)):
        row = next(row for row in rows if row["worker"] == worker)
        assert ok(sock_path, "kill", "conn", row["conn"]) == "ok\n"
        client = clients.pop(row["client"])
        client.settimeout(WAIT)
        assert client.recv(16) == b""  # closed by the worker that had it
        client.close()
    assert sorted(row["client"] for row in conns(sock_path)) == sorted(clients)
    done = ctl(sock_path, "kill", "conn", "99999")
    assert (done.returncode, done.stderr) == (1, "pairproxy: no open connection 99999\n")
    for client in clients.values():
        client.close()


def test_a_disabled_server_gets_no_new_connection_from_any_worker(tree, start_upstream):
    one, two = start_upstream(tagged(b"one:")), start_upstream(tagged(b"two:"))
    proxy, sock_path, _address = tree(one.address, two.address)

    def tags(count: int) -> set[bytes]:
        found = set()
        for _ in range(count):
            with connect(proxy.address) as client:
                found.add(recv_exactly(client, 4))
        return found

    assert ok(sock_path, "disable", "server", "app", one.address) == "ok\n"
    assert tags(20) == {b"two:"}
    states = {logfmt(line)["server"]: logfmt(line)["state"] for line in ok(sock_path, "show", "servers").splitlines()}
    assert states == {one.address: "maint", two.address: "up"}
    assert ok(sock_path, "enable", "server", "app", one.address) == "ok\n"
    assert tags(20) == {b"one:", b"two:"}
    done = ctl(sock_path, "disable", "server", "app", "127.0.0.1:1")
    assert (done.returncode, done.stderr) == (1, "pairproxy: no server 127.0.0.1:1 in upstream app\n")
    assert ok(sock_path, "reload") == "ok\n"
    assert wait_until(lambda: proxy.log_text().count(" reloaded ") == WORKERS)


def test_faults_added_through_the_supervisor_reach_every_worker(tree):
    proxy, sock_path, _address = tree()

    def slowest_round_trip(count: int) -> float:
        slowest = 0.0
        for _ in range(count):
            start = time.monotonic()
            with connect(proxy.address) as client:
                client.sendall(b"ping")
                assert recv_exactly(client, 4) == b"ping"
            slowest = max(slowest, time.monotonic() - start)
        return slowest

    assert (
        ok(sock_path, "fault", "add", "web", "latency:latency=300ms")
        == "web: added latency:latency=300ms,jitter=0ms,stream=downstream\n"
    )
    assert ok(sock_path, "fault", "list") == "web: latency:latency=300ms,jitter=0ms,stream=downstream\n"
    start = time.monotonic()
    assert slowest_round_trip(10) >= 0.25
    assert time.monotonic() - start >= 10 * 0.25, "every connection, whichever worker took it, got the toxic"
    assert ok(sock_path, "fault", "remove", "web", "latency") == "web: removed 1 latency fault\n"
    assert slowest_round_trip(10) < 0.25
    refused = ctl(sock_path, "fault", "add", "web", "latncy:latency=1s")
    assert refused.returncode == 1 and "did you mean 'latency'" in refused.stderr


def test_a_restarted_worker_keeps_what_the_operator_changed(tree, start_upstream):
    one, two = start_upstream(tagged(b"one:")), start_upstream(tagged(b"two:"))
    proxy, sock_path, _address = tree(one.address, two.address)
    assert ok(sock_path, "disable", "server", "app", one.address) == "ok\n"
    os.kill(worker_pids(proxy)[1], signal.SIGKILL)
    proxy.wait_for(lambda _line: proxy.log_text().count(" listening ") == WORKERS + 1)
    found = set()
    for _ in range(20):
        with connect(proxy.address) as client:
            found.add(recv_exactly(client, 4))
    assert found == {b"two:"}
    states = [logfmt(line)["state"] for line in ok(sock_path, "show", "servers").splitlines()]
    assert states == ["maint", "up"]


def test_reload_answers_the_problems_the_supervisor_found(tree, tmp_path):
    _proxy, sock_path, _address = tree()
    (tmp_path / "pairproxy.yaml").write_text("listeners: [}\n")
    done = ctl(sock_path, "reload")
    assert done.returncode == 1 and done.stderr.startswith("pairproxy: ") and "pairproxy.yaml:1:" in done.stderr


def test_a_live_admin_socket_stops_the_start_of_workers(tmp_path, tree):
    _proxy, sock_path, _address = tree()
    config = write(
        tmp_path,
        f"""\
        admin: {{socket: {sock_path}}}
        listeners:
          - {{listen: "127.0.0.1:0", upstream: "127.0.0.1:1"}}
        """,
        name="second.yaml",
    )
    result = run_cli(["run", "-c", str(config), "--workers", "2"])
    assert result.returncode == 1
    refused = f"pairproxy: admin socket {sock_path}: another process is serving on it"
    assert result.stderr.strip().splitlines()[-1] == refused
    assert " worker_started " not in result.stderr
    assert sock_path.exists()  # still the first one's


def test_a_worker_sends_a_large_answer_without_blocking_its_loop():
    """In process, on a socketpair with a small send buffer, the worker's loop and the supervisor's
    on two threads: the worker's loop goes on while the supervisor has not read its answer, and a
    late answer is told apart from the next one's."""
    big = snapshot(conns=2000)
    log = EventLog(stream=io.StringIO())
    reactor, supervising = Reactor(log), Reactor(log)
    server = SimpleNamespace(reactor=reactor, log=log, snapshot=lambda: big, kill_conn=lambda conn: conn == 7)
    worker_end, supervisor_end = socket.socketpair()
    worker_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    pair = WorkerAdminPair(server, worker_end)
    workers = Workers(supervising, 1, log, lambda: [], lambda: False)
    workers.add(0, supervisor_end)
    ticks: list[float] = []
    results: list[object] = []
    reading: list[float] = []

    def ask() -> None:
        def merged(snapshot: dict) -> None:
            results.append(snapshot)
            supervising.stop()

        workers.kill_conn(7).then(results.append)
        workers.snapshot().then(merged)

    def supervisor() -> None:
        workers.channels[0].send(frame({"id": 99, "op": "snapshot"}))  # asked, then not read for a while
        time.sleep(1.0)
        reading.append(time.monotonic())
        supervising.call_soon(ask)
        supervising.call_later(WAIT, supervising.stop)
        supervising.loop()
        reactor.call_soon_threadsafe(reactor.stop)

    def tick() -> None:
        ticks.append(time.monotonic())
        reactor.call_later(0.1, tick)

    thread = threading.Thread(target=supervisor, daemon=True)
    thread.start()
    reactor.call_soon(tick)
    reactor.call_later(WAIT, reactor.stop)
    try:
        reactor.loop()
        thread.join(WAIT)
    finally:
        pair.close()
        workers.remove(0)
        reactor.close()
        supervising.close()
    assert len([tick for tick in ticks if tick < reading[0]]) >= 3  # the loop went on while the answer waited
    killed, merged = results
    assert killed is True
    assert len(merged["conns"]) == 2000 and {row["worker"] for row in merged["conns"]} == {0}
    assert merged["info"]["missing_workers"] == 0


def test_a_stopped_worker_is_left_out_within_the_bound(tree):
    proxy, sock_path, address = tree()
    clients = open_in_every_worker(proxy, sock_path)
    stopped = worker_pids(proxy)[1]
    os.kill(stopped, signal.SIGSTOP)
    try:
        began = time.monotonic()
        info = dict(line.split(": ", 1) for line in ok(sock_path, "show", "info").splitlines())
        assert time.monotonic() - began < 2.0 + 5.0  # the bound, and the time `ctl` takes to start
        assert info["missing_workers"] == "1"
        assert {row["worker"] for row in conns(sock_path)} == {"0"}
        assert metrics(address)[("pairproxy_workers_missing", ())] == 1
    finally:
        os.kill(stopped, signal.SIGCONT)
    # Its late answers to the questions it missed are told apart from the answer to this one.
    assert wait_until(lambda: "missing_workers: 0" in ok(sock_path, "show", "info"))
    assert sorted(row["client"] for row in conns(sock_path)) == sorted(clients)
    for client in clients.values():
        client.close()


@contextmanager
def stopped(*pids: int) -> Iterator[None]:
    """The workers `pids` stopped with SIGSTOP for the block, and always continued after it."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def timed(action) -> tuple[float, object]:
    began = time.monotonic()
    result = action()
    return time.monotonic() - began, result


def test_concurrent_scrapes_wait_for_a_stopped_worker_together_and_ready_waits_for_none(tree):
    proxy, _sock_path, address = tree()
    with stopped(worker_pids(proxy)[1]):
        scrapes: list[tuple[float, object]] = []

        def scrape() -> None:
            try:
                scrapes.append(timed(lambda: metrics(address)[("pairproxy_workers_missing", ())]))
            except OSError as exc:
                scrapes.append((WAIT, exc))

        threads = [threading.Thread(target=scrape, daemon=True) for _ in range(5)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # the scrapes are waiting for the stopped worker
        took, (status, _headers, _body) = timed(lambda: http(address, "/ready"))
        assert (status, took < 1.0) == (200, True)
        for thread in threads:
            thread.join(2 * WAIT)
        assert [missing for _took, missing in scrapes] == [1] * 5
        assert max(took for took, _missing in scrapes) < ASK_TIMEOUT + 2.0  # each the deadline, not 2, 4, 6, 8, 10 s
        # The worker missed its deadline: it is not waited for again before a back-off.
        took, found = timed(lambda: metrics(address))
        assert (found[("pairproxy_workers_missing", ())], took < 1.0) == (1, True)


def test_ready_is_503_while_no_worker_answers(tree):
    proxy, _sock_path, address = tree()
    with stopped(*worker_pids(proxy).values()):
        answers = []

        def ready() -> bool:
            answers.append(timed(lambda: http(address, "/ready")[::2]))
            return answers[-1][1] == (503, b"no worker answers\n")

        assert wait_until(ready, timeout=ASK_TIMEOUT + WAIT, interval=0.3)
        assert max(took for took, _answer in answers) < 1.0  # decided at once, never waiting
    assert wait_until(lambda: http(address, "/ready")[::2] == (200, b"ready\n"))


def test_kill_conn_of_a_stopped_worker_says_it_may_be_there(tree):
    proxy, sock_path, _address = tree()
    clients = open_in_every_worker(proxy, sock_path)
    row = next(row for row in conns(sock_path) if row["worker"] == "1")
    with stopped(worker_pids(proxy)[1]):
        done = ctl(sock_path, "kill", "conn", row["conn"])
        assert (done.returncode, done.stderr) == (
            1,
            f"pairproxy: connection {row['conn']} may be on a worker that did not answer (worker 1)\n",
        )
    # The command was passed on all the same: the worker ends it once it reads it.
    client = clients.pop(row["client"])
    client.settimeout(WAIT)
    assert client.recv(16) == b""
    client.close()
    for client in clients.values():
        client.close()


def test_ready_until_the_supervisor_stops_and_the_socket_file_is_removed(tree):
    proxy, sock_path, address = tree()
    assert http(address, "/ready")[0] == 200
    with connect(proxy.address) as held:  # the workers drain it for the grace: the supervisor still answers
        held.sendall(b"hi")
        assert recv_exactly(held, 2) == b"hi"
        proxy.send_signal(signal.SIGTERM)
        assert wait_until(lambda: http(address, "/ready")[0] == 503)
        assert "draining: true" in ok(sock_path, "show", "info")
    assert proxy.stop() == 0
    assert not sock_path.exists()


def test_a_client_that_resets_while_its_answer_is_awaited_leaves_no_error(tree):
    """A scraper gives up (a reset) while the supervisor waits for a stopped worker: its answer,
    when it comes, finds the peer gone, and that is no error of the proxy's."""
    proxy, _sock_path, address = tree()
    with stopped(worker_pids(proxy)[1]):
        gone = connect(address)
        gone.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        time.sleep(0.3)  # the head is read: its answer waits for the stopped worker
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()  # a reset, before the deadline
        assert metrics(address)[("pairproxy_workers_missing", ())] == 1  # answered after that deadline
    assert http(address, "/ready")[0] in (200, 503)  # one more pass of the loop, for the log
    time.sleep(0.3)
    assert " ERROR " not in proxy.log_text(), proxy.log_text()


def test_concurrent_snapshots_share_one_ask(monkeypatch):
    """Ten scrapes at once while worker 1 is stopped (its end of the pair never read): each worker
    is asked for one snapshot, not ten, and every scrape gets the one merged answer."""
    monkeypatch.setattr(supervisor_side, "ASK_TIMEOUT", 0.3)
    log = EventLog(stream=io.StringIO())
    reactor = Reactor(log)
    taken: list[int] = []

    def take_snapshot() -> dict:
        taken.append(1)
        return snapshot(conns=3)

    server = SimpleNamespace(reactor=reactor, log=log, snapshot=take_snapshot)
    answering, stopped_end = socket.socketpair(), socket.socketpair()
    pair = WorkerAdminPair(server, answering[0])
    workers = Workers(reactor, 2, log, lambda: [], lambda: False)
    workers.add(0, answering[1])
    workers.add(1, stopped_end[1])
    merged: list[dict] = []
    for _ in range(10):
        workers.snapshot().then(merged.append)
    reactor.call_later(WAIT, reactor.stop)
    reactor.call_later(0.5, reactor.stop)
    try:
        reactor.loop()
        stopped_end[0].setblocking(False)
        unread = stopped_end[0].recv(1024 * 1024)
    finally:
        pair.close()
        workers.remove(0)
        workers.remove(1)
        stopped_end[0].close()
        reactor.close()
    assert unread.count(b'"op":"snapshot"') == 1
    assert len(taken) == 1
    assert len(merged) == 10 and all(each is merged[0] for each in merged)
    assert merged[0]["info"]["missing_workers"] == 1 and len(merged[0]["conns"]) == 3


def test_a_change_no_worker_answered_is_queued_and_kept_for_a_restart(tree, start_upstream):
    """Every worker stopped: `disable server` is sent all the same, so it says so (queued, not 'no
    server') and is kept for a worker that starts again; a server the table does not have is
    still refused, and `fault add` says it was queued too."""
    one, two = start_upstream(tagged(b"one:")), start_upstream(tagged(b"two:"))
    proxy, sock_path, _address = tree(one.address, two.address)
    pids = worker_pids(proxy)
    queued = "queued for worker 0, 1, which did not answer\n"
    with stopped(*pids.values()):
        done = ctl(sock_path, "disable", "server", "app", one.address)
        assert (done.returncode, done.stdout, done.stderr) == (0, queued, "")
        done = ctl(sock_path, "disable", "server", "app", "127.0.0.1:1")
        assert (done.returncode, done.stderr) == (1, "pairproxy: no server 127.0.0.1:1 in upstream app\n")
        done = ctl(sock_path, "fault", "add", "web", "latency:latency=1ms")
        assert (done.returncode, done.stdout) == (0, queued)
    os.kill(pids[1], signal.SIGKILL)
    proxy.wait_for(lambda _line: proxy.log_text().count(" listening ") == WORKERS + 1)
    found = set()
    for _ in range(20):
        with connect(proxy.address) as client:
            found.add(recv_exactly(client, 4))
    assert found == {b"two:"}  # the worker that was stopped applied it, the restarted one was told it


# -- servers added, removed and weighed at run time ---------------------------------------


def _tags(proxy, count: int) -> Counter:
    found = Counter()
    for _ in range(count):
        with connect(proxy.address) as client:
            found[recv_exactly(client, 4)] += 1
    return found


def _servers(sock_path) -> list[str]:
    return [logfmt(line)["server"] for line in ok(sock_path, "show", "servers").splitlines()]


def test_a_server_added_weighed_and_removed_at_run_time_in_every_worker(tree, start_upstream):
    one, two = start_upstream(tagged(b"one:")), start_upstream(tagged(b"two:"))
    proxy, sock_path, address = tree(one.address)
    assert ok(sock_path, "add", "server", "app", two.address, "weight", "3") == "ok\n"
    assert _servers(sock_path) == [one.address, two.address]
    assert metrics(address)[("pairproxy_server_up", labels(upstream="app", server=two.address))] == 1
    found = _tags(proxy, 40)
    assert 4 <= found[b"one:"] <= 16 and found[b"two:"] == 40 - found[b"one:"], found  # 1:3 in each worker
    assert ok(sock_path, "set", "server", "app", two.address, "weight", "1") == "ok\n"
    staying = connect(proxy.address)
    for _ in range(20):  # a connection open on `two` when it is removed (one in two goes there)
        if recv_exactly(staying, 4) == b"two:":
            break
        staying.close()
        staying = connect(proxy.address)
    with staying:
        assert ok(sock_path, "del", "server", "app", two.address) == "ok\n"
        assert _tags(proxy, 10) == {b"one:": 10}
        staying.sendall(b"still")
        assert recv_exactly(staying, 5) == b"still"
    assert _servers(sock_path) == [one.address]


def test_a_restarted_worker_is_told_the_servers_changed(tree, start_upstream):
    one, two = start_upstream(tagged(b"one:")), start_upstream(tagged(b"two:"))
    proxy, sock_path, _address = tree(one.address)
    assert ok(sock_path, "add", "server", "app", two.address) == "ok\n"
    assert ok(sock_path, "del", "server", "app", one.address) == "ok\n"
    os.kill(worker_pids(proxy)[1], signal.SIGKILL)
    proxy.wait_for(lambda _line: proxy.log_text().count(" listening ") == WORKERS + 1)
    assert _tags(proxy, 20) == {b"two:": 20}


def test_a_reload_drops_the_run_time_servers_and_says_which_unless_it_keeps_them(tree, start_upstream):
    one, two = start_upstream(tagged(b"one:")), start_upstream(tagged(b"two:"))
    proxy, sock_path, _address = tree(one.address)
    ok(sock_path, "add", "server", "app", two.address, "backup")
    assert ok(sock_path, "reload") == f"ok\ndropped: add server app {two.address} weight 1 backup\n"
    assert wait_until(lambda: _servers(sock_path) == [one.address])
    assert proxy.wait_for(" runtime_dropped ")
    ok(sock_path, "add", "server", "app", two.address)
    assert ok(sock_path, "reload", "--keep-runtime") == "ok\n"
    assert wait_until(lambda: proxy.log_text().count(" reloaded ") == 2 * WORKERS)
    assert _servers(sock_path) == [one.address, two.address]


def test_a_sighup_drops_the_run_time_servers_for_a_worker_restarted_later_too(tree, start_upstream):
    one, two = start_upstream(tagged(b"one:")), start_upstream(tagged(b"two:"))
    proxy, sock_path, _address = tree(one.address)
    assert ok(sock_path, "add", "server", "app", two.address) == "ok\n"
    proxy.proc.send_signal(signal.SIGHUP)  # a reload without --keep-runtime
    assert wait_until(lambda: proxy.log_text().count(" reloaded ") == WORKERS)
    assert _servers(sock_path) == [one.address]
    os.kill(worker_pids(proxy)[1], signal.SIGKILL)
    proxy.wait_for(lambda _line: proxy.log_text().count(" listening ") == WORKERS + 1)
    assert _servers(sock_path) == [one.address]
    assert _tags(proxy, 20) == {b"one:": 20}
