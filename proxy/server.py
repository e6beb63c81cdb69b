"""Serving a configuration: the reactor, the listeners, the pairs, and the signals.

`Server` turns a `Config` into bound listeners on one reactor, hands each accepted client to a
new Pair aimed at its route's servers, and stops on SIGTERM/SIGINT: listeners close at once,
open pairs get `shutdown_grace` to finish, the rest are closed with `result=shutdown`.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from dataclasses import replace

from proxy.config import Config, ListenerConfig
from proxy.listener import Listener, bind_listening_socket, raise_fd_limit
from proxy.log import EventLog, HexdumpWriter
from proxy.pair import Pair, PairSettings, Runtime
from proxy.reactor import Reactor
from proxy.resolver import Resolver
from proxy.units import Address


class ListenerRuntime:
    """One configured listener at work: its socket, its settings, its open connections."""

    def __init__(self, server: Server, config: ListenerConfig, sock: socket.socket) -> None:
        self.server = server
        self.config = config
        self.dispatcher = Listener(server.reactor, sock, config.name or "", self.accept)
        self.name = config.name or self.dispatcher.address
        self.dispatcher.name = self.name
        self.settings = PairSettings(
            listener=self.name,
            connect_timeout=config.connect_timeout,
            idle_timeout=config.idle_timeout,
            buffer_size=config.buffer_size,
            hexdump=config.hexdump,
        )
        upstream = server.config.upstreams[config.routes[0].upstream]
        self.servers: tuple[Address, ...] = tuple(s.address for s in upstream.servers)
        self.active = 0

    def accept(self, sock: socket.socket, peer: tuple) -> None:
        pair = Pair(self.server.runtime, self.settings, 0, sock, peer, self.finished)
        self.active += 1
        if self.active > self.config.max_connections:
            pair.finish("limit", f"max_connections {self.config.max_connections} reached")
            return
        pair.connect(self._servers())

    def _servers(self) -> Iterator[Address]:
        return iter(self.servers)

    def finished(self, _pair: Pair) -> None:
        self.active -= 1
        self.server.pair_finished()


class Server:
    """Binds every listener of a config on one reactor and serves until told to stop."""

    def __init__(self, config: Config, log: EventLog, *, hexdump: bool = False) -> None:
        self.config = config
        self.log = log
        self.reactor = Reactor(log)
        self.resolver = Resolver(self.reactor)
        wants_dump = hexdump or any(listener.hexdump for listener in config.listeners)
        self.runtime = Runtime(self.reactor, self.resolver, log, HexdumpWriter() if wants_dump else None)
        self.force_hexdump = hexdump
        self.listeners: list[ListenerRuntime] = []
        self.draining = False
        self._interrupts = 0

    def bind(self) -> None:
        """Bind every listener, or none: a StartupError closes what was already bound."""
        try:
            for config in self.config.listeners:
                if self.force_hexdump and not config.hexdump:
                    config = replace(config, hexdump=True)
                sock = bind_listening_socket(config.listen)
                listener = ListenerRuntime(self, config, sock)
                self.listeners.append(listener)
                self.log.info("listening", listener=listener.name, address=listener.dispatcher.address)
        except BaseException:
            self.close()
            raise

    def serve(self) -> None:
        """Run the loop until a stop signal has drained the connections."""
        raise_fd_limit()
        self.reactor.add_signal_handler(signal.SIGTERM, self.drain)
        self.reactor.add_signal_handler(signal.SIGINT, self._interrupt)
        try:
            self.reactor.loop()
        finally:
            self.close()

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
        for listener in self.listeners:
            listener.dispatcher.close()
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
        self.resolver.close()
        self.reactor.close()
