"""The fault-injection soak: everything an operator and bad luck can do, at once, for a while.

One `pairproxy run` serves a listener per toxic (latency, bandwidth, slicer, slow_close, timeout,
reset_peer, limit_data, and a slicer and a bandwidth at their stingiest), a plain one, one with
a rotating capture and a probe's, over two `pairproxy echo` servers. A pool of clients makes a
few hundred connections through them, beside a hundred held open, while an operator thread
turns the hex dump on and off, adds and removes toxics, kills connections, takes a server out
of service and back, reads every admin HTTP page and reloads (SIGHUP and `reload`), and a probe
sends one byte every 20 ms through its own plain listener and times the echo. Afterwards the
proxy must have written one access line for every connection (matched by client port), logged
no error, closed each connection it dumped once in the dump, kept its capture files whole,
hold the descriptors it held before, have stayed near the memory it started with, and its loop
must never have kept the probe waiting 100 ms.

Everything is bounded: the soak stops at its deadline whatever happens, and the whole test
takes about twenty seconds.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from tests.support import (
    WAIT,
    PeakRss,
    ProxyProcess,
    admin_address,
    connect,
    http,
    logfmt,
    parse_blocks,
    pattern,
    recv_exactly,
    wait_until,
    write,
)

SOAK_DEADLINE = 60.0  # seconds: the soak ends here even if the operator has not finished
OPERATOR_ROUNDS = 3  # times the operator goes through every command
OPERATOR_PAUSE = 0.2  # seconds between two of its actions
MIN_CONNECTIONS = 300  # the clients keep going at least until this many have been made
CLIENT_THREADS = 16
CONNECTION_RATE = 40  # new connections a second: a few hundred in the soak, and a log the test reads in time
HELD = 120  # connections opened before the churn and held open through it
PROBE_INTERVAL = 0.02
STALL = 0.1  # seconds: a probe echo kept waiting this long by a busy loop means the loop stalled
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RSS_GROWTH_KIB = 30 * 1024  # above the RSS before the soak, at its peak and after it
CAPTURE_MAX = 64 * 1024
CAPTURE_KEEP = 3
SECTION_HEADER = 0x0A0D0D0A  # a pcapng file's first block

ENDS = frozenset({"closed", "shutdown"})  # an echo's results: closed, or killed by the operator


@dataclass(frozen=True)
class Kind:
    """A listener of the soak: its toxics, how its connections may end, what its clients do."""

    faults: str  # its `faults:` list, YAML; LATENCY is replaced by the latency of the load
    results: frozenset[str] = ENDS  # what its access lines may say ("shutdown": killed by the operator)
    echoes: bool = True  # its clients half-close and get their payload back whole
    churned: bool = True  # False: its clients come once, before the churn, and stay to the end
    keys: str = ""  # its other keys, YAML


KINDS = {
    "plain": Kind("[]"),
    "latency": Kind(
        "[{type: latency, latency: LATENCY, jitter: 10ms}, {type: latency, stream: upstream, latency: 5ms}]"
    ),
    "bandwidth": Kind("[{type: bandwidth, rate: 256KiB}]"),
    "slicer": Kind("[{type: slicer, average_size: 512, size_variation: 256, delay: 1ms}]"),
    "slow_close": Kind("[{type: slow_close, delay: 100ms}]"),
    "timeout": Kind("[{type: timeout, timeout: 150ms}]", frozenset({"timeout", "shutdown"}), echoes=False),
    "reset_peer": Kind("[{type: reset_peer, timeout: 50ms}]", frozenset({"reset", "shutdown"}), echoes=False),
    "limit_data": Kind("[{type: limit_data, bytes: 1000}]", frozenset({"limit", "shutdown"}), echoes=False),
    "captured": Kind("[]", keys=f"pcap: {{file: capture.pcapng, max_size: {CAPTURE_MAX}, keep: {CAPTURE_KEEP}}}"),
    # Toxics at their stingiest, one byte at a time, holding what their clients sent for the
    # whole soak: what they hold must stay within the listener's buffer_size, and cost the loop
    # nothing while it waits. Their clients give up with a reset at the end.
    "stingy_slicer": Kind(
        "[{type: slicer, stream: upstream, average_size: 1, delay: 1s}]",
        frozenset({"reset", "shutdown"}),
        echoes=False,
        churned=False,
    ),
    "stingy_bandwidth": Kind(
        "[{type: bandwidth, rate: 20}]", frozenset({"reset", "shutdown"}), echoes=False, churned=False
    ),
}
STINGY_CLIENTS = 2  # per stingy listener
STINGY_PAYLOAD = 64 * 1024


def soak_config(tmp_path: Path, servers: list[str], latency: str) -> Path:
    """The soak's route table; reloads rewrite it with another `latency` so that each one changes something."""
    listeners = "".join(
        f'  - {{name: {name}, listen: "127.0.0.1:0", upstream: echo,'
        f" faults: {kind.faults.replace('LATENCY', latency)}{', ' + kind.keys if kind.keys else ''}}}\n"
        for name, kind in KINDS.items()
    )
    return write(
        tmp_path,
        f"""\
admin: {{socket: admin.sock, http: "127.0.0.1:0"}}
dump_file: dump.txt
upstreams:
  echo: {{servers: ["{servers[0]}", "{servers[1]}"]}}
listeners:
  - {{name: probe, listen: "127.0.0.1:0", upstream: "{servers[0]}"}}
{listeners}""",
    )


@dataclass
class Visit:
    """One client connection: where it went, from which port, and what it saw."""

    listener: str
    port: int
    sent: bytes
    received: bytes = b""


PEER_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN)  # what a client sees of a reset or a kill


def exchange(client: socket.socket, listener: str, payload: bytes, half_close: bool) -> Visit:
    """Send `payload` on `client`, half-close if asked, and read until the end of stream or a reset."""
    seen = Visit(listener, client.getsockname()[1], payload)
    chunks = []
    try:
        client.sendall(payload)
        if half_close:
            client.shutdown(socket.SHUT_WR)
        while data := client.recv(65536):
            chunks.append(data)
    except OSError as exc:
        if exc.errno not in PEER_GONE:
            raise
    seen.received = b"".join(chunks)
    return seen


def visit(address: tuple[str, int], listener: str, payload: bytes, half_close: bool) -> Visit:
    """A new connection's `exchange`. A client thread the machine keeps waiting may find the
    proxy's reset (reset_peer) before its connect returns: that is a visit that saw nothing."""
    with socket.socket() as client:
        client.settimeout(WAIT)
        client.bind(("127.0.0.1", 0))  # the port stays known even if the connect fails
        try:
            client.connect(address)
        except OSError as exc:
            if exc.errno not in PEER_GONE:
                raise
            return Visit(listener, client.getsockname()[1], payload)
        return exchange(client, listener, payload, half_close)


class AdminSocket:
    """One connection to the admin socket, for many commands (a `pairproxy ctl` per command would
    cost the machine a Python start each time)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(str(path))
        self.pending = b""

    def ask(self, command: str) -> str:
        self.sock.sendall(command.encode() + b"\n")
        while b"\n\n" not in self.pending:
            data = self.sock.recv(65536)
            assert data, f"the admin socket closed before answering {command!r}"
            self.pending += data
        answer, _, self.pending = self.pending.partition(b"\n\n")
        return answer.decode()

    def close(self) -> None:
        self.sock.close()


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) process `pid` has used so far, from /proc (in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime and stime, fields 14 and 15


@dataclass(frozen=True)
class Echo:
    """One probe: when it was sent (monotonic), how long its echo took, and the CPU time the
    proxy used meanwhile."""

    at: float
    wait: float
    cpu: float

    @property
    def stall(self) -> float:
        """How long the loop kept this echo waiting while it was busy: the wait, less what the
        proxy spent waiting for a CPU (on a machine shared with other work that is most of a
        long wait, and not a stall: the loop had nothing to do with it)."""
        return min(self.wait, self.cpu)


class Probe:
    """A byte through the proxy every PROBE_INTERVAL, its echo timed along with the proxy's CPU
    time: the longest stall seen from outside. A loop that blocks in a system call without using
    the CPU (a slow disk) would escape it; one that computes, or makes system calls by the
    thousand, does not."""

    def __init__(self, address: tuple[str, int], pid: int) -> None:
        self.sock = connect(address)
        self.port = self.sock.getsockname()[1]
        self.pid = pid
        self.echoes: list[Echo] = []
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(PROBE_INTERVAL):
                started, cpu = time.monotonic(), cpu_seconds(self.pid)
                self.sock.sendall(b"p")
                assert recv_exactly(self.sock, 1) == b"p"
                self.echoes.append(Echo(started, time.monotonic() - started, cpu_seconds(self.pid) - cpu))
        except BaseException as exc:  # the test reports it
            self.failure = exc

    def longest(self) -> Echo:
        """The echo the loop kept waiting longest."""
        return max(self.echoes, key=lambda echo: echo.stall)

    def slowest(self, count: int) -> list[Echo]:
        return sorted(self.echoes, key=lambda echo: echo.wait)[-count:]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self.sock.shutdown(socket.SHUT_WR)
        assert self.sock.recv(1) == b""
        self.sock.close()


class Operator:
    """Every admin command, a reload by signal and by command, and every admin HTTP page, in turn,
    OPERATOR_ROUNDS times; each answer is checked as it comes."""

    def __init__(self, proxy: ProxyProcess, config: Path, servers: list[str], admin: AdminSocket, web) -> None:
        self.proxy, self.config, self.servers, self.admin, self.web = proxy, config, servers, admin, web
        self.done = threading.Event()
        self.failure: BaseException | None = None
        self.actions = 0
        self.kills = 0
        self.reloads = 0
        self.rng = random.Random(19)  # which connection each kill picks
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(SOAK_DEADLINE)

    def _run(self) -> None:
        try:
            for round_number in range(OPERATOR_ROUNDS):
                for action in self._round(round_number):
                    action()
                    self.actions += 1
                    time.sleep(OPERATOR_PAUSE)
        except BaseException as exc:  # the test reports it
            self.failure = exc
        finally:
            self.done.set()

    def _round(self, round_number: int) -> list[Callable[[], object]]:
        server = self.servers[round_number % 2]
        return [
            lambda: self._ok("dump on listener=latency", "dumped"),
            lambda: self._page("/metrics"),
            self._kill_one,
            lambda: self._ok("fault add plain latency:latency=5ms", "plain: added"),
            lambda: self._ok("dump on listener=captured", "dumped"),
            lambda: self._page("/status"),
            lambda: self._ok(f"disable server echo {server}", "ok"),
            lambda: self._ok("show servers", "state=maint"),
            self._kill_one,
            lambda: self._ok("fault add captured slicer:average_size=100,delay=1ms", "captured: added"),
            lambda: self._page("/conns"),
            lambda: self._ok("dump off listener=latency", "no longer dumped"),
            lambda: self._ok(f"enable server echo {server}", "ok"),
            lambda: self._ok("fault remove plain latency", "plain: removed 1"),
            lambda: self._ok("fault list", "reset_peer"),
            self._kill_one,
            lambda: self._ok("dump off listener=captured", "no longer dumped"),
            lambda: self._ok("fault remove captured slicer", "captured: removed 1"),
            lambda: self._page("/ready"),
            lambda: self._reload(by_signal=True),
            lambda: self._ok("show info", "pid: "),
            lambda: self._reload(by_signal=False),
        ]

    def _ok(self, command: str, expected: str) -> str:
        answer = self.admin.ask(command)
        assert expected in answer and not answer.startswith("error:"), f"{command!r} answered {answer!r}"
        return answer

    def _page(self, path: str) -> None:
        status, _headers, body = http(self.web, path)
        assert status == 200 and body, f"GET {path}: {status}"

    def _kill_one(self) -> None:
        rows = [logfmt(line) for line in self._ok("show conns", "").splitlines()]
        victims = [row["conn"] for row in rows if row["listener"] != "probe"]
        if victims:
            answer = self.admin.ask(f"kill conn {self.rng.choice(victims)}")
            # It may have ended between the two commands.
            assert answer == "ok" or answer.startswith("error: no open connection"), answer
            self.kills += answer == "ok"

    def _reload(self, by_signal: bool) -> None:
        self.reloads += 1
        soak_config(self.config.parent, self.servers, f"{20 + self.reloads}ms")
        before = sum(" reloaded " in line for line in self.proxy.lines)
        if by_signal:
            self.proxy.send_signal(signal.SIGHUP)
        else:
            self._ok("reload", "ok")
        self.proxy.wait_for(lambda _line: sum(" reloaded " in line for line in self.proxy.lines) > before)


def descriptors(pid: int) -> Counter[str]:
    """What the process's descriptors point at (socket:[inode] reduced to socket), counted."""
    found: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed while we looked
        found[target.split(":[")[0]] += 1
    return found


def proxy_connections(proxy: ProxyProcess) -> int:
    """The connections the proxy has open, by its admin HTTP /conns (which opens no admin socket)."""
    return len(json.loads(http(admin_address(proxy), "/conns")[2])["conns"])


def settled_descriptors(pid: int) -> Counter[str]:
    """`descriptors` once they stop changing: the closes the last clients caused have been seen."""
    last = descriptors(pid)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = descriptors(pid)
        if now == last:
            return now
        last = now
    raise AssertionError(f"the descriptors kept changing for {WAIT}s")


def payload(rng: random.Random) -> bytes:
    return pattern(rng.randrange(1024, 16 * 1024), seed=rng.randrange(1 << 16))


def open_held(address: dict[str, tuple[str, int]]) -> list[tuple[str, socket.socket]]:
    """HELD connections, each with one exchange done, spread over four kinds of listener, and
    STINGY_CLIENTS on each stingy listener, each with STINGY_PAYLOAD sent and nothing read."""
    held = []
    for index in range(HELD):
        name = ("plain", "latency", "slicer", "captured")[index % 4]
        client = connect(address[name])
        client.sendall(b"held")
        held.append((name, client))
    for _name, client in held:
        assert recv_exactly(client, 4) == b"held"
    for name in (name for name, kind in KINDS.items() if not kind.churned):
        for _ in range(STINGY_CLIENTS):
            client = connect(address[name])
            client.sendall(pattern(STINGY_PAYLOAD))
            held.append((name, client))
    return held


def end_held(name: str, client: socket.socket) -> Visit:
    """The last exchange of a held client; a stingy one gives up instead, with a reset."""
    with client:
        if KINDS[name].churned:
            return exchange(client, name, b"bye", half_close=True)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return Visit(name, client.getsockname()[1], b"")


def churn(address: dict[str, tuple[str, int]], rng: random.Random, operator: Operator, deadline: float) -> list[Visit]:
    """Connections to every toxic's listener in turn, CONNECTION_RATE a second and at most
    CLIENT_THREADS at a time, until the operator is done and MIN_CONNECTIONS were made."""
    visits: list[Visit] = []
    names = [name for name, kind in KINDS.items() if kind.churned]
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        pending: set[Future] = set()
        next_start = time.monotonic()
        while (not operator.done.is_set() or len(visits) + len(pending) < MIN_CONNECTIONS) and (
            time.monotonic() < deadline
        ):
            if len(pending) >= CLIENT_THREADS:
                done, pending = wait(pending, timeout=WAIT, return_when=FIRST_COMPLETED)
                visits.extend(future.result() for future in done)
                continue
            time.sleep(max(0.0, next_start - time.monotonic()))
            next_start = max(next_start, time.monotonic()) + 1 / CONNECTION_RATE  # late: no burst to catch up
            name = names[(len(visits) + len(pending)) % len(names)]
            pending.add(pool.submit(visit, address[name], name, payload(rng), KINDS[name].echoes))
        visits.extend(future.result(WAIT) for future in pending)
    return visits


def test_soak_every_fault_dump_capture_reload_and_admin_command_at_once(tmp_path, start_proxy):
    echoes = [start_proxy("echo", "127.0.0.1:0") for _ in range(2)]
    servers = [echo.addresses[0] for echo in echoes]
    config = soak_config(tmp_path, servers, "20ms")
    proxy = start_proxy("run", "-c", str(config), wait_listening=1 + len(KINDS))
    web = admin_address(proxy)
    address = {name: proxy.listener_address(name) for name in ("probe", *KINDS)}
    rng = random.Random(19)

    # Warm up: every listener, the dump and the capture once, every page once, so that what the
    # proxy opens or imports on first use is in the baseline.
    admin = AdminSocket(tmp_path / "admin.sock")
    assert "dumped" in admin.ask("dump on listener=captured")
    visits = [visit(address[name], name, payload(rng), kind.echoes) for name, kind in KINDS.items() if kind.churned]
    assert "no longer dumped" in admin.ask("dump off listener=captured")
    for path in ("/metrics", "/status", "/conns", "/ready"):
        assert http(web, path)[0] == 200
    admin.close()
    proxy.wait_access(len(visits))
    assert wait_until(lambda: proxy_connections(proxy) == 0)
    fds_before, rss_before = settled_descriptors(proxy.pid), proxy.rss_kib()

    with PeakRss(proxy.pid) as peak:
        started = time.monotonic()
        probe = Probe(address["probe"], proxy.pid)
        held = open_held(address)
        admin = AdminSocket(tmp_path / "admin.sock")
        operator = Operator(proxy, config, servers, admin, web)
        operator.start()
        visits += churn(address, rng, operator, started + SOAK_DEADLINE)
        operator.join()
        admin.close()
        visits += [end_held(name, client) for name, client in held]
        probe.stop()
    soak_time = time.monotonic() - started
    made_from = Counter((seen.listener, f"127.0.0.1:{seen.port}") for seen in visits)
    made_from[("probe", f"127.0.0.1:{probe.port}")] += 1
    wait_until(lambda: len(proxy.access_lines()) >= len(visits) + 1)
    access = proxy.access_lines()
    fds_settled = wait_until(lambda: descriptors(proxy.pid) == fds_before, timeout=5)
    fds_after, rss_after, longest = descriptors(proxy.pid), proxy.rss_kib(), probe.longest()
    slowest = [(round(e.at - started, 2), round(e.wait * 1000), round(e.cpu * 1000)) for e in probe.slowest(3)]
    print(
        f"soak: {len(visits)} connections ({operator.kills} killed), {operator.actions} admin actions,"
        f" {operator.reloads} reloads in {soak_time:.1f} s; RSS {rss_before} -> {rss_after} KiB (peak"
        f" {peak.peak}); {sum(fds_before.values())} -> {sum(fds_after.values())} descriptors; {len(probe.echoes)}"
        f" probes, the longest stall {longest.stall * 1000:.0f} ms at {longest.at - started:.2f} s; the slowest"
        f" echoes (at s, wait ms, proxy CPU ms): {slowest}"
    )

    assert operator.failure is None, f"the operator: {operator.failure!r}"
    assert operator.done.is_set(), f"the operator did {operator.actions} actions in {SOAK_DEADLINE}s"
    assert probe.failure is None, f"the probe: {probe.failure!r}"
    errors = [line for line in proxy.lines if " ERROR " in line]
    assert not errors, "\n".join(errors)

    # Every connection has its access line: one each, from its client port, on its listener.
    logged = Counter((line["listener"], line["client"]) for line in access)
    assert logged == made_from, (
        f"without an access line: {made_from - logged}; unknown: {logged - made_from};"
        f" {[line for line in proxy.lines if 'log_dropped' in line]}"
    )
    # Each ended as its toxic says, and an echo that closed normally brought every byte back.
    by_client = {(line["listener"], line["client"]): line for line in access}
    for seen in visits:
        line = by_client[(seen.listener, f"127.0.0.1:{seen.port}")]
        assert line["result"] in KINDS[seen.listener].results, line
        if line["result"] == "closed" and KINDS[seen.listener].echoes:
            assert seen.received == seen.sent, line

    # Nothing leaked, and memory stayed bounded by the configuration, not by what the peers did.
    assert fds_settled, f"descriptors before {dict(fds_before)}, after {dict(fds_after)}"
    assert rss_after - rss_before < RSS_GROWTH_KIB, f"RSS {rss_before} -> {rss_after} KiB"
    assert peak.growth < RSS_GROWTH_KIB, f"RSS {rss_before} KiB, at its peak {peak.peak} KiB"

    # The loop never stalled.
    assert len(probe.echoes) > soak_time / PROBE_INTERVAL / 4, "the probe ran throughout"
    assert longest.stall < STALL, (
        f"the probe waited {longest.wait * 1000:.0f} ms for an echo, {longest.cpu * 1000:.0f} ms of it with"
        f" the proxy at work, {longest.at - started:.2f} s into the soak"
    )

    # The dump, switched on and off under open connections, closes each connection it showed
    # once. (`dump on` writes an `open` line for each open connection it reaches, and again
    # when a later `dump on` reaches it again: at least one each.) The capture rotated, and kept
    # at most CAPTURE_KEEP older files, each whole (a section header, then blocks to its last
    # byte) and within its size.
    events = Counter(
        (words[1], words[2])
        for words in map(str.split, (tmp_path / "dump.txt").read_text().splitlines())
        if words[2:3] in (["open"], ["close"])
    )
    shown = {conn for conn, _event in events}
    assert shown and all(events[(conn, "close")] == 1 <= events[(conn, "open")] for conn in shown), events
    captures = sorted(tmp_path.glob("capture.pcapng*"))
    assert captures[0].name == "capture.pcapng" and 2 <= len(captures) <= CAPTURE_KEEP + 1, captures
    for capture in captures:
        assert capture.stat().st_size <= CAPTURE_MAX
        assert parse_blocks(capture.read_bytes())[0][0] == SECTION_HEADER, capture
    assert proxy.stop() == 0
