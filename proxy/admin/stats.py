"""What the admin surfaces count: per-listener counters, the process's own figures, and the rows of
a snapshot.

Counters change only when a connection is accepted or finishes (and the pools count connects),
never per chunk: the bytes of connections still open are read from their sides when a snapshot
is taken. Everything a snapshot holds is plain data (JSON-able), so that a supervisor can one day
collect one per worker and merge them.
"""

from __future__ import annotations

import os
import resource
from collections import Counter

from proxy.policy.upstreams import Pool
from proxy.relay.pair import Pair


class ListenerStats:
    """One listener's counters over its life; they stay with a listener that a reload keeps."""

    __slots__ = ("bytes_down", "bytes_up", "closed", "connections_total")

    def __init__(self) -> None:
        self.connections_total = 0
        self.bytes_up = 0  # of connections that have finished
        self.bytes_down = 0
        # (route, result) -> connections, keyed as the pair has them (named as text in snapshots)
        self.closed: Counter[tuple[str | int | None, str | None]] = Counter()

    def finished(self, pair: Pair) -> None:
        self.bytes_up += pair.client.bytes_read
        if pair.upstream is not None:
            self.bytes_down += pair.upstream.bytes_read
        self.closed[(pair.route, pair.result)] += 1

    def closed_by_name(self) -> Counter[tuple[str, str]]:
        """The finished connections per (route name, result), as snapshots and metrics name them."""
        named: Counter[tuple[str, str]] = Counter()
        for (route, result), count in self.closed.items():
            named[("" if route is None else str(route), result or "")] += count
        return named

    def to_json(self, name: str, address: str, pairs: list[Pair]) -> dict:
        """The snapshot's row for this listener, `pairs` being its open connections."""
        up = sum(pair.client.bytes_read for pair in pairs)
        down = sum(pair.upstream.bytes_read for pair in pairs if pair.upstream is not None)
        return {
            "name": name,
            "address": address,
            "active": len(pairs),
            "connections_total": self.connections_total,
            "bytes_up_total": self.bytes_up + up,
            "bytes_down_total": self.bytes_down + down,
            "closed": [
                {"route": route, "result": result, "count": count}
                for (route, result), count in sorted(self.closed_by_name().items())
            ],
        }


def connection_row(pair: Pair, now: float) -> dict:
    upstream = pair.upstream
    if upstream is not None:
        server: str | None = upstream.address
    else:
        server = None if pair.server is None else str(pair.server)
    return {
        "conn": pair.conn,
        "listener": pair.settings.listener,
        "route": None if pair.route is None else str(pair.route),
        "client": pair.client.address,
        "server": server,
        "state": pair.phase.shown,
        "age": now - pair.started,
        "idle": now - pair.last_active(),
        "bytes_up": pair.client.bytes_read,
        "bytes_down": 0 if upstream is None else upstream.bytes_read,
        "protocol": pair.protocol,  # what a peek at the first bytes found (None: no peek, or nothing known)
        "alpn": pair.alpn,
        "host": pair.host,
    }


def server_rows(pools: dict[str, Pool], now: float) -> list[dict]:
    return [
        {
            "upstream": name,
            "server": str(server.address),
            "state": server.state(now),
            "backup": server.config.backup,
            "weight": server.weight,
            "active": server.active,
            "total": server.total,
            "failures": server.failures,
            "last_change": server.last_change(now),
            "connect_seconds": server.connect_times.to_json(),
        }
        for name, pool in pools.items()
        for server in pool.servers
    ]


def process_stats() -> dict:
    """CPU, memory and descriptors of this process, as Prometheus's process_* metrics name them.

    Read from /proc/self (Linux); where there is none, the CPU time from getrusage and zeros.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    stats = {
        "cpu_seconds_total": 0.0,
        "resident_memory_bytes": 0,
        "virtual_memory_bytes": 0,
        "open_fds": 0,
        "max_fds": 0 if soft == resource.RLIM_INFINITY else soft,
        "start_time_seconds": 0.0,
    }
    try:
        with open("/proc/self/stat", "rb") as file:
            # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
            fields = file.read().rsplit(b")", 1)[1].split()
        with open("/proc/self/statm", "rb") as file:
            size, resident = (int(value) for value in file.read().split()[:2])
        with open("/proc/stat", "rb") as file:
            boot = next(int(line.split()[1]) for line in file if line.startswith(b"btime "))
        stats["open_fds"] = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError, IndexError, StopIteration):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        stats["cpu_seconds_total"] = usage.ru_utime + usage.ru_stime
        return stats
    ticks, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    # After the name: state is field 3, so utime (14), stime (15), starttime (22) are at 11, 12, 19.
    stats["cpu_seconds_total"] = (int(fields[11]) + int(fields[12])) / ticks
    stats["start_time_seconds"] = boot + int(fields[19]) / ticks
    stats["virtual_memory_bytes"] = size * page
    stats["resident_memory_bytes"] = resident * page
    return stats
