"""Serving a configuration: a `Server` puts a `Config` to work on one reactor and keeps it at work
through reloads and run-time changes until it drains.

It gets each listener's socket (bound, or passed by systemd or its supervisor), puts every load
in force whole, and answers what the admin surfaces (proxy/admin) ask of it: `snapshot()`, and the
few changes an operator makes at run time (kill a connection, servers in maintenance, added or
removed, dump rules, toxics); its `dns` follows the names pools have. What one client goes
through between accept and connect is its listener's `Frontend`'s business
(proxy/serve/frontend.py), under the `Table` of the load it came in by.

SIGTERM/SIGINT drain: listeners close at once, open pairs get `shutdown_grace`, the rest are
closed with `result=shutdown`. SIGHUP reloads the file, all or nothing: every new listener is
bound and every TLS context built before anything changes (a `Build`, proxy/serve/build.py); on
any failure what was built is closed and the old table keeps serving (`reload_failed`, one line
per problem). Listeners keep their socket when their address stays, and servers whose upstream
and address stay keep their health, back-off, balancing state and open-connection counts.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from proxy import __version__
from proxy.admin.command_socket import CommandSocket
from proxy.admin.commands import ServerChange, dump_answer
from proxy.admin.stats import connection_row, process_stats, server_rows
from proxy.admin.web import AdminHttp
from proxy.config.dumping import parse_dump_condition
from proxy.config.loader import ConfigError, load_config
from proxy.config.schema import NO_OVERRIDES, Config, DumpOverrides, PcapConfig, listener_key, with_overrides
from proxy.config.sockets import effective_backlog, somaxconn
from proxy.config.units import SocketAddress
from proxy.errors import StartupError, describe_os_error
from proxy.log import EventLog
from proxy.loop.drain import attach_output
from proxy.loop.listener import HandedSockets, bind_listening_socket, raise_fd_limit
from proxy.loop.reactor import Reactor
from proxy.loop.resolver import Resolver
from proxy.loop.sockopts import configure_listening
from proxy.output import open_private
from proxy.output.pcap_sink import STANDARD_OUTPUT, PcapSink, worker_path
from proxy.output.tap import HexdumpWriter
from proxy.policy.upstreams import Pool
from proxy.relay.dumping import Rule
from proxy.relay.runtime import Runtime
from proxy.relay.splice import SPLICE_AVAILABLE
from proxy.serve import runtime_faults
from proxy.serve.build import Build
from proxy.serve.dns_follow import DnsFollowing
from proxy.serve.frontend import DumpOutputs, Frontend
from proxy.serve.health import HealthChecker
from proxy.serve.operator_servers import OperatorServers
from proxy.serve.systemd import Systemd


class Server:
    """Binds every listener of a config on one reactor and serves until told to stop."""

    def __init__(
        self,
        config: Config,
        log: EventLog,
        *,
        overrides: DumpOverrides = NO_OVERRIDES,
        config_path: Path | None = None,
        worker: tuple[int, int] = (0, 1),
        port_pins: dict[str, int] | None = None,
        splice: bool = SPLICE_AVAILABLE,
        handed: HandedSockets | None = None,
        keylog: str | None = None,
    ) -> None:
        """`worker` is (index, count) under `run --workers`; `port_pins` fixes port-0 listeners;
        `handed`, a worker's, holds the listening sockets its supervisor bound for it; `keylog`
        is the file (made ready by `open_keylog`) every TLS context of every load writes its secrets to.

        `splice` lets plain pairs move bytes with os.splice (where the platform has it); `overrides`
        (the dump flags) apply to the file's table at every load.
        """
        self.worker = worker
        self.handed = handed
        self.keylog = keylog
        self.splice = splice and SPLICE_AVAILABLE
        self.port_pins = port_pins or {}
        self.overrides = overrides
        self.config = self._pinned(with_overrides(config, overrides))
        self.config_path = config_path
        self.log = log
        self.reactor = Reactor(log)
        attach_output(self.reactor, log.output)
        self.systemd = Systemd.from_environment(self.reactor)
        self.resolver = Resolver(self.reactor)
        self.hexdump = HexdumpWriter(self._dump_stream(self.config.dump_file))
        attach_output(self.reactor, self.hexdump.output)
        self.sinks: dict[str, PcapSink] = {}  # capture targets by path, for the life of the process
        self.dump_rules: list[Rule] = []  # turned on at run time (`dump on`); kept across reloads
        self.runtime = Runtime(self.reactor, self.resolver, log, worker, max_buffered=config.max_buffered)
        self.pools: dict[str, Pool] = {}
        self.health: list[HealthChecker] = []
        self.dns = DnsFollowing(self.reactor, log)  # the pools' names followed, if any
        self.operator = OperatorServers(log)
        self.listeners: dict[str, Frontend] = {}
        self.draining = False
        self._interrupts = 0
        self.admin: CommandSocket | None = None
        self.admin_http: AdminHttp | None = None  # answers /ready with 503 while draining, closed at exit
        self.started = time.time()  # Unix time, to show; uptime is measured on the monotonic clock
        self._started_monotonic = time.monotonic()
        self.reloads = 0

    @staticmethod
    def _dump_stream(path: str | None) -> TextIO | None:
        """The hex dump's file (appended to, made 0600: it holds traffic, TLS plaintext too), or None
        for standard output."""
        if path is None or path == STANDARD_OUTPUT:
            return None
        try:
            return os.fdopen(open_private(path, append=True), "a", encoding="utf-8")  # for the life of the server
        except OSError as exc:
            raise StartupError(f"dump file {path}: {describe_os_error(exc)}") from None

    def _sink_for(self, config: PcapConfig) -> PcapSink:
        """The capture target `config` names, opened once and shared by every listener naming it."""
        path = worker_path(config.path, *self.worker)
        sink = self.sinks.get(path)
        if sink is not None:
            sink.config = config  # a reload may change its rotation: the file stays open
        else:
            try:
                sink = PcapSink(config, path, self.log.warning)
            except OSError as exc:
                raise StartupError(f"pcap file {path}: {describe_os_error(exc)}") from None
            attach_output(self.reactor, sink.output)
            self.sinks[path] = sink
        return sink

    def bind(self, *, signals: bool = True) -> None:
        """Get ready to serve: take over the signals, then bind every listener, or none (a
        StartupError names the first problem and nothing stays bound).

        The handlers go in first: a signal sent as soon as `listening` is logged must already
        find them (the default action of SIGHUP and SIGTERM would kill the process). `signals`
        False leaves them alone, for a Server run on a thread of another program.
        """
        raise_fd_limit()
        if signals:
            self.reactor.add_signal_handler(signal.SIGTERM, self.drain)
            self.reactor.add_signal_handler(signal.SIGINT, self._interrupt)
            self.reactor.add_signal_handler(signal.SIGHUP, self.reload)
        admin = self.config.admin
        # Under `run --workers` the admin socket is the supervisor's to serve, not each worker's.
        if admin is not None and admin.socket is not None and self.worker[1] == 1:
            try:
                self.admin = CommandSocket(self.reactor, admin.socket, self, self.log)
            except StartupError:
                self.close()
                raise
        if admin is not None and admin.http is not None and self.worker[1] == 1:
            try:
                self.admin_http = AdminHttp(
                    self.reactor, self.log, admin.http, self.snapshot, lambda: "draining" if self.draining else None
                )
            except StartupError as exc:
                self.close()
                raise StartupError(f"admin http: {exc}") from None
        build = self._build(self.config)
        if build.problems:
            build.discard()
            self.close()
            raise StartupError(build.problems[0])
        self._swap(build)
        self.systemd.serving(len(self.listeners))

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

    def serve(self) -> None:
        """Run the loop until a stop signal has drained the connections (after `bind`)."""
        try:
            self.reactor.loop()
        finally:
            self.close()

    # -- (re)loading: build everything, then swap ----------------------------------------

    def _build(self, config: Config) -> Build:
        """Everything `config` needs, with nothing running yet; `problems` says what failed."""
        passed = self.systemd.assign(config.listeners)  # socket activation: never bound here, now or on a reload
        return Build.of(
            config,
            self.listeners,
            passed,
            bind=self._listening_socket,
            splice=self.splice,
            dump_outputs=self._dump_outputs(),
            keylog=self.keylog,
        )

    def _listening_socket(self, address: SocketAddress) -> socket.socket:
        """A worker's is the one its supervisor handed over: a worker binding on its own could
        join another instance's SO_REUSEPORT group unnoticed."""
        return bind_listening_socket(address) if self.handed is None else self.handed.take(address)

    def _swap(self, build: Build) -> tuple[int, int]:
        """Put a complete build in force; (listeners kept, listeners started)."""
        config = build.config
        for key in [key for key in self.listeners if key not in build.tables]:
            listener = self.listeners.pop(key)
            listener.dispatcher.close()
            self.log.info("listener_stopped", listener=listener.name)
        for checker in self.health:
            checker.stop()
        for name, pool in build.pools.items():
            previous = self.pools.get(name)
            if previous is not None:
                pool.take_over(previous)
            for server in pool.servers:
                server.changed_at = server.changed_at or self.reactor.now  # new: in its first state since now
        self.config, self.pools = config, build.pools
        self.health = [
            HealthChecker(self.reactor, self.resolver, pool, self.log)
            for pool in self.pools.values()
            if pool.config.health_check is not None
        ]
        self.dns.follow(config.resolvers, self.pools)
        for name, upstream in config.upstreams.items():
            if upstream.tls is not None and not upstream.tls.verify:
                self.log.warning("tls_verify_off", upstream=name, risk="any server certificate is accepted")
        kept = 0
        for key, table in build.tables.items():
            if key in self.listeners:
                running = self.listeners[key]
                try:
                    configure_listening(running.dispatcher.socket, table.config, running.table.config)
                except OSError as exc:  # they worked at the bind: a kernel that changed its mind
                    error = describe_os_error(exc)
                    self.log.warning("listener_options_failed", listener=table.settings.listener, error=error)
                running.apply(table)
                kept += 1
                continue
            listener = self.listeners[key] = Frontend(
                self.reactor, self.runtime, build.new_sockets.pop(key), table, self.pair_finished
            )
            self.log.info("listening", listener=listener.name, address=listener.dispatcher.address)
        return kept, len(build.tables) - kept

    def reload(self, keep_runtime: bool = False) -> list[str]:
        """Re-read the file and put it in force whole, or keep serving the old table; the problems
        that kept it from being put in force, if any; the servers an operator changed are changed
        again (`keep_runtime`) or dropped."""
        if self.config_path is None:
            reason = "no configuration file (forward mode)"
            self.log.warning("reload_ignored", reason=reason)
            self.systemd.reloading()  # systemd's notify-reload waits for this pair after its SIGHUP
            self.systemd.reloaded(len(self.listeners), reason)
            return [reason]
        if self.draining:
            return ["draining"]
        self.systemd.reloading()
        try:
            loaded = load_config(self.config_path)
        except ConfigError as exc:
            for message in exc.messages:
                self.log.error("reload_failed", error=message)
            self.log.error("reload_rejected", file=self.config_path, errors=len(exc.messages))
            self.systemd.reloaded(len(self.listeners), exc.messages[0])
            return exc.messages
        for warning in loaded.warnings:
            self.log.warning("config_warning", warning=warning)
        if loaded.config.admin != self.config.admin:
            self.log.warning("config_warning", warning="a changed admin: section takes effect at the next start")
        build = self._build(self._pinned(with_overrides(loaded.config, self.overrides)))
        if build.problems:
            build.discard()
            for problem in build.problems:
                self.log.error("reload_failed", error=problem)
            self.log.error("reload_rejected", file=self.config_path, errors=len(build.problems))
            self.systemd.reloaded(len(self.listeners), build.problems[0])
            return build.problems
        kept, started = self._swap(build)
        self.operator.reloaded(self.pools, keep_runtime)
        self.reloads += 1
        self.log.info("reloaded", file=self.config_path, listeners=len(self.listeners), kept=kept, started=started)
        self.systemd.reloaded(len(self.listeners))
        return []

    # -- what the admin surfaces show and do -----------------------------------------------

    def snapshot(self) -> dict:
        """Everything the admin surfaces show, as plain JSON-able data (see docs/operations.md)."""
        now = self.reactor.now
        uptime = time.monotonic() - self._started_monotonic
        listeners_now = self.listeners.values()
        listeners = [
            frontend.stats.to_json(frontend.name, frontend.dispatcher.address, list(frontend.pairs))
            for frontend in listeners_now
        ]
        return {
            "info": {
                "version": __version__,
                "pid": os.getpid(),
                "worker": self.worker[0],
                "workers": self.worker[1],
                "started": self.started,
                "uptime": uptime,
                "listeners": len(self.listeners),
                "connections": len(self.runtime.pairs),
                "reloads": self.reloads,
                "log_dropped": self.log.output.dropped_total,
                "draining": self.draining,
                "somaxconn": somaxconn(),
                "backlog": " ".join(f"{each.name}={effective_backlog(each.table.config)}" for each in listeners_now),
            },
            "listeners": listeners,
            "servers": server_rows(self.pools, now),
            "dns": self.dns.rows(),
            "dns_queries": self.dns.queries(),
            "conns": [connection_row(pair, now) for pair in sorted(self.runtime.pairs, key=lambda pair: pair.conn)],
            "process": process_stats(),
        }

    def kill_conn(self, conn: int) -> bool:
        """End open connection `conn` (result=shutdown); False if there is none."""
        for pair in self.runtime.pairs:
            if pair.conn == conn:
                pair.finish("shutdown", "killed by admin")
                return True
        return False

    def _dump_outputs(self) -> DumpOutputs:
        return self.hexdump, self._sink_for, tuple(self.dump_rules)

    def set_dump(self, on: bool, filters: list[str]) -> str:
        """Dump (and capture, where a capture is configured) the connections `filters` select,
        new ones and open ones (`on`), or stop that. ValueError for a filter that is not one."""
        return dump_answer(on, *self.change_dump(on, filters))

    def change_dump(self, on: bool, filters: list[str]) -> tuple[int, int]:
        """`set_dump`'s change: (open connections changed, run-time rules now)."""
        rule = tuple(parse_dump_condition(text) for text in filters)
        if on and self.config.dump_file in (None, STANDARD_OUTPUT) and STANDARD_OUTPUT in self.sinks:
            raise ValueError("a capture goes to standard output: the hex dump needs a dump_file")
        if on and rule not in self.dump_rules:
            self.dump_rules.append(rule)
        elif not on:
            self.dump_rules = [kept for kept in self.dump_rules if kept != rule]
        outputs = self._dump_outputs()
        plans = {}
        for frontend in self.listeners.values():
            frontend.apply(frontend.table.with_dump_rules(outputs))
            plans[frontend.name] = frontend.table.settings.dump
        changed = 0
        for pair in list(self.runtime.pairs):
            listener = pair.settings.listener
            if listener in plans and pair.replan_dump(plans[listener]):
                continue  # not relaying yet: it decides with the new rules when it is
            facts = pair.facts()
            if not facts.hold(rule):
                continue
            tap = None
            if on:
                plan = plans.get(listener)
                tap = (plan.decide(facts).tap if plan is not None else None) or self.hexdump
            changed += pair.set_dumped(tap, self.hexdump)
        return changed, len(self.dump_rules)

    def set_server_maintenance(self, upstream: str, address: str, on: bool) -> bool:
        """Put a server in maintenance (`on`) or back in service; False if there is no such server."""
        return self.operator.maintenance(self.pools, upstream, address, on, self.reactor.now)

    def change_server(self, change: ServerChange) -> str:
        """Add, remove (it drains) or weigh a server until the next reload; ValueError says why not."""
        return self.operator.make(self.pools, change)

    def runtime_changes(self) -> list[str]:
        return [str(change) for change in self.operator.changes]

    # -- faults at run time (the admin socket's `fault add`, `fault remove`, `fault list`) --

    def add_fault(self, target: str, spec: str) -> str:
        return runtime_faults.add(self.listeners.values(), target, spec)

    def remove_fault(self, target: str, kind: str) -> str:
        return runtime_faults.remove(self.listeners.values(), target, kind)

    def list_faults(self) -> list[str]:
        return runtime_faults.listed(self.listeners.values())

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
        self.systemd.stopping()
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
        if self.admin is not None:
            self.admin.close()
        if self.admin_http is not None:
            self.admin_http.close()
        for pair in list(self.runtime.pairs):
            pair.finish("shutdown")
        for checker in self.health:
            checker.stop()
        self.dns.close()
        for listener in self.listeners.values():
            listener.dispatcher.close()
        self.resolver.close()
        # The log is flushed by whoever exits (cli.py, a worker): it outlives this server.
        self.log.output.detach()
        self.hexdump.output.flush()
        self.hexdump.output.close()
        for sink in self.sinks.values():
            sink.close()
        self.systemd.close()
        self.reactor.close()
