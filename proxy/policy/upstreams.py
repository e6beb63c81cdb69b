"""Upstream pools: which servers a new connection tries, in which order, and server health.

Pure: no sockets; the time comes in as `now`, randomness from an injected `random.Random`.

`candidates()` takes the servers that are available (not marked down by active checks, not in
a passive back-off after a failed connect); backups only when no primary is available (a
server's tier: 0 for primaries, 1 for backups, and for servers of an SRV answer the rank of
their priority, each tier a backup of the tiers before it). The
balancing strategy orders them, its pick first, and the first 1 + `retries` go to the
connector to try in turn. The retries follow the strategy too, so that when a server dies
unnoticed its clients' retries spread over the others instead of all landing on one:

- round_robin, least_conn: the rest by their standing in the rotation, so the first retry is
  the server the next pick would choose (least_conn: least loaded first);
- random: a weighted random order without repeats;
- first: config order;
- source_hash: the client's own fixed order over the servers.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import replace

from proxy.config.schema import HealthCheckConfig, ServerConfig, SourceConfig, UpstreamConfig
from proxy.config.sockets import source_mismatch
from proxy.config.units import Address, canonical_ip
from proxy.policy.discovery import Change, Found, bounded, diff

PASSIVE_DOWN_FIRST = 1.0  # seconds a server is skipped after the first failed connect in a row
PASSIVE_DOWN_MAX = 30.0  # the back-off doubles per failure in a row, up to this
# Upper bounds (seconds) of the connect-time histogram's buckets, Prometheus style (cumulative, +Inf last).
CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)


class ConnectTimes:
    """A histogram of the time connects to one server took, in CONNECT_BUCKETS."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * len(CONNECT_BUCKETS)  # per bucket, not cumulative
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(CONNECT_BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def to_json(self) -> dict:
        """{"buckets": [[le, cumulative count], ...], "sum": s, "count": n}, as the snapshot holds it."""
        cumulative = itertools.accumulate(self.counts)
        buckets = [[bound, count] for bound, count in zip(CONNECT_BUCKETS, cumulative, strict=True)]
        return {"buckets": buckets, "sum": self.sum, "count": self.count}


class ServerState:
    """One server of a pool: its config, whether it is up, its live connection count, its counters."""

    __slots__ = (
        "active",
        "address",
        "backoff",
        "changed_at",
        "check_streak",
        "checked_up",
        "config",
        "connect_times",
        "current_weight",
        "down_until",
        "failures",
        "index",
        "maintenance",
        "name",
        "tier",
        "total",
    )

    def __init__(self, config: ServerConfig, index: int = 0, tier: int | None = None) -> None:
        self.config = config
        self.address: Address = config.address  # an attribute: the connector and the dialer read it per connection
        # The name TLS checks its certificate for and sends as SNI: its host, or the DNS name it was found by.
        self.name: str | None = None if config.address.is_unix else config.address.host
        self.index = index  # position in config order: the tie-breaker of every strategy
        self.tier = int(config.backup) if tier is None else tier  # 0 serves first, then 1, ...
        self.active = 0  # open connections through it (least_conn)
        self.backoff = 0.0  # the current passive back-off; 0 while the last connect worked
        self.down_until = 0.0
        self.checked_up = True  # the verdict of active checks
        self.check_streak = 0  # consecutive check results that disagree with `checked_up`
        self.current_weight = 0  # smooth weighted round robin
        self.maintenance = False  # put out of service by an operator: no new connections
        self.changed_at = 0.0  # when it last went up, down or into or out of maintenance
        self.total = 0  # connections sent to it
        self.failures = 0  # connects to it that failed
        self.connect_times = ConnectTimes()

    @property
    def weight(self) -> int:
        return self.config.weight

    def available(self, now: float) -> bool:
        """Up by active checks, not in a passive back-off, not in maintenance."""
        return self.checked_up and now >= self.down_until and not self.maintenance

    def state(self, now: float) -> str:
        """ "maint", "up" or "down", as `show servers` and the metrics name it."""
        if self.maintenance:
            return "maint"
        return "up" if self.available(now) else "down"

    def last_change(self, now: float) -> float:
        """Seconds since its state last changed; a back-off that ran out was a change back to up."""
        ended = self.down_until if self.down_until <= now else 0.0
        return max(0.0, now - max(self.changed_at, ended))

    def found(self) -> Found:
        return Found(self.tier, self.config.address, self.weight, self.name)

    def set_maintenance(self, on: bool, now: float) -> None:
        if on != self.maintenance:
            self.maintenance = on
            self.changed_at = now

    def __repr__(self) -> str:
        return f"ServerState({self.address}, active={self.active})"


Strategy = Callable[[list[ServerState], str], list[ServerState]]
Prepare = Callable[..., str | None]  # a socket and a server in, why it cannot connect out (loop.sockopts.Dialing)


# The group of a pool's servers that its `discover: {srv: ...}` name makes, and the group of those
# an operator added at run time (the listed servers' groups are their positions in the list).
SRV_GROUP = "srv"
RUNTIME_GROUP = "runtime"


class Pool:
    """The servers of one upstream, their health, and the strategy that orders them.

    The servers come in groups, one per source: each listed server is a group of its own, and so
    is the `discover:` name (SRV_GROUP) and what an operator added (RUNTIME_GROUP). A `resolve: all`
    server stands for itself (one name, any address, looked up as a connection needs it) until
    DNS answers; `found` then puts the servers of each answer in its group's place. A server that
    leaves (an answer without it, `remove_server`) is only dropped from the list: the connections
    open on it keep its state and finish on it. `max_servers` bounds the servers from DNS and
    from operators together.
    """

    def __init__(
        self, config: UpstreamConfig, rng: random.Random | None = None, prepare: Prepare | None = None
    ) -> None:
        self.config = config
        self.prepare = prepare  # what each connect's socket goes through first; None: nothing
        self.groups: dict[int | str, list[ServerState]] = {
            index: [ServerState(server)] for index, server in enumerate(config.servers)
        }
        if config.discover is not None:
            self.groups[SRV_GROUP] = []
        self.groups[RUNTIME_GROUP] = []
        self.servers: list[ServerState] = []
        self.rng = rng or random.Random()
        self.health_check = config.health_check or HealthCheckConfig()
        self._order: Strategy = {
            "round_robin": self._round_robin,
            "least_conn": self._least_conn,
            "random": self._random,
            "first": self._first,
            "source_hash": self._source_hash,
        }[config.balance]
        self._index_servers()

    def _index_servers(self) -> None:
        self.servers = [server for group in self.groups.values() for server in group]
        for index, server in enumerate(self.servers):
            server.index = index
        self._tiers = sorted({server.tier for server in self.servers})
        # Hashing a server's address rather than its position keeps source_hash clients on
        # their server when the server list is edited around it.
        self._hash_keys = {id(server): b"\0" + str(server.address).encode() for server in self.servers}

    def dns_groups(self) -> list[int | str]:
        """The groups DNS answers make: the `resolve: all` servers' and the `discover:` name's."""
        listed = [index for index, server in enumerate(self.config.servers) if server.resolve is not None]
        return listed + ([SRV_GROUP] if self.config.discover is not None else [])

    def found(self, group: int | str, servers: list[Found]) -> Change:
        """Put `servers` (an answer's) in `group`'s place, as many as `max_servers` leaves room for;
        what changed. Each takes the source of the listed server whose name gave it (SRV targets
        the upstream's); an address of the other IP family than its source is left out, since no
        connect could reach it (`Change.other_family`)."""
        source = self.group_source(group)
        reachable: list[Found] = []
        other_family: list[Found] = []
        for each in servers:
            reaches = source is None or source_mismatch(source, each.address) is None
            (reachable if reaches else other_family).append(each)
        others = self._bounded_count() - len(self.groups[group])
        kept = bounded(reachable, self.config.max_servers - others)
        current = {server.address: server for server in self.groups[group]}
        states = []
        for each in kept:
            state = current.get(each.address)
            config = ServerConfig(each.address, each.weight, each.tier > 0, source)
            if state is None:
                state = ServerState(config, tier=each.tier)
            state.config, state.tier, state.name = config, each.tier, each.name or each.address.host
            states.append(state)
        change = diff((server.found() for server in current.values()), kept)
        self.groups[group] = states
        self._index_servers()
        return replace(change, other_family=tuple(other_family))

    def group_source(self, group: int | str) -> SourceConfig | None:
        """The source the servers of `group` connect from."""
        listed = None if group in (SRV_GROUP, RUNTIME_GROUP) else self.config.servers[int(group)].source
        return listed or self.config.source

    def _bounded_count(self) -> int:
        """The servers `max_servers` bounds: those DNS answers and operators gave."""
        return sum(len(self.groups[key]) for key in (*self.dns_groups(), RUNTIME_GROUP))

    # -- servers an operator adds, removes and weighs at run time ------------------------------

    def add_server(self, config: ServerConfig) -> None:
        """One more server (ValueError if the pool has it already, is full, or its source cannot
        reach the server's address)."""
        name = self.config.name
        if any(server.address == config.address for server in self.servers):
            raise ValueError(f"upstream {name} has server {config.address} already")
        if self._bounded_count() >= self.config.max_servers:
            raise ValueError(f"upstream {name} is full: max_servers is {self.config.max_servers}")
        source = config.source or self.group_source(RUNTIME_GROUP)
        if source is not None and (mismatch := source_mismatch(source, config.address)) is not None:
            raise ValueError(mismatch)
        self.groups[RUNTIME_GROUP].append(ServerState(config))
        self._index_servers()

    def remove_server(self, address: Address) -> None:
        """No new connections to the server at `address`, those open on it finish (ValueError if
        there is none, or if DNS gave it: the next answer would bring it back)."""
        members, server = self._own(address)
        members.remove(server)
        self._index_servers()

    def set_weight(self, address: Address, weight: int) -> None:
        """The server at `address` weighs `weight` from now on (ValueError as for remove_server)."""
        _members, server = self._own(address)
        server.config = replace(server.config, weight=weight)

    def _own(self, address: Address) -> tuple[list[ServerState], ServerState]:
        """The group and state of the server at `address`, one that the file or an operator gave."""
        from_dns = self.dns_groups()
        for group, members in self.groups.items():
            for server in members:
                if server.address == address and group in from_dns:
                    raise ValueError(f"DNS gives server {address} of upstream {self.config.name}: disable it instead")
                if server.address == address:
                    return members, server
        raise ValueError(f"no server {address} in upstream {self.config.name}")

    def unresolved(self, group: int | str) -> Change:
        """`group` as it was before DNS answered (its last answer has expired): a `resolve: all`
        server stands for itself again, an SRV name has no servers."""
        old = [server.found() for server in self.groups[group]]
        self.groups[group] = [] if group == SRV_GROUP else [ServerState(self.config.servers[int(group)])]
        self._index_servers()
        return diff(old, [server.found() for server in self.groups[group]])

    def take_over(self, previous: Pool) -> None:
        """After a reload: servers that `previous` (the same upstream) had at the same address
        keep their state object, and with it their health, back-off, balancing state and open
        connections, which then end on the very counter they started on. A DNS group whose name
        stays keeps the servers its last answer gave."""
        for group in self.dns_groups():
            if group in previous.groups and self._same_source(previous, group):
                self.found(group, [server.found() for server in previous.groups[group]])
        states: dict[Address, list[ServerState]] = {}
        for state in previous.servers:
            states.setdefault(state.address, []).append(state)
        for index, server in enumerate(self.servers):
            same = states.get(server.address)
            if same:
                state = same.pop(0)
                state.config, state.index, state.tier, state.name = server.config, index, server.tier, server.name
                self.servers[index] = state
        for group, members in self.groups.items():
            self.groups[group] = [self.servers[server.index] for server in members]
        self._index_servers()

    def _same_source(self, previous: Pool, group: int | str) -> bool:
        if group == SRV_GROUP:
            return previous.config.discover == self.config.discover
        index = int(group)
        return index < len(previous.config.servers) and previous.config.servers[index] == self.config.servers[index]

    def candidates(self, client_ip: str, now: float) -> list[ServerState]:
        """The servers to try for a new client, the balancer's pick first: at most 1 + retries.

        The available primaries in the strategy's order, then the available backups in theirs:
        a retry after a failed connect reaches a backup when no primary is left to try, even
        before passive health has marked the primaries down. When nothing at all is available
        the servers are offered anyway (primaries, then backups) rather than refusing the client
        without trying: a fully down pool then recovers on the first connect that works. Servers
        in maintenance are never offered.
        """
        servers = self.servers
        if len(servers) == 1:  # the usual port forward: nothing to order, and no strategy moves
            return [] if servers[0].maintenance else [servers[0]]
        limit = 1 + max(0, self.config.retries)
        ordered = self._ordered_groups(client_ip, limit, lambda server: server.available(now))
        return ordered or self._ordered_groups(client_ip, limit, lambda server: not server.maintenance)

    def _ordered_groups(self, client_ip: str, limit: int, eligible: Callable[[ServerState], bool]) -> list[ServerState]:
        """Eligible servers tier by tier (primaries, then backups), each tier in the strategy's order, cut to
        `limit`; a group that cannot make the cut is not ordered (ordering moves round robin on)."""
        ordered: list[ServerState] = []
        for tier in self._tiers:
            group = [s for s in self.servers if s.tier == tier and eligible(s)]
            if group and len(ordered) < limit:
                ordered += self._order(group, client_ip)
        return ordered[:limit]

    # -- strategies: each returns every eligible server once, its pick first ---------------

    def _round_robin(self, eligible: list[ServerState], _client_ip: str) -> list[ServerState]:
        """Smooth weighted round robin (nginx): a heavy server's turns spread between the others'."""
        pick = _smooth_pick(eligible)
        return [pick, *sorted((s for s in eligible if s is not pick), key=_rotation)]

    def _least_conn(self, eligible: list[ServerState], _client_ip: str) -> list[ServerState]:
        """Fewest open connections per unit of weight; round robin among the tied so they alternate."""
        least = min(_load(s) for s in eligible)
        pick = _smooth_pick([s for s in eligible if _load(s) == least])
        return [pick, *sorted((s for s in eligible if s is not pick), key=lambda s: (_load(s), _rotation(s)))]

    def _random(self, eligible: list[ServerState], _client_ip: str) -> list[ServerState]:
        """Weighted random order without repeats: each server's key is u ** (1 / weight).

        (Efraimidis and Spirakis: the largest key belongs to each server with probability
        weight / total, and one draw per server orders them all.)
        """
        keys = {id(s): self.rng.random() ** (1.0 / s.weight) for s in eligible}
        return sorted(eligible, key=lambda s: (-keys[id(s)], s.index))

    @staticmethod
    def _first(eligible: list[ServerState], _client_ip: str) -> list[ServerState]:
        return list(eligible)

    def _source_hash(self, eligible: list[ServerState], client_ip: str) -> list[ServerState]:
        """Weighted rendezvous hashing: each client has its own fixed order of the servers.

        A server's score for a client depends on those two alone, so a server going down moves
        only its own clients, and they spread over the rest in proportion to weight. Scores use
        blake2b, not the salted hash(), so every process and every reload agrees.
        """
        client = _hash_client(client_ip)

        def score(server: ServerState) -> tuple[float, int]:
            digest = hashlib.blake2b(client + self._hash_keys[id(server)], digest_size=8).digest()
            unit = ((int.from_bytes(digest, "big") >> 12) + 0.5) / 2.0**52  # uniform in (0, 1)
            return (server.weight / math.log(unit), server.index)  # -w/ln(u) negated: sort ascending

        return sorted(eligible, key=score)

    # -- connections and health ------------------------------------------------------------

    def connection_started(self, server: ServerState) -> None:
        server.active += 1
        server.total += 1

    def connection_ended(self, server: ServerState) -> None:
        server.active -= 1

    def connect_failed(self, server: ServerState, now: float) -> None:
        """Passive health: skip the server for a back-off that doubles while it keeps failing.

        Only a failure after the back-off has run out doubles it. Failures meanwhile (connects
        already under way, or a fully down pool being tried anyway) are the same outage seen
        again: they restart the current interval, so a burst of them cannot jump to the maximum.
        """
        server.failures += 1
        if server.available(now):
            server.changed_at = now
        if now >= server.down_until:
            server.backoff = min(server.backoff * 2, PASSIVE_DOWN_MAX) if server.backoff else PASSIVE_DOWN_FIRST
        server.down_until = max(server.down_until, now + server.backoff)

    def connect_succeeded(self, server: ServerState, now: float | None = None, seconds: float | None = None) -> None:
        """Ends the passive failure streak. A client's connect gives the time (`now`) and how long
        it took (`seconds`)."""
        if seconds is not None:
            server.connect_times.observe(seconds)
        if now is not None and server.down_until:
            server.changed_at = max(server.changed_at, min(server.down_until, now))  # when it came back
        server.backoff = 0.0
        server.down_until = 0.0

    def check_result(self, server: ServerState, ok: bool) -> bool:
        """An active check's verdict; True when it changed the server's up/down state.

        `fall` failures in a row mark an up server down, `rise` successes in a row mark a down
        server up. Coming up also ends any passive back-off: the check just connected.
        """
        if ok == server.checked_up:
            server.check_streak = 0
            return False
        server.check_streak += 1
        needed = self.health_check.rise if ok else self.health_check.fall
        if server.check_streak < needed:
            return False
        server.checked_up = ok
        server.check_streak = 0
        if ok:
            self.connect_succeeded(server)
        return True


def _smooth_pick(servers: list[ServerState]) -> ServerState:
    """One step of nginx's smooth weighted round robin over `servers`."""
    total = 0
    best = servers[0]
    for server in servers:
        server.current_weight += server.weight
        total += server.weight
        if server.current_weight > best.current_weight:
            best = server
    best.current_weight -= total
    return best


def _rotation(server: ServerState) -> tuple[int, int]:
    """Sort key: who the next smooth round robin step would prefer (it adds weight, takes the max)."""
    return (-(server.current_weight + server.weight), server.index)


def _load(server: ServerState) -> float:
    return server.active / server.weight


def _hash_client(client_ip: str) -> bytes:
    """One spelling per client (IPv4-mapped IPv6 as IPv4, no zone), so every listener agrees."""
    try:
        return str(canonical_ip(client_ip)).encode()
    except ValueError:
        return client_ip.encode()
