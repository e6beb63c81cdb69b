"""The admin listener's human pages: `/status` (one HTML page) and `/conns` (JSON).

Pure: a snapshot (proxy/admin/snapshots.py) in, text out. The status page is in the spirit of
HAProxy's stats page: an info header, the listeners, a table per upstream with its servers (the
state coloured), and the live connections, at most STATUS_CONNS of them. No JavaScript: it
reloads itself every few seconds. Every text on it goes through html.escape, since names,
routes and client addresses are not ours to trust.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from proxy.admin.snapshots import Snapshot

STATUS_CONNS = 500  # live connections listed on /status; the rest are only counted
REFRESH_SECONDS = 5

_STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 1em; }
h1 { font-size: 18px; } h2 { font-size: 15px; margin-top: 1.5em; }
table { border-collapse: collapse; margin-bottom: 1em; }
th, td { border: 1px solid #999; padding: 2px 8px; text-align: right; }
th { background: #ddd; } td.name { text-align: left; }
tr.up td.state { background: #8f8; } tr.down td.state { background: #f88; }
tr.maint td.state { background: #ccc; } tr.backup td.name { font-style: italic; }
.info td { text-align: left; } p.more { font-style: italic; }
"""


def render_conns(snapshot: Snapshot) -> bytes:
    """`/conns`: the live connections and the info they were counted under, as JSON."""
    return json.dumps({"info": snapshot["info"], "conns": snapshot["conns"]}, indent=1).encode()


def _cell(value: Any, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<td{cls}>{escape(str(value))}</td>"


def _table(headings: list[str], rows: list[str]) -> str:
    head = "".join(f"<th>{escape(heading)}</th>" for heading in headings)
    return f"<table><tr>{head}</tr>\n" + "\n".join(rows) + "\n</table>"


def _duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}h{minutes:02d}m{secs:02d}s" if hours or days else f"{minutes}m{secs:02d}s"
    return f"{days}d{text}" if days else text


def _info(info: dict[str, Any]) -> str:
    state = "draining" if info["draining"] else "serving"
    rows = [
        ("version", info["version"]),
        ("pid", info["pid"]),
        ("workers", info["workers"]),
        ("state", state),
        ("uptime", _duration(info["uptime"])),
        ("listeners", info["listeners"]),
        ("connections open", info["connections"]),
        ("reloads", info["reloads"]),
        ("log lines dropped", info["log_dropped"]),
    ]
    body = "\n".join(f"<tr><th>{escape(key)}</th>{_cell(value)}</tr>" for key, value in rows)
    return f'<table class="info">\n{body}\n</table>'


def _listeners(listeners: list[dict[str, Any]]) -> str:
    rows = []
    for each in listeners:
        closed = ", ".join(
            f"{closed['result']}={closed['count']}" for closed in sorted(each["closed"], key=lambda c: c["result"])
        )
        rows.append(
            "<tr>"
            + _cell(each["name"], "name")
            + _cell(each["address"], "name")
            + _cell(each["active"])
            + _cell(each["connections_total"])
            + _cell(each["bytes_up_total"])
            + _cell(each["bytes_down_total"])
            + _cell(closed, "name")
            + "</tr>"
        )
    headings = ["listener", "address", "active", "total", "bytes up", "bytes down", "closed by result"]
    return _table(headings, rows)


def _upstreams(servers: list[dict[str, Any]]) -> str:
    by_upstream: dict[str, list[dict[str, Any]]] = {}
    for server in servers:
        by_upstream.setdefault(server["upstream"], []).append(server)
    parts = []
    headings = ["server", "state", "weight", "active", "total", "failures", "last change", "connect mean"]
    for upstream, members in by_upstream.items():
        rows = []
        for server in members:
            histogram = server["connect_seconds"]
            mean = f"{histogram['sum'] / histogram['count'] * 1000:.2f} ms" if histogram["count"] else "-"
            css = f"{server['state']} backup" if server["backup"] else server["state"]
            rows.append(
                f'<tr class="{escape(css)}">'
                + _cell(server["server"] + (" (backup)" if server["backup"] else ""), "name")
                + _cell(server["state"].upper(), "state")
                + _cell(server["weight"])
                + _cell(server["active"])
                + _cell(server["total"])
                + _cell(server["failures"])
                + _cell(_duration(server["last_change"]) + " ago")
                + _cell(mean)
                + "</tr>"
            )
        parts.append(f"<h2>upstream {escape(upstream)}</h2>\n" + _table(headings, rows))
    return "\n".join(parts) or "<p>No upstreams.</p>"


def _dns(rows: list[dict[str, Any]]) -> str:
    """The names pools follow: how many servers each gives, how old its last answer is."""
    if not rows:
        return ""
    cells = [
        f'<tr class="{"up" if row["state"] == "ok" else "down"}">'
        + _cell(row["upstream"], "name")
        + _cell(row["name"], "name")
        + _cell(row["type"])
        + _cell(row["servers"])
        + _cell("-" if row["age"] is None else _duration(row["age"]) + " ago")
        + _cell(row["state"] + (f": {row['reason']}" if row["reason"] else ""), "name")
        + "</tr>"
        for row in rows
    ]
    return "\n<h2>DNS</h2>\n" + _table(["upstream", "name", "type", "servers", "last answer", "state"], cells)


def _conns(conns: list[dict[str, Any]]) -> str:
    rows = [
        "<tr>"
        + _cell(conn["conn"])
        + _cell(conn["listener"], "name")
        + _cell("-" if conn["route"] is None else conn["route"], "name")
        + _cell(conn["client"], "name")
        + _cell(conn["server"] or "-", "name")
        + _cell(conn["state"], "name")
        + _cell(f"{conn['age']:.1f}")
        + _cell(f"{conn['idle']:.1f}")
        + _cell(conn["bytes_up"])
        + _cell(conn["bytes_down"])
        + "</tr>"
        for conn in conns[:STATUS_CONNS]
    ]
    headings = ["conn", "listener", "route", "client", "server", "state", "age s", "idle s", "bytes up", "bytes down"]
    table = _table(headings, rows)
    more = len(conns) - STATUS_CONNS
    return table + (f'\n<p class="more">and {more} more (all of them: /conns)</p>' if more > 0 else "")


def render_status(snapshot: Snapshot) -> str:
    """`/status`: the whole page."""
    info = snapshot["info"]
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        f"<title>pairproxy {escape(info['version'])} status</title><style>{_STYLE}</style></head>\n<body>\n"
        f"<h1>pairproxy {escape(info['version'])}</h1>\n"
        + _info(info)
        + "\n<h2>listeners</h2>\n"
        + _listeners(snapshot["listeners"])
        + "\n"
        + _upstreams(snapshot["servers"])
        + _dns(snapshot["dns"])
        + f"\n<h2>connections ({len(snapshot['conns'])} open)</h2>\n"
        + _conns(snapshot["conns"])
        + "\n</body></html>\n"
    )
