"""Serving a configuration: listeners, routing decisions, upstream pools, signals and reload.

`Server` turns a `Config` into bound listeners on one reactor. Each accepted client becomes a
Pair; its listener checks the limit, reads a PROXY header if the listener trusts one, applies
allow/deny, picks the route and asks the route's pool which servers to try.

SIGTERM/SIGINT drain: listeners close at once, open pairs get `shutdown_grace`, the rest are
closed with `result=shutdown`. SIGHUP reloads the file: an invalid file is logged and ignored;
a valid one applies to new connections, and listeners keep their socket when their address
stays (open connections keep the pools and settings they started with).
"""

from __future__ import annotations

import functools
import ipaddress
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from proxy import proxyproto
from proxy.config import Config, ConfigError, ListenerConfig, listener_key, load_config
from proxy.errors import ProxyError
from proxy.health import HealthChecker
from proxy.listener import Listener, bind_listening_socket, raise_fd_limit
from proxy.log import EventLog, HexdumpWriter
from proxy.pair import Pair, PairSettings, PreambleReader, Runtime
from proxy.reactor import Reactor
from proxy.resolver import Resolver
from proxy.routes import AccessPolicy, IPAddress, RouteTable, client_ip
from proxy.side import SPLICE_AVAILABLE
from proxy.sni import MAX_CLIENT_HELLO, Hello, peek_server_name
from proxy.tls import client_context, server_context
from proxy.upstreams import Pool

PEEK_LIMIT = 2 * MAX_CLIENT_HELLO  # a ClientHello's bytes plus its record headers


def _parse_proxy_header(data: bytes) -> tuple[proxyproto.ProxyInfo, int] | None:
    result = proxyproto.parse(data)
    return None if result is proxyproto.NEED_MORE else result


def _peek_client_hello(data: bytes) -> tuple[Hello, int] | None:
    """A peek: the ClientHello stays in the data, to be forwarded as it is."""
    hello = peek_server_name(data)
    return None if hello is None else (hello, 0)


class ListenerRuntime:
    """One configured listener at work: its socket, its policy and routes, its open connections."""

    def __init__(self, server: Server, config: ListenerConfig, sock: socket.socket) -> None:
        self.server = server
        self.dispatcher = Listener(server.reactor, sock, config.name or "", self.accept)
        self.local_address = sock.getsockname()[:2]
        # On 0.0.0.0 or [::] the address a client reached is only known per connection.
        self.wildcard = ipaddress.ip_address(self.local_address[0]).is_unspecified
        self.active = 0
        self.apply(config)

    def apply(self, config: ListenerConfig) -> None:
        """Take a (new) configuration; the socket and the open connections stay as they are."""
        self.config = config
        self.name = config.name or self.dispatcher.address
        self.dispatcher.name = self.name
        self.policy = AccessPolicy.of(config)
        self.table = RouteTable(config.routes)
        self.uses_source = config.allow is not None or bool(config.deny) or self.table.needs_source
        self.pools = self.server.pools
        self.upstream_tls = self.server.upstream_tls
        tls = config.tls
        self.tls_context = None if tls is None else server_context(tls.certificate, tls.others, tls.client_ca)
        self.peek_sni = tls is None and self.table.needs_server_name
        self.settings = PairSettings(
            listener=self.name,
            connect_timeout=config.connect_timeout,
            idle_timeout=config.idle_timeout,
            buffer_size=config.buffer_size,
            hexdump=config.hexdump or self.server.force_hexdump,
            splice=self.server.splice,
        )

    def accept(self, sock: socket.socket, peer: tuple) -> None:
        pair = Pair(self.server.runtime, self.settings, sock, peer, self.finished)
        self.active += 1
        if self.active > self.config.max_connections:
            pair.finish("limit", f"max_connections {self.config.max_connections} reached")
            return
        # What a client is routed by, fixed at accept: a reload affects only later clients.
        route = functools.partial(self._route, pair, self.table, self.pools, self.upstream_tls)
        if self.config.accept_proxy_protocol:
            PreambleReader(
                pair,
                "PROXY header",
                _parse_proxy_header,
                proxyproto.MAX_HEADER,
                lambda info, rest: self._admit(pair, route, info.source or peer, info.destination, rest),
            )
        else:
            self._admit(pair, route, peer, None, b"")

    def _admit(self, pair: Pair, route: Callable[..., None], source: tuple, destination: tuple | None, rest: bytes):
        """Who the client is is known: apply allow/deny, then find out what it routes by."""
        pair.set_client_address(source)
        # Parsing the address costs more than the rest of admission; only rules that look at it need it.
        address = client_ip(source[0]) if self.uses_source else source[0]
        if self.uses_source and not self.policy.permits(address):
            pair.finish("denied", f"source {address} is not allowed")
            return
        route = functools.partial(route, address, source, destination)
        if self.tls_context is not None:
            pair.terminate_tls(self.tls_context, lambda done: route(b"", done.client.session.server_name), rest)
        elif self.peek_sni:
            PreambleReader(
                pair,
                "ClientHello",
                _peek_client_hello,
                PEEK_LIMIT,
                lambda hello, data: self._peeked(pair, route, hello, data),
                initial=rest,
                on_timeout=lambda data: self._peeked(pair, route, Hello(None, "timeout"), data),
            )
        else:
            route(rest, None)

    @staticmethod
    def _peeked(pair: Pair, route: Callable[..., None], hello: Hello, data: bytes) -> None:
        pair.sni = hello.server_name
        pair.note = hello.reason
        route(data, hello.server_name)

    def _route(
        self,
        pair: Pair,
        table: RouteTable,
        pools: dict[str, Pool],
        upstream_tls: dict[str, tuple[ssl.SSLContext, str | None]],
        address: IPAddress | str,  # a str when no rule of this listener looks at the source
        source: tuple,
        destination: tuple | None,
        payload: bytes,
        server_name: str | None,
    ) -> None:
        selected = table.select(address, server_name)
        if selected is None:
            pair.finish("no_route")
            return
        pair.route, route = selected
        pool = pools[route.upstream]
        preface = b""
        if pool.config.proxy_protocol is not None:
            if destination is None:
                destination = pair.client.socket.getsockname()[:2] if self.wildcard else self.local_address
            preface = proxyproto.encode(pool.config.proxy_protocol, source[:2], destination)
        candidates = pool.candidates(str(address), self.server.reactor.now)
        pair.connect(pool, candidates, preface=preface, payload=payload, upstream_tls=upstream_tls.get(route.upstream))

    def finished(self, _pair: Pair) -> None:
        self.active -= 1
        self.server.pair_finished()


class Server:
    """Binds every listener of a config on one reactor and serves until told to stop."""

    def __init__(
        self,
        config: Config,
        log: EventLog,
        *,
        hexdump: bool = False,
        config_path: Path | None = None,
        worker: tuple[int, int] = (0, 1),
        port_pins: dict[str, int] | None = None,
        splice: bool = SPLICE_AVAILABLE,
    ) -> None:
        """`worker` is (index, count) under `run --workers`; `port_pins` fixes port-0 listeners.

        `splice` lets plain pairs move bytes with os.splice (where the platform has it).
        """
        self.worker = worker
        self.splice = splice and SPLICE_AVAILABLE
        self.port_pins = port_pins or {}
        config = self._pinned(config)
        self.config = config
        self.config_path = config_path
        self.log = log
        self.reactor = Reactor(log)
        log.output.attach(self.reactor)
        self.resolver = Resolver(self.reactor)
        self.force_hexdump = hexdump
        self.hexdump = HexdumpWriter()
        self.hexdump.output.attach(self.reactor)
        self.runtime = Runtime(self.reactor, self.resolver, log, self.hexdump, worker)
        self.pools: dict[str, Pool] = {}
        self.upstream_tls: dict[str, tuple[ssl.SSLContext, str | None]] = {}
        self.health: list[HealthChecker] = []
        self.listeners: dict[str, ListenerRuntime] = {}
        self.draining = False
        self._interrupts = 0
        self._start_pools(config)

    def _start_pools(self, config: Config) -> None:
        for checker in self.health:
            checker.stop()
        self.pools = {name: Pool(upstream) for name, upstream in config.upstreams.items()}
        self.upstream_tls = {}
        for name, upstream in config.upstreams.items():
            tls = upstream.tls
            if tls is None:
                continue
            self.upstream_tls[name] = (client_context(tls.ca, tls.verify, tls.client_cert), tls.server_name)
            if not tls.verify:
                self.log.warning("tls_verify_off", upstream=name, risk="any server certificate is accepted")
        self.health = [
            HealthChecker(self.reactor, self.resolver, pool, self.log)
            for pool in self.pools.values()
            if pool.config.health_check is not None
        ]

    def bind(self) -> None:
        """Get ready to serve: take over the signals, then bind every listener, or none (a
        StartupError closes what was already bound).

        The handlers go in first: a signal sent as soon as `listening` is logged must already
        find them (the default action of SIGHUP and SIGTERM would kill the process).
        """
        raise_fd_limit()
        self.reactor.add_signal_handler(signal.SIGTERM, self.drain)
        self.reactor.add_signal_handler(signal.SIGINT, self._interrupt)
        self.reactor.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            for config in self.config.listeners:
                self._start_listener(config)
        except BaseException:
            self.close()
            raise

    def _pinned(self, config: Config) -> Config:
        """Port-0 listeners on the ports the supervisor reserved for every worker."""
        if not self.port_pins:
            return config
        listeners = []
        for listener in config.listeners:
            port = self.port_pins.get(listener_key(listener))
            if port is not None:
                listen = replace(listener.listen, port=port)
                listener = replace(listener, listen=listen, name=listener.name or str(listen))
            listeners.append(listener)
        return replace(config, listeners=tuple(listeners))

    def _start_listener(self, config: ListenerConfig) -> None:
        sock = bind_listening_socket(config.listen, reuse_port=self.worker[1] > 1)
        listener = ListenerRuntime(self, config, sock)
        self.listeners[listener_key(config)] = listener
        self.log.info("listening", listener=listener.name, address=listener.dispatcher.address)

    def serve(self) -> None:
        """Run the loop until a stop signal has drained the connections (after `bind`)."""
        try:
            self.reactor.loop()
        finally:
            self.close()

    # -- reload --------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the file; keep serving the old table if the new one is not valid."""
        if self.config_path is None:
            self.log.warning("reload_ignored", reason="no configuration file (forward mode)")
            return
        if self.draining:
            return
        try:
            loaded = load_config(self.config_path)
        except ConfigError as exc:
            for message in exc.messages:
                self.log.error("reload_failed", error=message)
            self.log.error("reload_rejected", file=self.config_path, errors=len(exc.messages))
            return
        for warning in loaded.warnings:
            self.log.warning("config_warning", warning=warning)
        self._apply(self._pinned(loaded.config))

    def _apply(self, config: Config) -> None:
        wanted = {listener_key(listener): listener for listener in config.listeners}
        for key in [key for key in self.listeners if key not in wanted]:
            listener = self.listeners.pop(key)
            listener.dispatcher.close()
            self.log.info("listener_stopped", listener=listener.name)
        self.config = config
        self._start_pools(config)
        started = kept = 0
        for key, listener_config in wanted.items():
            if key in self.listeners:
                self.listeners[key].apply(listener_config)
                kept += 1
                continue
            try:
                self._start_listener(listener_config)
                started += 1
            except ProxyError as exc:  # a new address that cannot be bound must not stop the rest
                self.log.error("listener_failed", listener=listener_config.name, error=str(exc))
        self.log.info("reloaded", file=self.config_path, listeners=len(self.listeners), kept=kept, started=started)

    # -- stopping ------------------------------------------------------------------------

    def _interrupt(self) -> None:
        self._interrupts += 1
        if self._interrupts == 1:
            self.drain()
        else:
            self.stop_now()

    def drain(self) -> None:
        """Stop accepting; give open connections `shutdown_grace`, then close the rest."""
        if self.draining:
            return
        self.draining = True
        for listener in self.listeners.values():
            listener.dispatcher.close()
        for checker in self.health:
            checker.stop()
        self.log.info("draining", connections=len(self.runtime.pairs), grace_s=self.config.shutdown_grace)
        if self.runtime.pairs:
            self.reactor.call_later(self.config.shutdown_grace, self.stop_now)
        else:
            self.reactor.stop()

    def stop_now(self) -> None:
        for pair in list(self.runtime.pairs):
            pair.finish("shutdown")
        self.reactor.stop()

    def pair_finished(self) -> None:
        if self.draining and not self.runtime.pairs:
            self.reactor.stop()

    def close(self) -> None:
        for pair in list(self.runtime.pairs):
            pair.finish("shutdown")
        for checker in self.health:
            checker.stop()
        for listener in self.listeners.values():
            listener.dispatcher.close()
        self.resolver.close()
        # The log is flushed by whoever exits (cli.py, a worker): it outlives this server.
        self.log.output.detach()
        self.hexdump.output.flush()
        self.hexdump.output.close()
        self.reactor.close()
