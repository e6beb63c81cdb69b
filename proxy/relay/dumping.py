"""Which of a listener's connections are dumped or captured, and where: one plan per (re)load.

A listener's keys (`hexdump`, `pcap`, `snaplen`, `dump_only`) hold for its connections unless
the route a connection took says otherwise; the listener's and the route's `dump_only`
conditions must all hold. A listener where nothing is dumped or captured has no plan at all,
so its connections do not even ask.

A pair asks twice. At accept (`may_dump`), with only the connection's number known: a
connection no target could want is left alone. Once routed and connected, or at its end
(`decide`): the route, the client and the server are known, and the answer is final.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from proxy.config.schema import DumpCondition, ListenerConfig, PcapConfig, RouteConfig
from proxy.config.units import Address, canonical_ip
from proxy.policy.dump_filter import holds
from proxy.relay.pcap_sink import PcapSink
from proxy.relay.tap import HexdumpWriter, SnappedDump

SinkFor = Callable[[PcapConfig], PcapSink]


@dataclass(frozen=True, slots=True)
class DumpTarget:
    """What a listener, or a route of it, asks for its connections."""

    hexdump: bool
    sink: PcapSink | None
    snaplen: int | None
    conditions: tuple[DumpCondition, ...]

    @property
    def active(self) -> bool:
        return self.hexdump or self.sink is not None


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one connection: its hex dump tap and its capture (None: not that)."""

    tap: HexdumpWriter | SnappedDump | None
    sink: PcapSink | None
    snaplen: int | None


NOTHING = Decision(None, None, None)


class DumpPlan:
    """The dump and capture settings of one listener's connections, per route."""

    def __init__(self, listener: str, base: DumpTarget, routes: Mapping[str | int, DumpTarget], writer: HexdumpWriter):
        self.listener = listener
        self.base = base
        self.routes = routes
        self.writer = writer
        self.captures = any(target.sink is not None for target in (base, *routes.values()))

    @classmethod
    def of(cls, config: ListenerConfig, name: str, writer: HexdumpWriter, sink_for: SinkFor) -> DumpPlan | None:
        """The plan of listener `config` (named `name`), or None when it dumps and captures nothing."""
        base = DumpTarget(
            config.hexdump,
            None if config.pcap is None else sink_for(config.pcap),
            config.snaplen,
            config.dump_only,
        )
        routes = {}
        for index, route in enumerate(config.routes):
            target = _route_target(route, base, sink_for)
            if target is not base:
                routes[route.name if route.name is not None else index] = target
        if not base.active and not any(target.active for target in routes.values()):
            return None
        return cls(name, base, routes, writer)

    def may_dump(self, conn: int) -> bool:
        """Whether some target could still want connection `conn` (the rest is not known yet)."""
        return any(
            target.active and holds(target.conditions, conn=conn, listener=self.listener) is not False
            for target in (self.base, *self.routes.values())
        )

    def decide(self, conn: int, route: str | int | None, client_host: str, servers: tuple[Address, ...]) -> Decision:
        """The final answer for a connection, routed by `route` (None: never routed)."""
        target = self.base if route is None else self.routes.get(route, self.base)
        if not target.active:
            return NOTHING
        if target.conditions:
            try:
                client = canonical_ip(client_host)
            except ValueError:
                client = None
            facts = {"conn": conn, "listener": self.listener, "route": route, "client": client, "servers": servers}
            if not holds(target.conditions, **facts):
                return NOTHING
        tap: HexdumpWriter | SnappedDump | None = None
        if target.hexdump:
            tap = self.writer if target.snaplen is None else SnappedDump(self.writer, target.snaplen)
        return Decision(tap, target.sink, target.snaplen)


def _route_target(route: RouteConfig, base: DumpTarget, sink_for: SinkFor) -> DumpTarget:
    """What `route` asks: the listener's target where the route says nothing (`base` itself)."""
    if route.hexdump is None and route.pcap is None and route.snaplen is None and not route.dump_only:
        return base
    return DumpTarget(
        base.hexdump if route.hexdump is None else route.hexdump,
        base.sink if route.pcap is None else sink_for(route.pcap),
        base.snaplen if route.snaplen is None else route.snaplen,
        base.conditions + route.dump_only,
    )
