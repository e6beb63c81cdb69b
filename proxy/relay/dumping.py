"""Which of a listener's connections are dumped or captured, and where: one plan per (re)load.

A listener's keys (`hexdump`, `pcap`, `snaplen`, `dump_only`) hold for its connections unless
the route a connection took says otherwise; the listener's and the route's `dump_only`
conditions must all hold. A listener where nothing is dumped or captured has no plan at all,
so its connections do not even ask.

A pair asks twice. At accept (`may_dump`), with only the connection's number known: a
connection no target could want is left alone. Once routed and connected, or at its end
(`decide`): the route, the client and the server are known, and the answer is final.

Rules turned on at run time (`dump on FILTER` on the admin socket) come on top: a connection
their conditions select is dumped, and captured where its listener or route names a capture.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from proxy.config.schema import DumpCondition, ListenerConfig, PcapConfig, RouteConfig
from proxy.config.units import Address, canonical_ip
from proxy.output.pcap_sink import PcapSink
from proxy.output.tap import HexdumpWriter, SnappedDump
from proxy.policy.dump_filter import holds

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

    def __init__(
        self,
        listener: str,
        base: DumpTarget,
        routes: Mapping[str | int, DumpTarget],
        writer: HexdumpWriter,
        rules: tuple[Rule, ...] = (),
    ):
        self.listener = listener
        self.base = base
        self.routes = routes
        self.writer = writer
        self.rules = rules
        self.captures = any(target.sink is not None for target in (base, *routes.values()))

    @classmethod
    def of(
        cls,
        config: ListenerConfig,
        name: str,
        writer: HexdumpWriter,
        sink_for: SinkFor,
        rules: tuple[Rule, ...] = (),
    ) -> DumpPlan | None:
        """The plan of listener `config` (named `name`) with the run-time `rules`, or None when
        it dumps and captures nothing."""
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
        if not rules and not base.active and not any(target.active for target in routes.values()):
            return None
        return cls(name, base, routes, writer, rules)

    def may_dump(self, conn: int) -> bool:
        """Whether some target or rule could still want connection `conn` (the rest is not known yet)."""
        known = {"conn": conn, "listener": self.listener}
        return any(
            target.active and holds(target.conditions, **known) is not False
            for target in (self.base, *self.routes.values())
        ) or any(holds(rule, **known) is not False for rule in self.rules)

    def decide(self, facts: Facts) -> Decision:
        """The final answer for a connection, once routed and connected, or over."""
        route = facts.route
        target = self.base if route is None else self.routes.get(route, self.base)
        held = target.active and facts.hold(target.conditions)
        ruled = any(facts.hold(rule) for rule in self.rules)
        if not held and not ruled:
            return NOTHING
        hexdump = ruled or target.hexdump
        tap: HexdumpWriter | SnappedDump | None = None
        if hexdump:
            tap = self.writer if target.snaplen is None else SnappedDump(self.writer, target.snaplen)
        return Decision(tap, target.sink, target.snaplen)


Rule = tuple[DumpCondition, ...]  # a run-time `dump on` filter: all its conditions must hold


@dataclass(frozen=True, slots=True)
class Facts:
    """What the filters may ask about one connection, once it is routed and connected (or over)."""

    conn: int
    listener: str
    route: str | int | None  # None: never routed
    client_host: str
    servers: tuple[Address, ...]

    def hold(self, conditions: Sequence[DumpCondition]) -> bool:
        if not conditions:
            return True
        try:
            client = canonical_ip(self.client_host)
        except ValueError:
            client = None
        return bool(
            holds(
                conditions,
                conn=self.conn,
                listener=self.listener,
                route=self.route,
                client=client,
                servers=self.servers,
            )
        )


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
