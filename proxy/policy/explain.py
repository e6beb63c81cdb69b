"""Why a listener's table sends a client where it does: the decision and its reasons, for `pairproxy route`.

Pure. The decision itself comes from the serving code (`AccessPolicy.permits`, `RouteTable.decide`,
`Pool.candidates` on a fresh pool); the reasons come from the same predicates those use
(`first_network`, `byte_conditions`), so the explanation cannot drift from what a connection gets.
A client may be left out: rules on its address are then reported as undecided. What it sends
first is described (`Described`: a protocol, ALPN names, a Host, a server name) or given as bytes
(proxy/protocol/detect.py's `FirstBytes`, which `pairproxy route --first-bytes` makes).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from proxy.config.schema import ListenerConfig, MatchConfig, RouteConfig, UpstreamConfig
from proxy.config.units import IPAddress, canonical_ip, join_host_port, parse_address
from proxy.policy.routes import (
    AccessPolicy,
    Described,
    FirstBytesView,
    RouteTable,
    Wait,
    byte_conditions,
    first_network,
    first_pattern,
)
from proxy.policy.upstreams import Pool, ServerState

# A route's status: matched, failed a condition, undecided without a client, or after the winner.
MATCHED, NO_MATCH, UNKNOWN, NOT_REACHED = "matched", "no_match", "unknown", "not_reached"


def parse_client(text: str) -> tuple[IPAddress, int | None]:
    """`IP`, `IP:PORT` or `[IPv6]:PORT` as (canonical address, port); ValueError with a readable reason."""
    try:
        return canonical_ip(text), None
    except ValueError:
        pass
    try:
        if text.startswith(":") or ":" not in text:  # parse_address would read a bare port as loopback's
            raise ValueError
        address = parse_address(text)
        return canonical_ip(address.host), address.port
    except ValueError:
        raise ValueError(f"bad client address {text!r}: expected IP, IP:PORT or [IPv6]:PORT") from None


class ClientBytes(FirstBytesView):
    """A client's first bytes as routes see them, and the protocol they are (None: none known)."""

    def protocol(self) -> str | None: ...


@dataclass(frozen=True)
class Condition:
    kind: str  # "source" | "protocol" | "sni" | "alpn" | "host" | "prefix"
    held: bool | None  # None: cannot be told without a client address
    detail: str


@dataclass(frozen=True)
class RouteStep:
    label: str | int  # the route's name, or its index from 0 (as in the access log)
    upstream: str
    status: str
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class Access:
    decision: str  # "allowed" | "denied" | "unknown"
    rule: str | None  # "allow" | "deny": the list that decided, None when none did
    network: str | None  # the network of that list that held the client
    detail: str


@dataclass(frozen=True)
class Plan:
    """The upstream a routed client goes to and the servers it would try, in order."""

    upstream: UpstreamConfig
    candidates: tuple[tuple[str, int, bool], ...] | None  # (address, weight, backup); None: needs a client
    detail: str
    servers: tuple[tuple[str, int, bool], ...] = ()  # the pool's servers now, as candidates are
    dns: tuple[str, ...] = ()  # what DNS said, for a pool that follows it


@dataclass(frozen=True)
class Explanation:
    listener: str
    listen: str
    client: IPAddress | None
    port: int | None
    sni: str | None
    protocol: str | None
    alpn: tuple[str, ...]
    host: str | None
    reads_first_bytes: bool  # some route matches on the protocol, ALPN, Host or a prefix
    notes: tuple[str, ...]
    access: Access
    routes: tuple[RouteStep, ...]
    decision: str  # "routed" | "denied" | "no_route" | "tls_error" (no route, the handshake fails) | "undecided"
    route: str | int | None
    plan: Plan | None

    def to_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "listener": self.listener,
            "listen": self.listen,
            "client": None if self.client is None else str(self.client),
            "client_port": self.port,
            "sni": self.sni,
            "protocol": self.protocol,
            "alpn": list(self.alpn),
            "host": self.host,
            "reads_first_bytes": self.reads_first_bytes,
            "notes": list(self.notes),
            "access": asdict(self.access),
            "routes": [
                {
                    "route": step.label,
                    "upstream": step.upstream,
                    "status": step.status,
                    "conditions": [asdict(condition) for condition in step.conditions],
                }
                for step in self.routes
            ],
            "decision": self.decision,
            "route": self.route,
            "upstream": None if plan is None else _plan_json(plan),
        }


def _plan_json(plan: Plan) -> dict[str, Any]:
    upstream = plan.upstream
    return {
        "name": upstream.name,
        "balance": upstream.balance,
        "retries": upstream.retries,
        "proxy_protocol": upstream.proxy_protocol,
        "tls": upstream.tls is not None,
        "servers": [{"address": a, "weight": w, "backup": b} for a, w, b in plan.servers],
        "dns": list(plan.dns),
        "candidates": None
        if plan.candidates is None
        else [{"address": a, "weight": w, "backup": b} for a, w, b in plan.candidates],
        "detail": plan.detail,
    }


def listener_name(listener: ListenerConfig) -> str:
    """The name the access log gives the listener (its address when it has no name)."""
    return listener.name or str(listener.listen)


def explain(
    listener: ListenerConfig,
    upstreams: Mapping[str, UpstreamConfig],
    client: IPAddress | None,
    port: int | None = None,
    sni: str | None = None,
    rng: random.Random | None = None,
    first: ClientBytes | None = None,
    discovered: Mapping[str, tuple[Pool, tuple[str, ...]]] | None = None,
) -> Explanation:
    """What `listener` does with a client from `client` (None: unknown) that sends `sni`, or the
    first bytes `first` (which then say the server name too).

    `discovered` gives the pools that follow DNS as a lookup just found them, with what DNS said."""
    policy, table = AccessPolicy.of(listener), RouteTable(listener.served_routes)
    first = first if first is not None else Described(sni=sni)
    sni = first.server_name()[1]
    access = _access(policy, client)
    steps: tuple[RouteStep, ...] = ()
    decision, label, plan = "denied", None, None
    if access.decision != "denied":
        steps = _route_steps(table, client, first)
        decision, label, route = _decide(table, steps, client, first)
        if decision == "no_route" and _handshakes_the_unrouted(listener, table, first):
            decision = "tls_error"
        if route is not None:
            pool, said = (discovered or {}).get(route.upstream, (Pool(upstreams[route.upstream], rng), ()))
            plan = _plan(pool, client, said)
        if access.decision == "unknown" and decision == "routed":
            decision = "undecided"
    return Explanation(
        listener=listener_name(listener),
        listen=str(listener.listen),
        client=client,
        port=port,
        sni=sni,
        protocol=first.protocol(),
        alpn=first.alpn()[1],
        host=first.host()[1],
        reads_first_bytes=table.reads_first_bytes,
        notes=_notes(listener, table, client, first),
        access=access,
        routes=steps,
        decision=decision,
        route=label,
        plan=plan,
    )


def _handshakes_the_unrouted(listener: ListenerConfig, table: RouteTable, first: ClientBytes) -> bool:
    """Whether a client no route takes gets the TLS handshake anyway (and fails it): on a
    terminating listener that reads first bytes, one that does not speak TLS."""
    return listener.tls is not None and table.reads_first_bytes and first.protocol() != "tls"


def _notes(
    listener: ListenerConfig, table: RouteTable, client: IPAddress | None, first: ClientBytes
) -> tuple[str, ...]:
    notes = []
    sni = first.server_name()[1]
    if listener.accept_proxy_protocol:
        notes.append("this listener reads a PROXY header: the client address is the one the header would carry")
        if listener.proxy_trusted is not None:
            notes.append(f"PROXY headers are believed only from {_join(listener.proxy_trusted)}; others are denied")
    if listener.tls is not None:
        source = "the TLS handshake (this listener terminates TLS)"
    elif table.needs_server_name:
        source = "the ClientHello (TLS passed through)"
    else:
        source = None
    if listener.tls is not None and table.reads_first_bytes:
        notes.append(
            "this listener terminates TLS: a route without protocol takes TLS clients only (as if protocol: tls),"
            " and a client speaking what no route names gets the handshake"
        )
    described = isinstance(first, Described)  # else the bytes themselves say it all
    if described and source is not None and sni is None and table.needs_server_name:
        notes.append(f"no --sni: the server name comes from {source}, so routes with sni cannot match")
    elif source is None and sni is not None:
        notes.append("no route matches on sni, so this listener never reads it: --sni changes nothing")
    if described and table.reads_first_bytes and first.protocol() is None:
        notes.append("no --protocol or --first-bytes: routes on the protocol cannot match")
    if client is None and (listener.allow is not None or listener.deny or table.needs_source):
        notes.append("no --client: rules on the client address cannot be decided")
    return tuple(notes)


def _access(policy: AccessPolicy, client: IPAddress | None) -> Access:
    if policy.allow is None and not policy.deny:
        return Access("allowed", None, None, "no allow or deny rules")
    if client is None:
        return Access("unknown", None, None, "allow/deny need the client address (--client)")
    permitted = policy.permits(client)
    if not permitted:
        denied_by = first_network(client, policy.deny)
        if denied_by is not None:
            return Access("denied", "deny", str(denied_by), f"{client} is in deny {denied_by}")
        return Access("denied", "allow", None, f"{client} is in no allow network ({_join(policy.allow or ())})")
    allowed_by = None if policy.allow is None else first_network(client, policy.allow)
    if allowed_by is None:
        return Access("allowed", None, None, f"{client} is in no deny network and there is no allow list")
    return Access("allowed", "allow", str(allowed_by), f"{client} is in allow {allowed_by}")


def _conditions(match: MatchConfig, client: IPAddress | None, first: ClientBytes) -> tuple[Condition, ...]:
    conditions = []
    if match.source:
        if client is None:
            conditions.append(Condition("source", None, f"needs --client (source {_join(match.source)})"))
        else:
            network = first_network(client, match.source)
            held = network is not None
            detail = f"{client} is in {network}" if held else f"{client} is in none of {_join(match.source)}"
            conditions.append(Condition("source", held, detail))
    for kind, verdict in byte_conditions(match, first):
        conditions.append(Condition(kind, bool(verdict), _byte_detail(kind, match, first, bool(verdict))))
    return tuple(conditions)


def _byte_detail(kind: str, match: MatchConfig, first: ClientBytes, held: bool) -> str:
    """Why a condition on the first bytes held or not, in the words of the route's own values."""
    wanted = _join(getattr(match, kind)) if kind != "prefix" else _join(tuple(_shown(p) for p in match.prefix))
    seen = {
        "protocol": first.protocol(),
        "sni": first.server_name()[1],
        "alpn": _join(first.alpn()[1]) or None,
        "host": first.host()[1],
    }.get(kind)
    if kind == "prefix":
        return f"the bytes start with one of {wanted}" if held else f"the bytes start with none of {wanted}"
    if seen is None:
        return f"{_NOTHING_SEEN[kind]}, so none of {wanted}"
    if kind == "sni" and held:
        return f"{seen} matches {first_pattern(match.sni, seen)}"
    if kind == "host" and held:
        return f"{seen} matches {first_pattern(match.host, seen)}"
    return f"{seen} is one of {wanted}" if held else f"{seen} matches none of {wanted}"


_NOTHING_SEEN = {
    "protocol": "no protocol recognised",
    "sni": "no server name",
    "alpn": "no ALPN protocol offered",
    "host": "no Host",
}


def _shown(prefix: bytes) -> str:
    """A prefix as a route writes it: its text when printable ASCII, else hex:."""
    text = prefix.decode("ascii", "replace")
    return text if text.isprintable() and text.isascii() else f"hex:{prefix.hex()}"


def _route_steps(table: RouteTable, client: IPAddress | None, first: ClientBytes) -> tuple[RouteStep, ...]:
    steps: list[RouteStep] = []
    reached = True
    for index, route in enumerate(table.routes):
        label = route.name if route.name is not None else index
        conditions = _conditions(route.match, client, first)
        if not reached:
            status = NOT_REACHED
        elif any(condition.held is False for condition in conditions):
            status = NO_MATCH
        elif any(condition.held is None for condition in conditions):
            status = UNKNOWN
        else:
            status, reached = MATCHED, False
        steps.append(RouteStep(label, route.upstream, status, conditions))
    return tuple(steps)


def _decide(
    table: RouteTable, steps: tuple[RouteStep, ...], client: IPAddress | None, first: ClientBytes
) -> tuple[str, str | int | None, RouteConfig | None]:
    """The route the serving code picks; "undecided" when a route before it depends on a missing client."""
    if any(step.status == UNKNOWN for step in steps):
        return "undecided", None, None
    if client is None:  # no route before the winner looks at the address: the conditions say it all
        selected = next(((s.label, r) for s, r in zip(steps, table.routes, strict=True) if s.status == MATCHED), None)
    else:
        selected = table.decide(client, first)
        assert not isinstance(selected, Wait)  # a described client has said all it will
    if selected is None:
        return "no_route", None, None
    return "routed", selected[0], selected[1]


def _servers(servers: list[ServerState]) -> tuple[tuple[str, int, bool], ...]:
    return tuple((str(s.address), s.weight, s.config.backup) for s in servers)


def _plan(pool: Pool, client: IPAddress | None, dns: tuple[str, ...]) -> Plan:
    upstream = pool.config
    balance = upstream.balance
    servers = _servers(pool.servers)
    if client is None and balance == "source_hash":
        detail = "source_hash orders the servers by the client address: give --client"
        return Plan(upstream, None, detail, servers, dns)
    candidates = _servers(pool.candidates("" if client is None else str(client), now=0.0))
    detail = {
        "round_robin": "round_robin on a fresh pool: the first connection's order; each connection moves it on",
        "least_conn": "least_conn with no open connections: the order follows weight and the rotation",
        "random": "random: one weighted draw; each connection draws its own order",
        "first": "first: config order",
        "source_hash": f"source_hash: the fixed order for {client}",
    }[balance]
    tries = f"at most 1 + retries ({upstream.retries}) servers, backups after every primary"
    return Plan(upstream, candidates, f"{detail}; {tries}; every server taken as up", servers, dns)


def _join(items: tuple[Any, ...]) -> str:
    return ", ".join(str(item) for item in items)


def render_text(explanation: Explanation) -> str:
    """One block for people: who, allow/deny, each route, the decision, the servers in order."""
    e = explanation
    who = "(none given)" if e.client is None else join_host_port(str(e.client), e.port) if e.port else str(e.client)
    lines = [f"listener {e.listener} ({e.listen}), client {who}, sni {e.sni or '(none)'}"]
    if e.reads_first_bytes:
        lines.append(
            f"  sends: protocol {e.protocol or '(none)'}, alpn {_join(e.alpn) or '(none)'}, host {e.host or '(none)'}"
        )
    lines += [f"  note: {note}" for note in e.notes]
    access = e.access
    lines.append(f"access: {access.decision}: {access.detail}")
    if e.routes:
        lines.append("routes, in order:")
    for step in e.routes:
        why = "; ".join(f"{c.kind}: {c.detail}" for c in step.conditions) or "no conditions (a default route)"
        lines.append(f"  route {step.label} -> upstream {step.upstream}: {step.status.replace('_', ' ')}: {why}")
    lines.append(f"decision: {_decision_text(e)}")
    if e.plan is not None:
        lines += _plan_text(e.plan)
    return "\n".join(lines)


def _decision_text(e: Explanation) -> str:
    routed = None if e.plan is None else f"route {e.route}, upstream {e.plan.upstream.name}"
    if e.decision == "routed":
        return f"{routed}"
    if e.decision == "denied":
        return "denied (result=denied)"
    if e.decision == "no_route":
        return "no route matches (result=no_route)"
    if e.decision == "tls_error":
        return (
            "no route names what it speaks: the TLS handshake runs and fails"
            " (result=tls_error; timeout for a client that stays silent)"
        )
    if routed is not None:
        return f"undecided: allow/deny depend on the client address (give --client); if allowed: {routed}"
    return "undecided: it depends on the client address (give --client)"


def _plan_text(plan: Plan) -> list[str]:
    upstream = plan.upstream
    servers = ", ".join(_server_text(*server) for server in plan.servers) or "none"
    extras = "".join(
        [
            f", PROXY {upstream.proxy_protocol} header" if upstream.proxy_protocol else "",
            ", TLS to the servers" if upstream.tls is not None else "",
        ]
    )
    lines = [f"upstream {upstream.name}: balance {upstream.balance}{extras}; servers {servers}"]
    lines += [f"  DNS: {said}" for said in plan.dns]
    if plan.candidates is None:
        lines.append(f"  {plan.detail}")
        return lines
    order = "  ".join(f"{n}. {_server_text(*c)}" for n, c in enumerate(plan.candidates, 1))
    lines += [f"servers tried in order: {order}", f"  ({plan.detail})"]
    return lines


def _server_text(address: str, weight: int, backup: bool) -> str:
    tags = [f"weight {weight}"] if weight != 1 else []
    tags += ["backup"] if backup else []
    return f"{address} ({', '.join(tags)})" if tags else address
