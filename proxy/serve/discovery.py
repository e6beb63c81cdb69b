"""Pools that follow DNS: every `resolve: all` server and `discover: {srv: ...}` name of a table
kept current by the DNS client on the loop, never on a connection's path.

Theory of operation
-------------------
Each DNS group of a pool (policy.upstreams.Pool.dns_groups) has a `Watch`. A watch asks its
name's A and AAAA records (or its SRV records, then the A and AAAA records of every target the
additional section left without addresses, at most `max_servers` targets), and when every
answer is in puts the servers they make in the group's place (`Pool.found`): a server whose
address stays keeps its state, a new one starts fresh, one that left gets no new connections
while those open on it finish. It asks again when the answers' smallest TTL runs out (at most
`hold_valid`, at least policy.discovery.MIN_REFRESH later). A lookup that fails (no nameserver
answered, NXDOMAIN for the name itself, a refusal) keeps the last good answer for
`hold_obsolete` and is tried again after policy.discovery.retry_after; past `hold_obsolete` the
group goes back to how it was before any answer (`Pool.unresolved`).

An address of the other IP family than the servers' source is no server (no connect could reach
it from there): `dns_changed` names those left out (`other_family=`) whenever they change.

Log events: `dns_changed` (what an answer changed), `dns_failed` (a lookup failed: what is kept),
`dns_bounded` (an answer held more servers than `max_servers`). A reload makes new watches: a
group whose name stays keeps its servers (Pool.take_over) and the age of its last answer, and is
asked again at once.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.config.schema import DNS_PORT, ResolversConfig
from proxy.config.units import Address
from proxy.log import EventLog
from proxy.loop.dns import Ask, DnsClient, DnsFailure, Result
from proxy.loop.reactor import Reactor, Timer
from proxy.policy.discovery import Change, Found, address_servers, refresh_after, retry_after, srv_servers
from proxy.policy.upstreams import SRV_GROUP, Pool
from proxy.protocol.dns import Answer, nameservers_of

RESOLV_CONF = "/etc/resolv.conf"


class _Gather:
    """Several questions asked at once; `done` gets every Answer by (name, type), or the first
    failure's reason. NXDOMAIN is an answer here: the caller decides what it means."""

    def __init__(self, client: DnsClient, questions: list[tuple[str, str]], done: Callable[[dict | str], None]) -> None:
        self.done: Callable[[dict | str], None] | None = done
        self.answers: dict[tuple[str, str], Answer] = {}
        self.waiting = len(questions)
        self.asks: list[Ask] = []
        for name, rdtype in questions:
            self.asks.append(client.ask(name, rdtype, lambda result, key=(name, rdtype): self._answered(key, result)))

    def _answered(self, key: tuple[str, str], result: Result) -> None:
        if self.done is None:
            return
        if isinstance(result, DnsFailure):
            done, self.done = self.done, None
            self.cancel()
            done(f"{key[0]} {key[1]}: {result.reason}")
            return
        self.answers[key] = result
        self.waiting -= 1
        if not self.waiting:
            done, self.done = self.done, None
            done(self.answers)

    def cancel(self) -> None:
        self.done = None
        for ask in self.asks:
            ask.cancel()


def _ttl(answers: list[Answer], otherwise: float) -> float:
    """The smallest TTL of the answers that hold records (an empty one says nothing of time)."""
    return min((answer.ttl for answer in answers if answer.addresses or answer.srv), default=otherwise)


class Watch:
    """One DNS group of one pool, kept current."""

    def __init__(self, discovery: Discovery, pool: Pool, group: int | str, previous: Watch | None) -> None:
        self.discovery = discovery
        self.pool = pool
        self.group = group
        self.name = _group_name(pool, group)
        self.kind = "srv" if group == SRV_GROUP else "all"
        self.server = None if group == SRV_GROUP else pool.config.servers[int(group)]
        self.answered_at: float | None = previous.answered_at if previous is not None else None
        self.failure: str | None = None  # why the last lookup failed, while it is so
        self.bounded: tuple[int, int, int] | None = None  # (found, unasked, kept) last said in the log
        self.other_family: tuple[Found, ...] = ()  # addresses left out for their family, last said
        self._gather: _Gather | None = None
        self._timer: Timer | None = discovery.reactor.call_later(0, self.lookup)

    # -- asking ------------------------------------------------------------------------------

    def lookup(self) -> None:
        self._timer = None
        client = self.discovery.client
        if self.kind == "srv":
            self._gather = _Gather(client, [(self.name, "SRV")], self._srv_answered)
        else:
            self._gather = _Gather(client, [(self.name, "A"), (self.name, "AAAA")], self._addresses_answered)

    def _addresses_answered(self, result: dict | str) -> None:
        if isinstance(result, str):
            self._failed(result)
            return
        answers = list(result.values())
        if any(answer.nxdomain for answer in answers):
            self._failed(f"{self.name}: no such name (NXDOMAIN)")
            return
        server = self.server
        assert server is not None
        hosts = [host for answer in answers for host in answer.addresses]
        found = address_servers(hosts, server.address.port, server.weight, int(server.backup), self.name)
        self._found(found, _ttl(answers, self.discovery.settings.hold_valid))

    def _srv_answered(self, result: dict | str) -> None:
        if isinstance(result, str):
            self._failed(result)
            return
        answer = result[self.name, "SRV"]
        if answer.nxdomain:
            self._failed(f"{self.name}: no such name (NXDOMAIN)")
            return
        # The targets of the first tiers first: past max_servers none would be kept, so none is asked.
        unglued = [record for record in answer.srv if record.target not in answer.glue and record.target != "."]
        by_tier = sorted(unglued, key=lambda record: (record.priority, record.target))
        unasked = list(dict.fromkeys(record.target for record in by_tier))
        targets, unasked = unasked[: self.pool.config.max_servers], unasked[self.pool.config.max_servers :]
        if not targets:
            self._found(srv_servers(answer.srv, answer.glue), _ttl([answer], self.discovery.settings.hold_valid))
            return
        questions = [(target, rdtype) for target in targets for rdtype in ("A", "AAAA")]

        def addresses_answered(more: dict | str) -> None:
            if isinstance(more, str):
                self._failed(more)
                return
            addresses = dict(answer.glue)
            for (target, _rdtype), each in more.items():
                addresses[target] = (*addresses.get(target, ()), *each.addresses)
            ttl = _ttl([answer, *more.values()], self.discovery.settings.hold_valid)
            self._found(srv_servers(answer.srv, addresses), ttl, len(unasked))

        self._gather = _Gather(self.discovery.client, questions, addresses_answered)

    # -- what came of it ---------------------------------------------------------------------

    def _found(self, found: list[Found], ttl: float, unasked: int = 0) -> None:
        """`found` in the group's place; `unasked`: SRV targets not even looked up, for the bound."""
        self._gather = None
        discovery = self.discovery
        self.answered_at = discovery.reactor.now
        self.failure = None
        change = self.pool.found(self.group, found)
        self._say(change)
        reachable = len(found) - len(change.other_family)
        kept = len(self.pool.groups[self.group])
        bounded = (reachable, unasked, kept)
        if (kept < reachable or unasked) and self.bounded != bounded:
            self.bounded = bounded
            discovery.log.warning(
                "dns_bounded",
                pool=self.pool.config.name,
                name=self.name,
                found=reachable,
                unasked=unasked or None,
                kept=kept,
                max_servers=self.pool.config.max_servers,
            )
        self._again(refresh_after(ttl, discovery.settings.hold_valid))

    def _failed(self, reason: str) -> None:
        self._gather = None
        discovery = self.discovery
        settings = discovery.settings
        age = None if self.answered_at is None else discovery.reactor.now - self.answered_at
        expired = age is not None and age > settings.hold_obsolete
        if expired:
            self.answered_at = None
            self._say(self.pool.unresolved(self.group))
        if reason != self.failure or expired:
            kept = len(self.pool.groups[self.group]) if age is not None and not expired else 0
            discovery.log.warning(
                "dns_failed",
                pool=self.pool.config.name,
                name=self.name,
                reason=reason,
                kept=kept,
                age=None if age is None else round(age, 3),
                dropped="last answer older than hold_obsolete" if expired else None,
            )
        self.failure = reason
        self._again(retry_after(settings.hold_valid))

    def _say(self, change: Change) -> None:
        """Log what changed: the servers, or the addresses left out for their family."""
        left_out, self.other_family = self.other_family, change.other_family
        if not change and change.other_family == left_out:
            return
        source = self.pool.group_source(self.group)
        self.discovery.log.info(
            "dns_changed",
            pool=self.pool.config.name,
            name=self.name,
            added=_listed(change.added),
            removed=_listed(change.removed),
            changed=_listed(change.changed) if change.changed else None,
            other_family=_listed(change.other_family) if change.other_family else None,
            source=source.host if change.other_family and source is not None else None,
        )

    def _again(self, delay: float) -> None:
        if self.discovery.stopped:
            return
        self._timer = self.discovery.reactor.call_later(delay, self.lookup)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._gather is not None:
            self._gather.cancel()
            self._gather = None

    def row(self, now: float) -> dict:
        """What the admin surfaces show of it."""
        return {
            "upstream": self.pool.config.name,
            "name": self.name,
            "type": self.kind,
            "servers": len(self.pool.groups[self.group]),
            "age": None if self.answered_at is None else now - self.answered_at,
            "state": "failing" if self.failure else ("ok" if self.answered_at is not None else "waiting"),
            "reason": self.failure,
        }


def _listed(found: tuple[Found, ...]) -> str:
    return "[" + ",".join(str(each.address) for each in found) + "]"


class Discovery:
    """Every DNS group of one load's pools, watched until `stop()`."""

    def __init__(
        self,
        reactor: Reactor,
        client: DnsClient,
        settings: ResolversConfig,
        pools: dict[str, Pool],
        log: EventLog,
        previous: Discovery | None = None,
    ) -> None:
        self.reactor = reactor
        self.client = client
        self.settings = settings
        self.log = log
        self.stopped = False
        before = {} if previous is None else {(w.pool.config.name, w.group, w.name): w for w in previous.watches}
        self.watches = [
            Watch(self, pool, group, before.get((name, group, _group_name(pool, group))))
            for name, pool in pools.items()
            for group in pool.dns_groups()
        ]

    def stop(self) -> None:
        self.stopped = True
        for watch in self.watches:
            watch.stop()

    def close(self) -> None:
        """Stop, and close the DNS client: for good, not for a reload's Discovery to take over."""
        self.stop()
        self.client.close()

    def rows(self) -> list[dict]:
        now = self.reactor.now
        return [watch.row(now) for watch in self.watches]


def nameservers(settings: ResolversConfig, resolv_conf: str = RESOLV_CONF) -> tuple[Address, ...]:
    """The nameservers `resolvers:` names, else those of resolv.conf, else the local one (as the
    C library does when resolv.conf names none)."""
    if settings.nameservers is not None:
        return settings.nameservers
    try:
        with open(resolv_conf, encoding="utf-8", errors="replace") as file:
            listed = nameservers_of(file.read())
    except OSError:
        listed = []
    return tuple(listed) or (Address("127.0.0.1", DNS_PORT),)


def _group_name(pool: Pool, group: int | str) -> str:
    if group == SRV_GROUP:
        assert pool.config.discover is not None
        return pool.config.discover.srv
    return pool.config.servers[int(group)].address.host
