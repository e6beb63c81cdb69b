"""What an operator does to servers at run time: maintenance (`disable server`, `enable server`),
and servers added, removed and weighed (`add server`, `del server`, `set server ... weight`).

A change is made on the pool at once (policy.upstreams.Pool; a removed server drains) and kept,
in order, so that a reload can make the changes again on the new pools (`reload --keep-runtime`)
or say which it dropped (`runtime_dropped`, one line each).
"""

from __future__ import annotations

from collections.abc import Mapping

from proxy.admin.commands import ServerChange
from proxy.config.schema import ServerConfig
from proxy.config.units import did_you_mean, parse_address
from proxy.log import EventLog
from proxy.policy.upstreams import Pool

_EVENTS = {"add": "server_added", "del": "server_removed", "weight": "server_weight_set"}


class OperatorServers:
    """The run-time server changes of one Server, in the order they were made."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.changes: list[ServerChange] = []

    def maintenance(self, pools: Mapping[str, Pool], upstream: str, address: str, on: bool, now: float) -> bool:
        """Put a server in maintenance (`on`) or back in service; False if there is no such server."""
        pool = pools.get(upstream)
        try:
            wanted = parse_address(address, allow_port_zero=False)
        except ValueError:
            return False
        for server in pool.servers if pool is not None else ():
            if server.address == wanted:
                server.set_maintenance(on, now)
                event = "server_disabled" if on else "server_enabled"
                self.log.warning(event, upstream=upstream, server=server.address, by="admin")
                return True
        return False

    def make(self, pools: Mapping[str, Pool], change: ServerChange) -> str:
        """Make `change` on `pools` and keep it ("ok"); ValueError (in words for people) if it cannot be."""
        pool = pools.get(change.upstream)
        if pool is None:
            raise ValueError(f"no upstream {change.upstream!r}{did_you_mean(change.upstream, pools)}")
        address = parse_address(change.address, allow_port_zero=False)
        if change.op == "add":
            pool.add_server(ServerConfig(address, change.weight, change.backup))
        elif change.op == "del":
            pool.remove_server(address)
        else:
            pool.set_weight(address, change.weight)
        self.changes.append(change)
        weight = None if change.op == "del" else change.weight
        self.log.warning(_EVENTS[change.op], upstream=change.upstream, server=address, weight=weight, by="admin")
        return "ok"

    def reloaded(self, pools: Mapping[str, Pool], keep: bool) -> None:
        """A reload put `pools` in force: make the changes again on them (`keep`), or drop them;
        each dropped, or that cannot be made again, is logged."""
        changes, self.changes = self.changes, []
        for change in changes:
            if not keep:
                self.log.warning("runtime_dropped", change=str(change), keep="reload --keep-runtime")
                continue
            try:
                self.make(pools, change)
            except ValueError as exc:
                self.log.warning("runtime_dropped", change=str(change), reason=str(exc))
