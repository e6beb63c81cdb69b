"""Admission: what happens to a client between accept and connect, under the rules it came in by.

Each (re)load builds, per listener, one immutable `Table`: its policy, routes, pools, TLS
contexts and pair settings. A `Frontend` is one listener at work; each client it accepts becomes
a Pair and an `Admission` that carries the Table the client was accepted under through every
step: the trusted-peer check, the PROXY header, allow/deny, TLS or the SNI peek, routing and the
connect. A reload therefore never changes a client's rules halfway, and an unexpected exception
in any step ends only that client (`result=error`).

A listener whose routes match on the client's first bytes (a protocol, ALPN, a Host, a prefix, or
SNI without terminating TLS) peeks at them before routing: the table decides as soon as the
bytes read are enough and waits only while a route before the one that matches is undecided, for
at most `peek_timeout` (`connect_timeout` when only SNI is matched). On a TLS-terminating listener
the ClientHello is read before the handshake, and the handshake then answers with the context
of the route picked (its ALPN list); a route naming no `protocol` there is a TLS route, and a
client that speaks something no route names gets the handshake too (and fails it), so nothing
reaches an upstream past it unencrypted. Other listeners read nothing before the connect.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from proxy.admin.stats import ListenerStats
from proxy.config.schema import ListenerConfig, MatchConfig, RouteConfig
from proxy.config.units import IPNetwork, canonical_ip, format_sockaddr, unix_peer
from proxy.loop.listener import Listener
from proxy.loop.reactor import Reactor
from proxy.output.tap import HexdumpWriter
from proxy.policy.faults import FaultPlan
from proxy.policy.routes import (
    WAIT,
    AccessPolicy,
    Described,
    RouteTable,
    canonical_networks,
    first_network,
    first_pattern,
)
from proxy.policy.upstreams import Pool
from proxy.protocol import proxyproto
from proxy.protocol.detect import PEEK_LIMIT, FirstBytes
from proxy.relay.dumping import DumpPlan, Rule, SinkFor
from proxy.relay.pair import Pair
from proxy.relay.preamble import PreambleReader
from proxy.relay.runtime import PairSettings, Runtime
from proxy.serve.contexts import server_context

_UCRED = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid

UpstreamTls = Mapping[str, tuple[ssl.SSLContext, str | None]]
# Where a listener's hex dump and captures go, and the dump rules turned on at run time.
DumpOutputs = tuple[HexdumpWriter, SinkFor, tuple[Rule, ...]]


def _parse_proxy_header(data: bytes) -> tuple[proxyproto.ProxyInfo, int] | None:
    result = proxyproto.parse(data)
    return None if result is proxyproto.NEED_MORE else result


def _conditions_held(match: MatchConfig, address: Any, server_name: str | None) -> str:
    """Why a selected route matched, for the timeline: the network and the name pattern that held."""
    held = []
    if match.source:
        held.append(f"source {first_network(address, match.source)}")
    if match.sni:
        held.append(f"sni {first_pattern(match.sni, server_name)}")
    if match.reads_first_bytes:
        held.append("first bytes")
    return " and ".join(held) or "default"


Selected = tuple[str | int, RouteConfig]


@dataclass(frozen=True, slots=True)
class Table:
    """One listener's rules as one (re)load built them: all a connection needs from accept to connect."""

    config: ListenerConfig
    settings: PairSettings
    policy: AccessPolicy
    routes: RouteTable
    pools: Mapping[str, Pool]
    upstream_tls: UpstreamTls
    tls_context: ssl.SSLContext | None
    trusted: tuple[IPNetwork, ...] | None  # the PROXY peers believed, canonical; None: every peer
    uses_source: bool  # some rule looks at the client's address
    peek: bool  # routes match on the first bytes (or on SNI, passed through): read them first
    peek_timeout: float  # how long the first bytes are waited for
    alpn_contexts: Mapping[tuple[str, ...], ssl.SSLContext]  # terminating: a route's ALPN list -> its context

    @classmethod
    def build(
        cls,
        config: ListenerConfig,
        name: str,
        pools: Mapping[str, Pool],
        upstream_tls: UpstreamTls,
        *,
        splice: bool,
        dump_outputs: DumpOutputs,
        keylog: str | None = None,
    ) -> Table:
        """The table of `config`; ssl.SSLError or OSError when its TLS certificate cannot be loaded.

        `splice` allows os.splice; `dump_outputs` are where its dumps and captures go, and the
        dump rules turned on at run time; `keylog`, where its TLS secrets go, if anywhere.
        """
        policy = AccessPolicy.of(config)
        routes = RouteTable(config.served_routes)
        tls = config.tls
        trusted = config.proxy_trusted
        tls_context = None if tls is None else server_context(tls.certificate, tls.others, tls.client_ca, keylog=keylog)
        alpn_contexts = {}
        if tls is not None:
            for alpn in {route.match.alpn for route in routes.routes if route.match.alpn}:
                alpn_contexts[alpn] = server_context(
                    tls.certificate, tls.others, tls.client_ca, keylog=keylog, alpn=alpn
                )
        return cls(
            config=config,
            settings=PairSettings(
                listener=name,
                connect_timeout=config.connect_timeout,
                idle_timeout=config.idle_timeout,
                buffer_size=config.buffer_size,
                dump=DumpPlan.of(config, name, *dump_outputs),
                splice=splice,
                faults=FaultPlan.of(config),
            ),
            policy=policy,
            routes=routes,
            pools=pools,
            upstream_tls=upstream_tls,
            tls_context=tls_context,
            trusted=None if trusted is None else canonical_networks(trusted),
            uses_source=config.allow is not None or bool(config.deny) or routes.needs_source,
            peek=routes.reads_first_bytes or (tls is None and routes.needs_server_name),
            peek_timeout=config.peek_timeout if routes.reads_first_bytes else config.connect_timeout,
            alpn_contexts=alpn_contexts,
        )

    def with_dump_rules(self, dump_outputs: DumpOutputs) -> Table:
        """This table with the run-time dump rules of `dump_outputs` (the rest stays as built)."""
        dump = DumpPlan.of(self.config, self.settings.listener, *dump_outputs)
        return replace(self, settings=replace(self.settings, dump=dump))

    def trusts(self, peer: tuple) -> bool:
        """Whether a PROXY header from the TCP peer `peer` is to be believed."""
        if self.trusted is None:
            return True
        return first_network(canonical_ip(peer[0]), self.trusted) is not None


class Admission:
    """One accepted client on its way to an upstream, under the Table it was accepted with.

    Each step runs through `run`: an unexpected exception ends this client alone, through the
    pair's failure path (`connection_error`, then `result=error`), never the listener.
    """

    __slots__ = ("address", "destination", "frontend", "pair", "source", "table")

    def __init__(self, frontend: Frontend, table: Table, pair: Pair, peer: tuple) -> None:
        self.frontend = frontend
        self.table = table
        self.pair = pair
        self.source = peer
        self.destination: tuple | None = None  # what a PROXY header says the client reached
        self.address: Any = None  # what allow/deny and routes see: an ip_address, or the host text when none look

    def run(self, step: Callable[..., None], *args: Any) -> None:
        try:
            step(*args)
        except Exception as exc:  # a bug in one client's admission must not reach the listener
            self.pair.failed(self.pair.client, exc)

    def start(self) -> None:
        table = self.table
        if not table.config.accept_proxy_protocol:
            self.admit(b"")
            return
        if not table.trusts(self.source):
            self.pair.finish("denied", "untrusted proxy")
            return
        PreambleReader(
            self.pair,
            "PROXY header",
            _parse_proxy_header,
            proxyproto.MAX_HEADER,
            lambda info, rest: self.run(self.proxy_header_read, info, rest),
        )

    def proxy_header_read(self, info: proxyproto.ProxyInfo, rest: bytes) -> None:
        if info.source is not None:  # a LOCAL or UNKNOWN header names nobody: the peer it is
            self.source, self.destination = info.source, info.destination
            self.pair.set_client_address(info.source)
        if self.pair.timeline:
            if info.source is None:
                self.pair.event("preamble", kind="proxy", found="local")
            else:
                source, destination = format_sockaddr(info.source), format_sockaddr(info.destination)
                self.pair.event("preamble", kind="proxy", source=source, destination=destination)
        self.admit(rest)

    def admit(self, rest: bytes) -> None:
        """Who the client is is known: apply allow/deny, then find out what it routes by."""
        table, pair = self.table, self.pair
        # Parsing the address costs more than the rest of admission; only rules that look at it need it.
        host = self.source[0]
        self.address = canonical_ip(host) if table.uses_source else host
        if table.uses_source and not table.policy.permits(self.address):
            pair.finish("denied", f"source {self.address} is not allowed")
            return
        if table.peek:
            PreambleReader(
                pair,
                "first bytes",
                self.decide,
                PEEK_LIMIT,
                lambda decided, data: self.run(self.peeked, decided, data, None),
                initial=rest,
                on_incomplete=lambda data, why: self.run(self.peek_ended, data, why),
                timeout=table.peek_timeout,
            )
        elif table.tls_context is not None:
            pair.terminate_tls(table.tls_context, self.tls_done, rest)
        else:
            self.connect(table.routes.select(self.address), rest, None)

    def tls_done(self, pair: Pair) -> None:
        server_name = pair.client.session.server_name
        self.run(self.connect, self.table.routes.select(self.address, server_name), b"", server_name)

    def decide(self, data: bytes, final: bool = False) -> tuple[tuple[Selected | None, FirstBytes], int] | None:
        """The peek's parse: None while the table waits, else (the route or None, the bytes), 0 consumed."""
        first = FirstBytes(data, final)
        selected = self.table.routes.decide(self.address, first)
        return None if selected is WAIT else ((selected, first), 0)

    def peek_ended(self, data: bytes, why: str) -> None:
        """No more bytes within peek_timeout ("timeout"), or the client's end ("eof"): decide with
        what came. A client that closes without a byte sent is done (a health check, say)."""
        if not data and why == "eof":
            self.pair.finish("closed", "silent", by="client")
            return
        decided, _ = self.decide(data, final=True)
        self.peeked(decided, data, why)

    def peeked(self, decided: tuple[Selected | None, FirstBytes], data: bytes, why: str | None) -> None:
        """The first bytes decided: note what they are, then terminate TLS or connect."""
        selected, first = decided
        table, pair = self.table, self.pair
        pair.protocol = first.protocol()
        hello = first.hello
        if hello is not None:
            pair.sni, pair.alpn = hello.server_name, ",".join(hello.alpn) or None
        routes = table.routes
        if routes.needs_server_name and (pair.protocol == "tls" or not routes.reads_first_bytes):
            pair.note = why if hello is None else hello.reason  # why a route on SNI did not match
        if pair.protocol == "http":
            pair.host = first.host()[1]
        if pair.timeline:
            seen = {"sni": pair.sni, "reason": pair.note, "alpn": pair.alpn, "host": pair.host}
            pair.event("preamble", kind="first_bytes", protocol=pair.protocol, **seen)
        if table.tls_context is not None and selected is None and pair.protocol != "tls":
            # No route names what this client speaks: it gets the handshake every client of a
            # terminating listener gets, which fails unless it was a slow ClientHello after all.
            pair.terminate_tls(table.tls_context, self.tls_done_undecided, data)
            return
        if selected is not None and table.tls_context is not None and pair.protocol == "tls":
            context = table.alpn_contexts.get(selected[1].match.alpn, table.tls_context)
            pair.terminate_tls(context, lambda _pair: self.run(self.connect, selected, b"", pair.sni), data)
            return
        self.connect(selected, data, pair.sni)

    def tls_done_undecided(self, pair: Pair) -> None:
        """The handshake the first bytes did not route: route the TLS client it showed, by its
        server name (it offered no ALPN the peek saw, and the listener's own context answered none)."""
        pair.protocol = "tls"  # what the peek could not tell in time, the handshake has
        server_name = pair.client.session.server_name
        selected = self.table.routes.decide(self.address, Described("tls", sni=server_name))
        assert selected is not WAIT  # a described client has said all it will
        self.run(self.connect, selected, b"", server_name)

    def connect(self, selected: Selected | None, payload: bytes, server_name: str | None) -> None:
        """Connect to the upstream of the route selected (None: `no_route`), `payload` first."""
        table, pair = self.table, self.pair
        if selected is None:
            pair.finish("no_route")
            return
        pair.route, route = selected
        if pair.timeline:
            why = _conditions_held(route.match, self.address, server_name)
            pair.event("routed", route=pair.route, upstream=route.upstream, match=why)
        pool = table.pools[route.upstream]
        preface = b""
        if pool.config.proxy_protocol is not None:
            destination = self.destination or self.frontend.destination_of(pair)
            preface = proxyproto.encode(pool.config.proxy_protocol, self.source[:2], destination)
        candidates = pool.candidates(str(self.address), self.frontend.reactor.now)
        pair.connect(
            pool, candidates, preface=preface, payload=payload, upstream_tls=table.upstream_tls.get(route.upstream)
        )


class Frontend:
    """One configured listener at work: its socket, its current Table, its open connections.

    It is given what it needs and nothing more: the reactor it accepts on, the runtime its pairs
    share, and whom to tell when one of its connections ends.
    """

    def __init__(
        self,
        reactor: Reactor,
        runtime: Runtime,
        sock: socket.socket,
        table: Table,
        on_finished: Callable[[], None],
    ) -> None:
        self.reactor = reactor
        self.runtime = runtime
        self.on_finished = on_finished
        self.unix = sock.family == socket.AF_UNIX
        on_accept = self.accept_unix if self.unix else self.accept
        self.dispatcher = Listener(reactor, sock, table.settings.listener, on_accept)
        self.local_address = unix_peer(sock.getsockname()) if self.unix else sock.getsockname()[:2]
        # On 0.0.0.0 or [::] the address a client reached is only known per connection.
        self.wildcard = not self.unix and ipaddress.ip_address(self.local_address[0]).is_unspecified
        self.pairs: set[Pair] = set()  # its open connections (max_connections, snapshots)
        self.stats = ListenerStats()
        self.apply(table)

    @property
    def name(self) -> str:
        return self.table.settings.listener

    def apply(self, table: Table) -> None:
        """Take a (new) table for new clients; the socket and the open connections stay as they are."""
        self.table = table
        self.dispatcher.name = table.settings.listener

    def accept_unix(self, sock: socket.socket, peer: str | bytes) -> None:
        """A client of a UNIX socket: named by its own path, else (unnamed, as most are) by the
        listener's; who it is, by the credentials the kernel took when it connected."""
        pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        self.accept(sock, unix_peer(peer) if peer else self.local_address, {"peer_uid": uid, "peer_pid": pid})

    def accept(self, sock: socket.socket, peer: tuple, credentials: dict[str, int] | None = None) -> None:
        table = self.table
        pair = Pair(self.runtime, table.settings, sock, peer, self.finished)
        if credentials:
            pair.credentials = credentials
        self.stats.connections_total += 1
        self.pairs.add(pair)
        if len(self.pairs) > table.config.max_connections:
            pair.finish("limit", f"max_connections {table.config.max_connections} reached")
            return
        admission = Admission(self, table, pair, peer)
        admission.run(admission.start)

    def destination_of(self, pair: Pair) -> tuple:
        """The address the client reached, for a PROXY header to the upstream (a UNIX listener's
        as ("unix", path))."""
        return pair.client.socket.getsockname()[:2] if self.wildcard else self.local_address

    def finished(self, pair: Pair) -> None:
        self.pairs.discard(pair)
        self.stats.finished(pair)
        self.on_finished()
