"""The admin surfaces as an operator reaches them: `ctl` on the admin socket, one HTTP request
to the admin listener, /metrics read by Prometheus's own parser; and a worker's snapshot as the
renderers take it."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.support.logs import logfmt
from tests.support.net import connect, recv_all
from tests.support.processes import run_cli


def ctl(sock_path, *words: str, cwd=None):
    return run_cli(["ctl", "-s", str(sock_path), *words], cwd=cwd)


def ok(sock_path, *words: str) -> str:
    done = ctl(sock_path, *words)
    assert done.returncode == 0, done.stderr
    return done.stdout


def admin_address(proxy) -> tuple[str, int]:
    host, _, port = logfmt(proxy.wait_for("admin_listening"))["address"].rpartition(":")
    return host.strip("[]"), int(port)


def http(address, path: str, method: str = "GET", raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, headers with lower-case names, body)."""
    with connect(address) as sock:
        sock.sendall(raw if raw is not None else f"{method} {path} HTTP/1.1\r\nHost: admin\r\n\r\n".encode())
        answer = recv_all(sock)
    if not answer:  # closed at accept, or shed before a byte of answer
        raise ConnectionAbortedError(f"{path}: the connection closed without an answer")
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def metrics(address) -> dict[tuple, float]:
    status, headers, body = http(address, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(body.decode())


def labels(**pairs: str) -> tuple:
    return tuple(sorted(pairs.items()))


BOUNDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf")]


def histogram(times: list[float]) -> dict:
    return {
        "buckets": [[le, sum(1 for t in times if t <= le)] for le in BOUNDS],
        "sum": sum(times),
        "count": len(times),
    }


def snapshot(listener: str = "web", conns: int = 1) -> dict:
    return {
        "info": {
            "version": "1.2.3",
            "pid": 4242,
            "worker": 0,
            "workers": 1,
            "started": 1_700_000_000.0,
            "uptime": 3725.5,
            "listeners": 1,
            "connections": conns,
            "reloads": 2,
            "log_dropped": 7,
            "draining": False,
        },
        "listeners": [
            {
                "name": listener,
                "address": "127.0.0.1:8080",
                "active": conns,
                "connections_total": 10,
                "bytes_up_total": 1000,
                "bytes_down_total": 20000,
                "closed": [
                    {"route": "0", "result": "ok", "count": 8},
                    {"route": "0", "result": "connect_failed", "count": 1},
                ],
            }
        ],
        "servers": [
            {
                "upstream": "app",
                "server": "127.0.0.1:9000",
                "state": "up",
                "backup": False,
                "weight": 1,
                "active": conns,
                "total": 9,
                "failures": 1,
                "last_change": 12.0,
                "connect_seconds": histogram([0.0003, 0.002, 0.3]),
            },
            {
                "upstream": "app",
                "server": "127.0.0.1:9001",
                "state": "maint",
                "backup": True,
                "weight": 2,
                "active": 0,
                "total": 0,
                "failures": 0,
                "last_change": 100.0,
                "connect_seconds": histogram([]),
            },
        ],
        "conns": [
            {
                "conn": n + 1,
                "listener": listener,
                "route": "0",
                "client": f"127.0.0.1:{40000 + n}",
                "server": "127.0.0.1:9000",
                "state": "relaying",
                "age": 1.5,
                "idle": 0.25,
                "bytes_up": 10,
                "bytes_down": 200,
            }
            for n in range(conns)
        ],
        "process": {
            "cpu_seconds_total": 1.25,
            "resident_memory_bytes": 30_000_000,
            "virtual_memory_bytes": 90_000_000,
            "open_fds": 12,
            "max_fds": 1024,
            "start_time_seconds": 1_700_000_000.0,
        },
        "dns": [
            {
                "upstream": "app",
                "name": "app.service.consul",
                "type": "all",
                "servers": 2,
                "age": 1.5,
                "state": "ok",
                "reason": None,
            }
        ],
        "dns_queries": {"ok": 5, "timeout": 1},
    }


def samples(text: str) -> dict[tuple, float]:
    """Every sample of an exposition as {(name, sorted labels): value}, read by Prometheus's own parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found
