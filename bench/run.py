#!/usr/bin/env python3
"""pairproxy beside its peers: bulk throughput, request rate and latency, connection rate,
redis, and memory per idle connection, in one run on one machine; what terminating TLS, sending
a PROXY header and an access line per connection cost, beside HAProxy doing the same; and what
dumping and capturing cost, as ratios to plain pairproxy (and the dump beside `socat -x`).

Every proxy forwards a loopback port to the same upstream. The proxy under test is pinned to
one CPU and the load generators and upstreams to the other; peers are interleaved
(A B C A B C ...) and each figure is the median of the rounds, with min and max. Installs
nothing: it uses the peers it finds and says which ones it skipped. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROXY_CPU, LOAD_CPU = "1", "0"
# `run --workers 2` gets two cores of its own where there are three or more; on two, it shares
# the load generator's.
WORKERS_CPUS = f"{PROXY_CPU},2" if (os.cpu_count() or 1) >= 3 else f"{PROXY_CPU},{LOAD_CPU}"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# -- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if shutil.which("taskset") else argv


def start(argv: list[str], cpu: str, **kwargs) -> subprocess.Popen:
    """Start `argv` pinned to `cpu`, its standard streams on /dev/null unless `kwargs` route them."""
    streams = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    return subprocess.Popen(pinned(cpu, argv), **{**streams, **kwargs})


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (workers, socat's forks)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        queue.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system time of the tree, reaped children included."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(value) for value in fields[11:15])
    return total / CLK_TCK


def rss_kib(pid: int) -> int:
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE_KIB
    return total


# -- the peers ---------------------------------------------------------------------------

# The readers at the far end of a peer's output pipe, on the load's CPU: one that keeps up, and
# one that takes 64 KiB every 50 ms (1.25 MiB/s), so that a hex dump's output queue fills.
DRAIN = ("cat",)
SLOW_READER = (sys.executable, "-c", "import os, time\nwhile os.read(0, 65536):\n    time.sleep(0.05)")


@dataclass
class Launched:
    """A peer's processes: the proxy, and the readers that drain its output through pipes."""

    proxy: subprocess.Popen | None = None
    readers: list[subprocess.Popen] = field(default_factory=list)

    def stop(self) -> None:
        # The proxy first: its readers then see the end of their pipe.
        for proc in [self.proxy, *self.readers]:
            if proc is not None:
                stop(proc)


@dataclass
class Peer:
    name: str
    needs: tuple[str, ...] = ()  # the programs (or modules) it needs
    workloads: tuple[str, ...] | None = None  # the workloads it takes; None: every one
    upstream: str | None = None  # the upstream it forwards to, when not the workload's own
    client_tls: bool = False  # the load generator speaks TLS to it
    haproxy: str = "haproxy"  # the HAProxy row doing the same job, for the "vs HAProxy" column
    anchor: str | None = None  # another peer doing the same job, whose figure its target is stated against
    output: str | None = None  # "stdout" or "stderr": where its log or dump goes, kept (else /dev/null)
    reader: tuple[str, ...] | None = None  # drains `output` through a pipe; None: `output` is a file

    def available(self, tools: dict[str, str | None]) -> bool:
        return all(tools.get(need) is not None for need in self.needs)

    def takes(self, workload: str) -> bool:
        return self.workloads is None or workload in self.workloads

    def launch(
        self, port: int, upstream: int, outdir: Path, workdir: Path, tools: dict[str, str | None]
    ) -> Launched | None:
        """Start forwarding 127.0.0.1:port to 127.0.0.1:upstream, writing what it writes (log, dump,
        capture) into `outdir`; None means a direct connection."""
        if self.name == "direct":
            return None
        argv, cpus, options = self.command(port, upstream, outdir, workdir, tools)
        launched = Launched()
        try:
            launched.proxy = self._start(argv, cpus, options, outdir, launched.readers)
            wait_port(port)
        except BaseException:
            launched.stop()
            raise
        return launched

    def _start(self, argv: list[str], cpus: str, options: dict, outdir: Path, readers: list) -> subprocess.Popen:
        if self.output is None:
            return start(argv, cpus, **options)
        if self.reader is None:
            with open(outdir / f"{self.output}.log", "wb") as file:
                return start(argv, cpus, **options, **{self.output: file})
        read_end, write_end = os.pipe()
        try:
            readers.append(start(list(self.reader), LOAD_CPU, stdin=read_end))
            return start(argv, cpus, **options, **{self.output: write_end})
        finally:
            os.close(read_end)
            os.close(write_end)

    def command(self, port: int, upstream: int, outdir: Path, workdir: Path, tools) -> tuple[list[str], str, dict]:
        """The peer's command line, the CPUs it is pinned to, and what else Popen needs (env, cwd)."""
        name = self.name
        if name.startswith("socat"):
            dump = ["-x"] if name == "socat-x" else []  # a hex dump of both directions on stderr
            argv = [tools["socat"], *dump, f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=4096",
                    f"TCP:127.0.0.1:{upstream},nodelay"]  # fmt: skip
        elif name.startswith("haproxy"):
            cfg = workdir / f"{name}-{port}.cfg"
            cfg.write_text(haproxy_config(name, port, upstream, workdir))
            argv = [tools["haproxy"], "-db", "-f", str(cfg)]
        elif name == "nginx":
            cfg = workdir / f"nginx-{port}.conf"
            module = "/usr/lib/nginx/modules/ngx_stream_module.so"
            load = f"load_module {module};\n" if Path(module).exists() else ""
            cfg.write_text(
                f"{load}worker_processes 1;\ndaemon off;\nmaster_process off;\npid {workdir}/nginx-{port}.pid;\n"
                "error_log /dev/null crit;\nworker_rlimit_nofile 65536;\n"
                "events { worker_connections 30000; }\n"
                f"stream {{ server {{ listen 127.0.0.1:{port} backlog=4096; proxy_pass 127.0.0.1:{upstream}; }} }}\n"
            )
            argv = [tools["nginx"], "-c", str(cfg), "-p", str(workdir)]
        elif name == "twisted":
            argv = [tools["twistd"], "-n", "--pidfile=", "portforward", f"--port=tcp:{port}:interface=127.0.0.1",
                    "--host=127.0.0.1", f"--dest_port={upstream}"]  # fmt: skip
        elif name == "uvloop":
            argv = [sys.executable, str(ROOT / "bench" / "uvloop_forward.py"), str(port), str(upstream)]
        elif name == "python-floor":
            argv = [sys.executable, str(ROOT / "bench" / "floor_forward.py"), str(port), str(upstream)]
        elif name == "pproxy":  # its raw TCP tunnel (README: "Raw connection tunnel"), no proxy protocol
            argv = [tools["pproxy"], "-l", f"tunnel{{127.0.0.1:{upstream}}}://127.0.0.1:{port}"]
        elif name.startswith("pairproxy"):
            return self.pairproxy_command(port, upstream, outdir, workdir)
        else:
            raise ValueError(name)
        return argv, PROXY_CPU, {}

    def pairproxy_command(self, port: int, upstream: int, outdir: Path, workdir: Path) -> tuple[list[str], str, dict]:
        name = self.name
        env = dict(os.environ, PAIRPROXY_SPLICE="0" if name == "pairproxy-copy" else "1")
        if self.client_tls:
            env["OPENSSL_CONF"] = str(workdir / NO_TICKETS)
        options = {"env": env, "cwd": ROOT}
        table = pairproxy_table(name, port, upstream, workdir)
        if table is None:
            argv = [sys.executable, "-m", "proxy", "forward", f"127.0.0.1:{port}", f"127.0.0.1:{upstream}",
                    *forward_options(name, outdir)]  # fmt: skip
            return argv, PROXY_CPU, options
        cfg = workdir / f"pp-{port}.yaml"
        cfg.write_text(table)
        argv = [sys.executable, "-m", "proxy", "run", "-c", str(cfg), "--log-level", "warning"]
        if name == "pairproxy-w2":
            return [*argv, "--workers", "2"], WORKERS_CPUS, options
        return argv, PROXY_CPU, options


def haproxy_config(name: str, port: int, upstream: int, workdir: Path) -> str:
    # HAProxy refuses to start when the descriptors it may need (two per connection, two per
    # pipe, a few more) exceed the hard limit: 20,000 here fits 9,950 and 16 pipes.
    tuning = "    maxconn 9950\n    maxpipes 16\n"
    bind = server = options = ""
    if name == "haproxy-splice":
        options = "    option splice-auto\n"
    elif name == "haproxy-tls":  # a full handshake per connection, as pairproxy-tls: no tickets, no cache
        tuning += "    tune.ssl.cachesize 0\n"
        bind = f" ssl crt {workdir / SERVER_PEM} no-tls-tickets"
    elif name == "haproxy-proxy":
        server = " send-proxy-v2"
    elif name == "haproxy-log":  # a line per connection as it ends, to its stdout, as pairproxy's access line
        tuning += "    log stdout format raw local0\n"
        options = "    log global\n    option tcplog\n"
    return (
        f"global\n    nbthread 1\n{tuning}"
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n"
        f"{options}"
        f"frontend fe\n    bind 127.0.0.1:{port}{bind}\n    default_backend be\n"
        f"backend be\n    server s1 127.0.0.1:{upstream}{server}\n"
    )


def forward_options(name: str, outdir: Path) -> list[str]:
    """What a `forward` peer adds to the plain one's command line: the feature it measures and its log level."""
    # What a feature costs the connections that use it: every connection dumped, captured or
    # faulted, to /dev/null (the formatting alone), to a file (and the disk), or, for the dump, to
    # a reader too slow for it (a latency of 0 still takes the fault's path).
    features = {
        "pairproxy-dump": ["--hexdump", "--dump-file", "/dev/null"],
        "pairproxy-dump-file": ["--hexdump", "--dump-file", str(outdir / "dump.txt")],
        "pairproxy-dump-slow": ["--hexdump"],  # to stdout, the slow reader's pipe
        "pairproxy-pcap": ["--pcap", "/dev/null"],
        "pairproxy-pcap-file": ["--pcap", str(outdir / "capture.pcapng")],
        "pairproxy-fault": ["--fault", "latency:latency=0ms"],
    }
    # The -log peers run as users do, at the default level (info): an access line per connection.
    level = [] if name.startswith("pairproxy-log") else ["--log-level", "warning"]
    return [*features.get(name, []), *level]


def pairproxy_table(name: str, port: int, upstream: int, workdir: Path) -> str | None:
    """The YAML file a `run` peer serves; None for the peers that use `forward`."""
    listener = f"{{listen: '127.0.0.1:{port}', upstream: '127.0.0.1:{upstream}'}}"
    if name == "pairproxy-w2":
        return f"listeners:\n  - {listener}\n"
    if name == "pairproxy-admin":  # both admin endpoints configured, and left idle
        return f"listeners:\n  - {listener}\nadmin: {{socket: '{workdir}/admin-{port}.sock', http: '127.0.0.1:0'}}\n"
    if name == "pairproxy-tls":
        tls = f"{{cert: '{workdir / SERVER_CERT}', key: '{workdir / SERVER_KEY}'}}"
        return f"listeners:\n  - {{listen: '127.0.0.1:{port}', upstream: '127.0.0.1:{upstream}', tls: {tls}}}\n"
    if name == "pairproxy-mux":  # one port, many protocols: the HTTP client is told apart by its first bytes
        target = f"'127.0.0.1:{upstream}'"
        return (
            f"listeners:\n  - listen: '127.0.0.1:{port}'\n    routes:\n"
            f"      - {{match: {{protocol: ssh}}, upstream: {target}}}\n"
            f"      - {{match: {{protocol: tls, alpn: h2}}, upstream: {target}}}\n"
            f"      - {{match: {{protocol: http, host: 127.0.0.1}}, upstream: {target}}}\n"
            f"      - {{upstream: {target}}}\n"
        )
    if name == "pairproxy-dns":  # a pool that follows DNS: its name re-resolved every 5 s, off the connections' path
        nameserver = (workdir / NAMESERVER).read_text()
        return (
            f"resolvers: {{nameservers: ['{nameserver}']}}\n"
            f"upstreams:\n  app: {{servers: [{{address: 'bench.test:{upstream}', resolve: all}}]}}\n"
            f"listeners:\n  - {{listen: '127.0.0.1:{port}', upstream: app}}\n"
        )
    if name == "pairproxy-proxy":
        return (
            f"upstreams:\n  app: {{servers: ['127.0.0.1:{upstream}'], proxy_protocol: v2}}\n"
            f"listeners:\n  - {{listen: '127.0.0.1:{port}', upstream: app}}\n"
        )
    return None


# -- certificates ------------------------------------------------------------------------

NAMESERVER = "nameserver"  # the file in the workdir naming dnsmasq's address, for pairproxy-dns
SERVER_CERT, SERVER_KEY, SERVER_PEM, NO_TICKETS = "server.crt", "server.key", "server.pem", "no-tickets.cnf"


def make_certificates(workdir: Path) -> None:
    """A throwaway CA and a certificate for 127.0.0.1, as pairproxy (cert, key) and HAProxy (one PEM) take them.

    wrk resumes TLS sessions, so a new connection would cost a resumed handshake, not a full one:
    both TLS peers issue no session tickets (pairproxy has no setting for it; OpenSSL's
    configuration file, given to its process alone, has one) and HAProxy keeps no session cache.
    """
    import trustme  # only here: without it the TLS peers are skipped, the rest runs

    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(workdir / SERVER_KEY)
    for index, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(workdir / SERVER_CERT, append=index > 0)
    cert.private_key_and_cert_chain_pem.write_to_path(workdir / SERVER_PEM)
    (workdir / NO_TICKETS).write_text(
        "openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\nsystem_default = defaults\n[defaults]\nNumTickets = 0\n"
    )


HTTP = ("keepalive", "conn_rate")
PEERS = [
    Peer("direct"),
    Peer("haproxy", ("haproxy",)),
    Peer("haproxy-splice", ("haproxy",)),
    Peer("haproxy-log", ("haproxy",), haproxy="haproxy-log", output="stdout"),
    Peer("nginx", ("nginx",)),
    Peer("socat", ("socat",)),
    Peer("socat-x", ("socat",)),
    Peer("twisted", ("twistd",)),
    Peer("uvloop", ("uvloop",)),
    Peer("python-floor"),
    Peer("pproxy", ("pproxy",)),
    Peer("pairproxy"),
    Peer("pairproxy-copy"),
    Peer("pairproxy-w2"),
    Peer("pairproxy-admin"),
    # As users run it: an access line per connection, to a file and to a pipe that keeps up.
    Peer("pairproxy-log", haproxy="haproxy-log", output="stderr"),
    Peer("pairproxy-log-pipe", haproxy="haproxy-log", output="stderr", reader=DRAIN),
    Peer("pairproxy-dump", anchor="socat-x"),
    Peer("pairproxy-dump-file", anchor="socat-x"),
    Peer("pairproxy-dump-slow", anchor="socat-x", output="stdout", reader=SLOW_READER),
    Peer("pairproxy-pcap"),
    Peer("pairproxy-pcap-file"),
    Peer("pairproxy-fault"),
    # Terminating TLS from the client, and sending a PROXY v2 header to an upstream that wants one.
    Peer("haproxy-tls", ("haproxy", "trustme"), HTTP, client_tls=True, haproxy="haproxy-tls"),
    Peer("pairproxy-tls", ("trustme",), HTTP, client_tls=True, haproxy="haproxy-tls"),
    Peer("haproxy-proxy", ("haproxy",), HTTP, upstream="http_proxy", haproxy="haproxy-proxy"),
    Peer("pairproxy-proxy", (), HTTP, upstream="http_proxy", haproxy="haproxy-proxy"),
    # Routing by the client's first bytes (SSH, TLS with ALPN, HTTP by Host) on one listener.
    Peer("pairproxy-mux", (), HTTP),
    # A pool whose server is every address DNS gives its name (dnsmasq answering on loopback).
    Peer("pairproxy-dns", ("dnsmasq",), HTTP),
]
PEERS_BY_NAME = {peer.name: peer for peer in PEERS}


# -- the upstreams -----------------------------------------------------------------------


@dataclass
class Upstreams:
    workdir: Path
    tools: dict[str, str | None]
    procs: list[subprocess.Popen] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    def start(self) -> None:
        if self.tools.get("iperf3"):
            self.ports["iperf3"] = free_port()
            self.procs.append(start([self.tools["iperf3"], "-s", "-p", str(self.ports["iperf3"])], LOAD_CPU))
        if self.tools.get("nginx") and self.tools.get("wrk"):
            port = self.ports["http"] = free_port()
            # The same files from a second server that wants a PROXY v2 header first (the -proxy peers).
            proxied = self.ports["http_proxy"] = free_port()
            www = self.workdir / "www"
            www.mkdir(exist_ok=True)
            (www / "small").write_bytes(b"x" * 512)
            cfg = self.workdir / "http.conf"
            cfg.write_text(
                f"worker_processes 1;\ndaemon off;\nmaster_process off;\npid {self.workdir}/http.pid;\n"
                "error_log /dev/null crit;\nworker_rlimit_nofile 65536;\nevents { worker_connections 20000; }\n"
                f"http {{ access_log off; keepalive_requests 1000000;"
                f" server {{ listen 127.0.0.1:{port} backlog=4096; root {www}; }}"
                f" server {{ listen 127.0.0.1:{proxied} backlog=4096 proxy_protocol; root {www}; }} }}\n"
            )
            self.procs.append(start([self.tools["nginx"], "-c", str(cfg), "-p", str(self.workdir)], LOAD_CPU))
        if self.tools.get("redis-server") and self.tools.get("redis-benchmark"):
            port = self.ports["redis"] = free_port()
            argv = [self.tools["redis-server"], "--port", str(port), "--save", "", "--appendonly", "no",
                    "--bind", "127.0.0.1", "--maxclients", "20000"]  # fmt: skip
            self.procs.append(start(argv, LOAD_CPU))
        if self.tools.get("dnsmasq"):  # the nameserver of pairproxy-dns: `bench.test` is 127.0.0.1
            port = self.ports["dns"] = free_port()
            argv = [self.tools["dnsmasq"], "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--pid-file=",
                    "--user=root", f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                    "--host-record=bench.test,127.0.0.1", "--local=/test/", "--local-ttl=5"]  # fmt: skip
            self.procs.append(start(argv, LOAD_CPU))
            (self.workdir / NAMESERVER).write_text(f"127.0.0.1:{port}")
        port = self.ports["hold"] = free_port()
        self.procs.append(start([sys.executable, "-m", "proxy", "echo", f"127.0.0.1:{port}"], LOAD_CPU, cwd=ROOT))
        for port in self.ports.values():
            wait_port(port)

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc)


# -- the workloads -----------------------------------------------------------------------


@dataclass
class Measure:
    value: float  # the workload's figure (Gbit/s, requests/s, ...)
    work: float  # units of work done, for CPU per unit
    extra: dict[str, float] = field(default_factory=dict)


def run_load(argv: list[str], timeout: float) -> str:
    result = subprocess.run(pinned(LOAD_CPU, argv), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {result.stderr.strip()[:300]}")
    return result.stdout


def iperf(port: int, seconds: float, reverse: bool, tools) -> Measure:
    argv = [tools["iperf3"], "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"]
    if reverse:
        argv.append("-R")
    report = json.loads(run_load(argv, seconds + 30))
    received = report["end"].get("sum_received")
    if received is None:  # iperf3 says why in the report, with exit status 0 at times
        raise RuntimeError(f"iperf3 failed: {report.get('error', 'no result')}")
    return Measure(received["bits_per_second"] / 1e9, received["bytes"] / 1e9)  # Gbit/s; per GB


def _latency_ms(text: str, label: str) -> float:
    match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not match:
        return float("nan")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
    return float(match.group(1)) * scale


def wrk(port: int, seconds: float, keepalive: bool, tls: bool, tools) -> Measure:
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/small"
    argv = [tools["wrk"], "-t1", "-c50", f"-d{max(1, int(seconds))}s", "--latency", url]
    if not keepalive:
        argv[1:1] = ["-H", "Connection: close"]
    text = run_load(argv, seconds + 30)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    total = float(re.search(r"(\d+) requests in", text).group(1))
    return Measure(rate, total, {"p50_ms": _latency_ms(text, "50"), "p99_ms": _latency_ms(text, "99")})


def redis(port: int, requests: int, pipeline: int, tools) -> Measure:
    argv = [tools["redis-benchmark"], "-p", str(port), "-t", "set,get", "-n", str(requests), "-q", "-P", str(pipeline)]
    text = run_load(argv, 300)
    rates = [float(value) for value in re.findall(r"([\d.]+) requests per second", text)]
    return Measure(statistics.mean(rates), 2 * requests)


def idle_memory(port: int, proxy_pid: int | None, connections: int) -> Measure:
    """KiB of proxy RSS per idle connection pair, with `connections` held open at once."""
    if proxy_pid is None:
        return Measure(0.0, connections)
    before = rss_kib(proxy_pid)
    held = []
    try:
        for _ in range(connections):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(sock)
        for sock in held[-10:]:  # round trips through the last ones: every pair is really open
            sock.sendall(b"x")
            sock.recv(1)
        time.sleep(1.0)
        after = rss_kib(proxy_pid)
    finally:
        for sock in held:
            sock.close()
    return Measure((after - before) / connections, connections, {"rss_before_kib": before, "rss_after_kib": after})


WORKLOADS = {
    # name: (upstream, unit, unit of work for CPU, runner(port, peer, settings, tools))
    "bulk_up": ("iperf3", "Gbit/s", "GB", lambda p, _, t, tools: iperf(p, t.seconds, False, tools)),
    "bulk_down": ("iperf3", "Gbit/s", "GB", lambda p, _, t, tools: iperf(p, t.seconds, True, tools)),
    "keepalive": ("http", "req/s", "req", lambda p, peer, t, tools: wrk(p, t.seconds, True, peer.client_tls, tools)),
    "conn_rate": ("http", "conn/s", "conn", lambda p, peer, t, tools: wrk(p, t.seconds, False, peer.client_tls, tools)),
    "redis": ("redis", "req/s", "req", lambda p, _, t, tools: redis(p, t.redis_requests, 1, tools)),
    "redis_p16": ("redis", "req/s", "req", lambda p, _, t, tools: redis(p, t.redis_requests * 4, 16, tools)),
    "idle_memory": ("hold", "KiB/conn", "conn", None),
}


@dataclass
class Settings:
    seconds: float
    redis_requests: int
    idle_connections: int
    rounds: int


def measure(peer: Peer, workload: str, ups: Upstreams, settings: Settings, workdir: Path, tools) -> dict:
    upstream = ups.ports[peer.upstream or WORKLOADS[workload][0]]
    port = upstream if peer.name == "direct" else free_port()
    outdir = workdir / f"out-{port}"  # what the peer writes (log, dump, capture): measured, then removed
    outdir.mkdir()
    try:
        launched = peer.launch(port, upstream, outdir, workdir, tools)
        try:
            pid = launched.proxy.pid if launched else None
            cpu_before = cpu_seconds(pid) if pid else 0.0
            result = run_workload(peer, workload, port, pid, settings, tools)
            cpu = (cpu_seconds(pid) - cpu_before) if pid else 0.0
        finally:
            if launched:
                launched.stop()
        written = outputs_written(outdir, result.work)
    finally:
        shutil.rmtree(outdir)
    cpu_per_unit = 1e6 * cpu / result.work if result.work else 0
    return {"value": result.value, "cpu_us_per_unit": cpu_per_unit, **result.extra, **written}


def run_workload(peer: Peer, workload: str, port: int, pid: int | None, settings: Settings, tools) -> Measure:
    if workload != "idle_memory":
        return WORKLOADS[workload][3](port, peer, settings, tools)
    # socat forks a process per connection: a few hundred show its cost without exhausting memory.
    forks = peer.name.startswith("socat")
    return idle_memory(port, pid, min(settings.idle_connections, 500) if forks else settings.idle_connections)


def outputs_written(outdir: Path, work: float) -> dict[str, float]:
    """What a peer wrote into its folder: MiB in all and, for a log, its lines per unit of work
    (1.00 on conn_rate: a line per connection)."""
    files = [path for path in outdir.iterdir() if path.is_file()]
    if not files:
        return {}
    figures = {"written_mib": sum(path.stat().st_size for path in files) / 2**20}
    for path in files:
        if path.suffix == ".log":  # the stdout or stderr of a peer that logs
            with path.open("rb") as log:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: log.read(1 << 20), b""))
            figures["log_lines_per_unit"] = lines / work if work else 0.0
    return figures


# -- reporting ---------------------------------------------------------------------------


def summarize(samples: dict[str, dict[str, list[dict]]]) -> dict:
    summary: dict[str, dict[str, dict]] = {}
    for workload, by_peer in samples.items():
        summary[workload] = {}
        for peer, runs in by_peer.items():
            values = [run["value"] for run in runs]
            entry = {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(runs)}
            for key in runs[0]:
                if key != "value" and all(key in run for run in runs):
                    entry[key] = statistics.median(run[key] for run in runs)
            summary[workload][peer] = entry
    return summary


def against_plain(summary: dict) -> dict:
    """Each pairproxy variant beside the plain `pairproxy` row of its workload (its figure and
    its CPU per unit, as ratios), and beside its anchor's figure: the targets are stated so."""
    result: dict[str, dict[str, dict]] = {}
    for workload, by_peer in summary.items():
        plain = by_peer.get("pairproxy", {})
        rows = {}
        for peer, entry in by_peer.items():
            if not peer.startswith("pairproxy-"):
                continue
            row = {
                "median_vs_pairproxy": _ratio(entry["median"], plain.get("median")),
                "cpu_vs_pairproxy": _ratio(entry["cpu_us_per_unit"], plain.get("cpu_us_per_unit")),
            }
            anchor = PEERS_BY_NAME[peer].anchor
            if anchor:
                row["anchor"] = anchor
                row["median_vs_anchor"] = _ratio(entry["median"], by_peer.get(anchor, {}).get("median"))
            rows[peer] = row
        if rows:
            result[workload] = rows
    return result


def _ratio(value: float, reference: float | None) -> float | None:
    return value / reference if reference else None


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3g}x"  # significant digits: a dump's bulk rate is 0.005x


EXTRA = ("_ms", "_kib", "_mib", "log_lines_per_unit")  # how the keys shown under "extra" end


def markdown(summary: dict) -> str:
    ratios = against_plain(summary)
    lines = []
    for workload, by_peer in summary.items():
        _, unit, work_unit, _ = WORKLOADS[workload]
        better = "lower is better" if workload == "idle_memory" else "higher is better"
        lines += [f"### {workload} ({unit}; {better})"]
        lines += ["", f"| peer | median | min-max | vs HAProxy | vs direct | proxy CPU µs/{work_unit} | extra |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
        direct = by_peer.get("direct", {}).get("median")
        for peer, entry in by_peer.items():
            median = entry["median"]
            haproxy = by_peer.get(PEERS_BY_NAME[peer].haproxy, {}).get("median")
            vs_haproxy = f"{median / haproxy:.2f}x" if haproxy else "-"
            vs_direct = f"{median / direct:.2f}x" if direct and workload != "idle_memory" else "-"
            extra = ", ".join(f"{key} {value:.2f}" for key, value in entry.items() if key.endswith(EXTRA))
            lines.append(
                f"| {peer} | {median:,.2f} | {entry['min']:,.2f}-{entry['max']:,.2f} | {vs_haproxy} | {vs_direct} "
                f"| {entry['cpu_us_per_unit']:,.1f} | {extra} |"
            )
        if workload in ratios:
            lines += ["", "Against plain `pairproxy` (and the anchor a target names):", "",
                      f"| peer | {unit} vs pairproxy | CPU µs/{work_unit} vs pairproxy | vs anchor |",
                      "| --- | ---: | ---: | ---: |"]  # fmt: skip
            for peer, row in ratios[workload].items():
                anchor = f"{_times(row['median_vs_anchor'])} {row['anchor']}" if "anchor" in row else "-"
                lines.append(
                    f"| {peer} | {_times(row['median_vs_pairproxy'])} | {_times(row['cpu_vs_pairproxy'])} | {anchor} |"
                )
        lines.append("")
    return "\n".join(lines)


def find_tools(twistd: str | None, pproxy: str | None) -> dict[str, str | None]:
    names = ["socat", "haproxy", "nginx", "iperf3", "wrk", "redis-server", "redis-benchmark", "twistd"]
    tools = {name: shutil.which(name) for name in names}
    tools["dnsmasq"] = shutil.which("dnsmasq", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if twistd:
        tools["twistd"] = twistd
    # pproxy, the other Python proxy: given, or beside this interpreter (a virtual environment
    # not on PATH), or on PATH.
    beside = shutil.which("pproxy", path=str(Path(sys.executable).parent))
    tools["pproxy"] = pproxy or beside or shutil.which("pproxy")
    # The asyncio + uvloop reference forwarder runs on this interpreter, when it has uvloop.
    tools["uvloop"] = sys.executable if importlib.util.find_spec("uvloop") else None
    tools["trustme"] = "trustme" if importlib.util.find_spec("trustme") else None  # certificates for the TLS peers
    return tools


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 s per measurement, one round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput/rate measurement")
    parser.add_argument(
        "--idle-connections",
        type=int,
        default=9900,
        help="held open at once; each costs the proxy two descriptors, so a hard limit of 20000 allows 9900",
    )
    parser.add_argument("--peers", default=",".join(p.name for p in PEERS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--twistd", help="path to twistd (Twisted's runner), if not on PATH")
    parser.add_argument("--pproxy", help="path to pproxy, if neither beside this Python nor on PATH")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    settings = Settings(args.seconds, 200_000, args.idle_connections, args.rounds)
    if args.quick:
        settings = Settings(1.0, 20_000, 1000, 1)

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tools = find_tools(args.twistd, args.pproxy)
    wanted = set(args.peers.split(","))
    peers = [peer for peer in PEERS if peer.name in wanted and peer.available(tools)]
    skipped = sorted(wanted - {peer.name for peer in peers})
    workloads = [w for w in args.workloads.split(",") if w in WORKLOADS]
    with tempfile.TemporaryDirectory(prefix="pairproxy-bench-") as tmp:
        workdir = Path(tmp)
        if any("trustme" in peer.needs for peer in peers):
            make_certificates(workdir)
        ups = Upstreams(workdir, tools)
        try:
            ups.start()
            workloads = [w for w in workloads if WORKLOADS[w][0] in ups.ports]
            samples: dict[str, dict[str, list[dict]]] = {w: {} for w in workloads}
            for round_number in range(settings.rounds):
                for workload in workloads:
                    for peer in [peer for peer in peers if peer.takes(workload)]:  # interleaved: A B C A B C ...
                        try:
                            sample = measure(peer, workload, ups, settings, workdir, tools)
                        except (RuntimeError, OSError, subprocess.SubprocessError, AttributeError) as exc:
                            print(f"round {round_number + 1} {workload} {peer.name}: failed: {exc}", file=sys.stderr)
                            continue
                        samples[workload].setdefault(peer.name, []).append(sample)
                        label = f"round {round_number + 1} {workload} {peer.name}"
                        print(f"{label}: {sample['value']:.2f}", file=sys.stderr)
        finally:
            ups.stop()
    summary = summarize({w: s for w, s in samples.items() if s})
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "uname": " ".join(os.uname())}
    command = "python bench/run.py " + " ".join(sys.argv[1:])
    report = {"date": stamp, "command": command, "machine": machine, "settings": settings.__dict__,
              "skipped_peers": skipped, "summary": summary, "against_plain": against_plain(summary)}  # fmt: skip
    table = markdown(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stamp}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"{stamp}.md").write_text(f"{command}\n\n{table}")
    print(table)
    if skipped:
        print(f"skipped (not installed): {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
