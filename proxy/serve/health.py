"""Active health checks: a TCP connect to each server of a pool, every `interval`.

The verdicts go to the pool (`Pool.check_result`), which applies `rise`/`fall`; a change of
state is logged as `server_up` or `server_down`. Checks run on the reactor's timers and use the
same non-blocking Connector as client traffic, so they never block the loop, with a name-lookup
lane of their own (`Resolver.health`), so that client lookups stuck on a dead DNS server do not
stop them. A check this process could not make (out of descriptors or local ports) is no
verdict: only failures of the server count.
"""

from __future__ import annotations

from proxy.log import EventLog
from proxy.loop.connector import ConnectAttempt, Connector
from proxy.loop.reactor import Reactor, Timer
from proxy.loop.resolver import Resolver
from proxy.policy.upstreams import Pool, ServerState


class _Probe:
    """One check of one server: the ConnectObserver that reports to the checker."""

    def __init__(self, checker: HealthChecker, server: ServerState) -> None:
        self.checker = checker
        self.server = server

    def connected(self, attempt: ConnectAttempt, _server: ServerState) -> None:
        attempt.close()
        self.checker.verdict(self, True, None)

    def attempt_failed(self, _server: ServerState, _reason: str) -> None:
        pass

    def unreachable(self, reason: str, *, local: bool = False) -> None:
        if local:
            self.checker.no_verdict(self, reason)
        else:
            self.checker.verdict(self, False, reason)

    def handle_error(self, exc: Exception) -> None:
        self.checker.failed(self, exc)


class HealthChecker:
    """Checks every server of one pool on a timer until `stop()`."""

    def __init__(self, reactor: Reactor, resolver: Resolver, pool: Pool, log: EventLog) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.pool = pool
        self.log = log
        self.check = pool.config.health_check
        self._probes: dict[_Probe, Connector] = {}
        self._timer: Timer | None = reactor.call_later(0, self._round)

    def _round(self) -> None:
        self._timer = self.reactor.call_later(self.check.interval, self._round)
        for server in self.pool.servers:
            if any(probe.server is server for probe in self._probes):
                continue  # the last check of this server has not finished yet
            probe = _Probe(self, server)
            lane, timeout = self.resolver.health, self.check.timeout
            connector = Connector(self.reactor, lane, iter([server]), timeout, probe, self.pool.prepare)
            self._probes[probe] = connector
            connector.start()

    def verdict(self, probe: _Probe, ok: bool, reason: str | None) -> None:
        if self._probes.pop(probe, None) is None:
            return
        if self.pool.check_result(probe.server, ok):
            probe.server.changed_at = self.reactor.now
            event = "server_up" if ok else "server_down"
            self.log.warning(event, upstream=self.pool.config.name, server=probe.server.address, reason=reason)

    def no_verdict(self, probe: _Probe, reason: str) -> None:
        """The check could not be made (the proxy is out of descriptors or ports): the server is
        not to blame, its state stays as it is."""
        if self._probes.pop(probe, None) is not None:
            self.log.debug(
                "health_check_skipped", upstream=self.pool.config.name, server=probe.server.address, reason=reason
            )

    def failed(self, probe: _Probe, exc: Exception) -> None:
        """An exception escaped the check: a bug, reported; the server's state stays as it is."""
        if self._probes.pop(probe, None) is not None:
            self.log.failure("callback_failed", exc, upstream=self.pool.config.name, server=probe.server.address)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for connector in self._probes.values():
            connector.cancel()
        self._probes.clear()
