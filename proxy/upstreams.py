"""Upstream pools: which servers a new connection tries, in which order, and server health.

Pure: the time comes in as `now`, randomness from an injected `random.Random`.

Theory of operation: `candidates()` filters the servers that are available (not marked down by
active checks, not in a passive back-off after a failed connect); backups are considered only
when no primary is available. The balancing strategy orders them, and the first 1 + `retries`
are returned for the connector to try in turn. A pool with nothing available still returns
servers to try, in the same order, rather than refusing the client untried: the fastest way to
notice that a server is back is a connect that works.
"""

from __future__ import annotations

import random
import zlib

from proxy.config import ServerConfig, UpstreamConfig
from proxy.units import Address

PASSIVE_DOWN_FIRST = 1.0  # seconds a server is skipped after its first failed connect
PASSIVE_DOWN_MAX = 30.0  # the back-off doubles per failure in a row, up to this


class ServerState:
    """One server of a pool: its config, whether it is up, and its live connection count."""

    __slots__ = ("active", "check_streak", "checked_up", "config", "current_weight", "down_until", "failures")

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.active = 0
        self.failures = 0  # failed connects in a row (passive health)
        self.down_until = 0.0
        self.checked_up = True  # the verdict of active checks
        self.check_streak = 0  # consecutive check results that disagree with `checked_up`
        self.current_weight = 0  # smooth weighted round robin state

    @property
    def address(self) -> Address:
        return self.config.address

    @property
    def weight(self) -> int:
        return self.config.weight

    def available(self, now: float) -> bool:
        return self.checked_up and now >= self.down_until

    def __repr__(self) -> str:
        return f"ServerState({self.address}, active={self.active})"


class Pool:
    """The servers of one upstream and the strategy that orders them."""

    def __init__(self, config: UpstreamConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.servers = [ServerState(server) for server in config.servers]
        self.rng = rng or random.Random()
        self._order = {
            "round_robin": self._round_robin,
            "least_conn": self._least_conn,
            "random": self._random,
            "first": self._first,
            "source_hash": self._source_hash,
        }[config.balance]

    def candidates(self, client_ip: str, now: float) -> list[ServerState]:
        """The servers to try for a new client, best first: at most 1 + retries of them."""
        primaries = [s for s in self.servers if not s.config.backup and s.available(now)]
        eligible = primaries or [s for s in self.servers if s.config.backup and s.available(now)]
        if not eligible:
            eligible = [s for s in self.servers if not s.config.backup] or list(self.servers)
        return self._order(eligible, client_ip)[: 1 + self.config.retries]

    # -- strategies: each returns every eligible server once, the pick first ---------------

    def _round_robin(self, eligible: list[ServerState], _client_ip: str) -> list[ServerState]:
        """Smooth weighted round robin: spreads a heavy server's turns between the others'."""
        total = 0
        best = eligible[0]
        for server in eligible:
            server.current_weight += server.weight
            total += server.weight
            if server.current_weight > best.current_weight:
                best = server
        best.current_weight -= total
        return [best, *(s for s in eligible if s is not best)]

    def _least_conn(self, eligible: list[ServerState], _client_ip: str) -> list[ServerState]:
        """Fewest open connections per unit of weight; round robin among the tied."""
        rotation = {id(s): i for i, s in enumerate(self._round_robin(eligible, ""))}
        return sorted(eligible, key=lambda s: (s.active / s.weight, rotation[id(s)]))

    def _random(self, eligible: list[ServerState], _client_ip: str) -> list[ServerState]:
        """Weighted random order without repeats."""
        remaining = list(eligible)
        ordered = []
        while remaining:
            pick = self.rng.choices(remaining, weights=[s.weight for s in remaining])[0]
            remaining.remove(pick)
            ordered.append(pick)
        return ordered

    @staticmethod
    def _first(eligible: list[ServerState], _client_ip: str) -> list[ServerState]:
        return list(eligible)

    def _source_hash(self, eligible: list[ServerState], client_ip: str) -> list[ServerState]:
        """A fixed order per client address over all servers, weights repeated as slots.

        The order is computed over every server, up or not, and then filtered, so a client
        keeps its server when some other server goes down.
        """
        slots = [server for server in self.servers for _ in range(server.weight)]
        start = zlib.crc32(client_ip.encode()) % len(slots)
        ordered: list[ServerState] = []
        for server in slots[start:] + slots[:start]:
            if server in eligible and server not in ordered:
                ordered.append(server)
        return ordered

    # -- connections and health ------------------------------------------------------------

    def connection_started(self, server: ServerState) -> None:
        server.active += 1

    def connection_ended(self, server: ServerState) -> None:
        server.active -= 1

    def connect_failed(self, server: ServerState, now: float) -> None:
        """Passive health: skip the server for a back-off that doubles while it keeps failing."""
        server.failures += 1
        server.down_until = now + min(PASSIVE_DOWN_FIRST * 2 ** (server.failures - 1), PASSIVE_DOWN_MAX)

    def connect_succeeded(self, server: ServerState) -> None:
        server.failures = 0
        server.down_until = 0.0

    def check_result(self, server: ServerState, ok: bool) -> bool:
        """An active check's verdict; True when it changed the server's up/down state."""
        if ok == server.checked_up:
            server.check_streak = 0
            return False
        server.check_streak += 1
        needed = self.config.health_check.rise if ok else self.config.health_check.fall
        if server.check_streak < needed:
            return False
        server.checked_up = ok
        server.check_streak = 0
        if ok:
            self.connect_succeeded(server)
        return True
