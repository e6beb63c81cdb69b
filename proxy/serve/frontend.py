"""Admission: what happens to a client between accept and connect, under the rules it came in by.

Each (re)load builds, per listener, one immutable `Table`: its policy, routes, pools, TLS
contexts and pair settings. A `Frontend` is one listener at work; each client it accepts becomes
a Pair and an `Admission` that carries the Table the client was accepted under through every
step: the trusted-peer check, the PROXY header, allow/deny, TLS or the SNI peek, routing and the
connect. A reload therefore never changes a client's rules halfway, and an unexpected exception
in any step ends only that client (`result=error`).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from proxy.config.schema import ListenerConfig, MatchConfig
from proxy.config.units import IPNetwork, canonical_ip, format_sockaddr, unix_peer
from proxy.loop.listener import Listener
from proxy.loop.reactor import Reactor
from proxy.policy.faults import FaultPlan
from proxy.policy.routes import AccessPolicy, RouteTable, canonical_networks, first_network, first_pattern
from proxy.policy.upstreams import Pool
from proxy.protocol import proxyproto
from proxy.protocol.sni import MAX_CLIENT_HELLO, Hello, peek_server_name
from proxy.relay.dumping import DumpPlan, Rule, SinkFor
from proxy.relay.pair import Pair, PairSettings, Runtime
from proxy.relay.preamble import PreambleReader
from proxy.relay.tap import HexdumpWriter
from proxy.serve.contexts import server_context
from proxy.serve.stats import ListenerStats

PEEK_LIMIT = 2 * MAX_CLIENT_HELLO  # a ClientHello's bytes plus its record headers
_UCRED = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid

UpstreamTls = Mapping[str, tuple[ssl.SSLContext, str | None]]
# Where a listener's hex dump and captures go, and the dump rules turned on at run time.
DumpOutputs = tuple[HexdumpWriter, SinkFor, tuple[Rule, ...]]


def _parse_proxy_header(data: bytes) -> tuple[proxyproto.ProxyInfo, int] | None:
    result = proxyproto.parse(data)
    return None if result is proxyproto.NEED_MORE else result


def _peek_client_hello(data: bytes) -> tuple[Hello, int] | None:
    """A peek: the ClientHello stays in the data, to be forwarded as it is."""
    hello = peek_server_name(data)
    return None if hello is None else (hello, 0)


def _conditions_held(match: MatchConfig, address: Any, server_name: str | None) -> str:
    """Why a selected route matched, for the timeline: the network and the name pattern that held."""
    held = []
    if match.source:
        held.append(f"source {first_network(address, match.source)}")
    if match.sni:
        held.append(f"sni {first_pattern(match.sni, server_name)}")
    return " and ".join(held) or "default"


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
    peek_sni: bool  # a passthrough route matches on SNI: read the ClientHello first

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
        routes = RouteTable(config.routes)
        tls = config.tls
        trusted = config.proxy_trusted
        tls_context = None if tls is None else server_context(tls.certificate, tls.others, tls.client_ca, keylog=keylog)
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
            peek_sni=tls is None and routes.needs_server_name,
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
        if table.tls_context is not None:
            pair.terminate_tls(table.tls_context, self.tls_done, rest)
        elif table.peek_sni:
            PreambleReader(
                pair,
                "ClientHello",
                _peek_client_hello,
                PEEK_LIMIT,
                lambda hello, data: self.run(self.peeked, hello, data),
                initial=rest,
                on_incomplete=lambda data, why: self.run(self.peeked, Hello(None, why), data),
            )
        else:
            self.route(rest, None)

    def tls_done(self, pair: Pair) -> None:
        self.run(self.route, b"", pair.client.session.server_name)

    def peeked(self, hello: Hello, data: bytes) -> None:
        self.pair.sni = hello.server_name
        self.pair.note = hello.reason
        if self.pair.timeline:
            self.pair.event("preamble", kind="client_hello", sni=hello.server_name, reason=hello.reason)
        self.route(data, hello.server_name)

    def route(self, payload: bytes, server_name: str | None) -> None:
        table, pair = self.table, self.pair
        selected = table.routes.select(self.address, server_name)
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
        try:  # Admission.run(start), without the extra call per accept
            Admission(self, table, pair, peer).start()
        except Exception as exc:
            pair.failed(pair.client, exc)

    def destination_of(self, pair: Pair) -> tuple:
        """The address the client reached, for a PROXY header to the upstream (a UNIX listener's
        as ("unix", path))."""
        return pair.client.socket.getsockname()[:2] if self.wildcard else self.local_address

    def finished(self, pair: Pair) -> None:
        self.pairs.discard(pair)
        self.stats.finished(pair)
        self.on_finished()
