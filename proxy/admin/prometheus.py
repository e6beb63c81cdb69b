"""A snapshot as Prometheus text exposition format 0.0.4 (what `GET /metrics` answers).

Pure: a snapshot dict (proxy/admin/snapshots.py) in, text out. Each family has its `# HELP`
and `# TYPE` once, counters end in `_total`, values are in base units (seconds, bytes), and
label values are escaped (backslash, double quote, newline), since listener names and routes
come from the configuration and may hold anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from proxy.admin.snapshots import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, Any]  # (name suffix, labels, value)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: Any) -> str:
    """A sample value: ints as they are, floats in full precision, infinities as +Inf/-Inf."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if value in ("+Inf", "Infinity"):  # a bucket bound that went through JSON
        return "+Inf"
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for suffix, labels, value in samples:
        if labels:
            text = ",".join(f'{key}="{escape_label(str(label))}"' for key, label in labels)
            lines.append(f"{name}{suffix}{{{text}}} {format_value(value)}")
        else:
            lines.append(f"{name}{suffix} {format_value(value)}")
    return lines


def render(snapshot: Snapshot) -> str:
    """The whole exposition for one (merged) snapshot."""
    info, process = snapshot["info"], snapshot["process"]
    listeners, servers = snapshot["listeners"], snapshot["servers"]
    out: list[str] = []
    out += _family(
        "pairproxy_info", "gauge", "Build information; always 1.", [("", (("version", info["version"]),), 1)]
    )
    out += _family(
        "pairproxy_connections_total",
        "counter",
        "Client connections accepted by the listener.",
        [("", (("listener", each["name"]),), each["connections_total"]) for each in listeners],
    )
    out += _family(
        "pairproxy_active_connections",
        "gauge",
        "Client connections of the listener open now.",
        [("", (("listener", each["name"]),), each["active"]) for each in listeners],
    )
    out += _family(
        "pairproxy_bytes_total",
        "counter",
        "Bytes relayed: up is client to server, down is server to client.",
        [
            ("", (("listener", each["name"]), ("direction", direction)), each[f"bytes_{direction}_total"])
            for each in listeners
            for direction in ("up", "down")
        ],
    )
    out += _family(
        "pairproxy_closed_total",
        "counter",
        "Connections finished, by route and by the result the access log gives.",
        [
            (
                "",
                (("listener", each["name"]), ("route", row["route"]), ("result", row["result"])),
                row["count"],
            )
            for each in listeners
            for row in each["closed"]
        ],
    )

    def by_server(key: str) -> list[Sample]:
        return [("", _server_labels(each), each[key]) for each in servers]

    out += _family(
        "pairproxy_server_up",
        "gauge",
        "1 if the server takes connections now, 0 if down (health checks, back-off) or in maintenance.",
        [("", _server_labels(each), int(each["state"] == "up")) for each in servers],
    )
    out += _family(
        "pairproxy_server_maintenance",
        "gauge",
        "1 if the server was disabled by an operator (maint), else 0.",
        [("", _server_labels(each), int(each["state"] == "maint")) for each in servers],
    )
    out += _family(
        "pairproxy_server_active_connections",
        "gauge",
        "Connections to the server open now.",
        by_server("active"),
    )
    out += _family(
        "pairproxy_server_connections_total",
        "counter",
        "Connections sent to the server.",
        by_server("total"),
    )
    out += _family(
        "pairproxy_server_connect_failures_total",
        "counter",
        "Connects to the server that failed (refused, timed out, unreachable).",
        by_server("failures"),
    )
    out += _family(
        "pairproxy_server_connect_seconds",
        "histogram",
        "Time to connect to the server, in seconds.",
        _histogram_samples(servers),
    )
    out += _family(
        "pairproxy_dns_queries_total",
        "counter",
        "DNS queries of pools that follow DNS, each try by its outcome (ok, nxdomain, truncated, timeout, error).",
        [("", (("result", result),), count) for result, count in sorted(snapshot["dns_queries"].items())],
    )
    out += _family(
        "pairproxy_dns_answer_age_seconds",
        "gauge",
        "Seconds since the last good answer for the name a pool follows (absent before the first).",
        [
            ("", (("upstream", each["upstream"]), ("name", each["name"])), each["age"])
            for each in snapshot["dns"]
            if each["age"] is not None
        ],
    )
    out += _family(
        "pairproxy_log_dropped_total",
        "counter",
        "Log lines dropped because standard error did not keep up.",
        [("", (), info["log_dropped"])],
    )
    out += _family(
        "pairproxy_reloads_total", "counter", "Configuration reloads put in force.", [("", (), info["reloads"])]
    )
    if "missing_workers" in info:  # `run --workers N`: the supervisor's scrape of its workers
        out += _family(
            "pairproxy_workers_missing",
            "gauge",
            "Workers that did not answer this scrape in time: their counters are left out of it.",
            [("", (), info["missing_workers"])],
        )
    out += _family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        [("", (), process["cpu_seconds_total"])],
    )
    out += _family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        [("", (), process["resident_memory_bytes"])],
    )
    out += _family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        [("", (), process["virtual_memory_bytes"])],
    )
    out += _family("process_open_fds", "gauge", "Number of open file descriptors.", [("", (), process["open_fds"])])
    out += _family(
        "process_max_fds", "gauge", "Maximum number of open file descriptors.", [("", (), process["max_fds"])]
    )
    out += _family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        [("", (), process["start_time_seconds"])],
    )
    return "\n".join(out) + "\n"


def _server_labels(server: dict[str, Any]) -> Labels:
    return (("upstream", server["upstream"]), ("server", server["server"]))


def _histogram_samples(servers: list[dict[str, Any]]) -> list[Sample]:
    samples: list[Sample] = []
    for server in servers:
        labels = _server_labels(server)
        histogram = server["connect_seconds"]
        for le, count in histogram["buckets"]:
            samples.append(("_bucket", (*labels, ("le", format_value(le))), count))
        samples.append(("_sum", labels, histogram["sum"]))
        samples.append(("_count", labels, histogram["count"]))
    return samples
