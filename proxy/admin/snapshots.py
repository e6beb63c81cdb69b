"""One snapshot from several: what the admin pages show for `run --workers N`.

A snapshot is the plain-data dict `Server.snapshot()` returns (docs/operations.md). Each worker
takes its own; `merge` folds them into one of the same shape: counters and open connections
are summed, listeners and servers matched by name, histograms added bucket by bucket. Pure.
"""

from __future__ import annotations

from typing import Any

Snapshot = dict[str, Any]

_STATE_ORDER = {"maint": 2, "up": 1, "down": 0}  # a server any worker can reach is up


def merge(snapshots: list[Snapshot]) -> Snapshot:
    """The snapshots of all workers as one; a single snapshot comes back as it is."""
    if len(snapshots) == 1:
        return snapshots[0]
    if not snapshots:
        raise ValueError("no snapshot to merge")
    infos = [snapshot["info"] for snapshot in snapshots]
    info = {
        **infos[0],
        "started": min(each["started"] for each in infos),
        "uptime": max(each["uptime"] for each in infos),
        "listeners": max(each["listeners"] for each in infos),
        "connections": sum(each["connections"] for each in infos),
        "reloads": max(each["reloads"] for each in infos),  # every worker reloads on each SIGHUP
        "log_dropped": sum(each["log_dropped"] for each in infos),
        "draining": any(each["draining"] for each in infos),
    }
    processes = [snapshot["process"] for snapshot in snapshots]
    process = {
        "cpu_seconds_total": sum(each["cpu_seconds_total"] for each in processes),
        "resident_memory_bytes": sum(each["resident_memory_bytes"] for each in processes),
        "virtual_memory_bytes": sum(each["virtual_memory_bytes"] for each in processes),
        "open_fds": sum(each["open_fds"] for each in processes),
        "max_fds": min(each["max_fds"] for each in processes),
        "start_time_seconds": min(each["start_time_seconds"] for each in processes),
    }
    return {
        "info": info,
        "listeners": _merge_listeners([snapshot["listeners"] for snapshot in snapshots]),
        "servers": _merge_servers([snapshot["servers"] for snapshot in snapshots]),
        "conns": [conn for snapshot in snapshots for conn in snapshot["conns"]],
        "process": process,
        "dns": _merge_dns([snapshot["dns"] for snapshot in snapshots]),
        "dns_queries": _sum_counts([snapshot["dns_queries"] for snapshot in snapshots]),
    }


def _merge_listeners(lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for listeners in lists:
        for listener in listeners:
            into = merged.get(listener["name"])
            if into is None:
                merged[listener["name"]] = {**listener, "closed": [dict(each) for each in listener["closed"]]}
                continue
            for key in ("active", "connections_total", "bytes_up_total", "bytes_down_total"):
                into[key] += listener[key]
            counts = {(each["route"], each["result"]): each for each in into["closed"]}
            for each in listener["closed"]:
                known = counts.get((each["route"], each["result"]))
                if known is None:
                    into["closed"].append(dict(each))
                else:
                    known["count"] += each["count"]
    return list(merged.values())


def _merge_servers(lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for servers in lists:
        for server in servers:
            key = (server["upstream"], server["server"])
            into = merged.get(key)
            if into is None:
                merged[key] = {**server, "connect_seconds": _copy_histogram(server["connect_seconds"])}
                continue
            for name in ("active", "total", "failures"):
                into[name] += server[name]
            if _STATE_ORDER.get(server["state"], 0) > _STATE_ORDER.get(into["state"], 0):
                into["state"] = server["state"]
            into["last_change"] = min(into["last_change"], server["last_change"])
            _add_histogram(into["connect_seconds"], server["connect_seconds"])
    return list(merged.values())


def _merge_dns(lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each worker follows each name itself: the freshest answer and the most servers are shown,
    and a name is failing while any worker's lookups fail."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for rows in lists:
        for row in rows:
            into = merged.get((row["upstream"], row["name"]))
            if into is None:
                merged[row["upstream"], row["name"]] = dict(row)
                continue
            into["servers"] = max(into["servers"], row["servers"])
            ages = [age for age in (into["age"], row["age"]) if age is not None]
            into["age"] = min(ages) if ages else None
            if row["state"] == "failing":
                into["state"], into["reason"] = "failing", row["reason"]
    return list(merged.values())


def _sum_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for each in counts:
        for key, count in each.items():
            total[key] = total.get(key, 0) + count
    return total


def _copy_histogram(histogram: dict[str, Any]) -> dict[str, Any]:
    return {**histogram, "buckets": [list(bucket) for bucket in histogram["buckets"]]}


def _add_histogram(into: dict[str, Any], other: dict[str, Any]) -> None:
    if len(into["buckets"]) != len(other["buckets"]):
        raise ValueError("histograms with different buckets")
    for bucket, (_le, count) in zip(into["buckets"], other["buckets"], strict=True):
        bucket[1] += count
    into["sum"] += other["sum"]
    into["count"] += other["count"]
