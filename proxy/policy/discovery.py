"""Servers found in DNS: SRV records as tiers and weights, the bound on how many a pool holds,
what changed between two answers, and when to ask again.

Pure: records in, `Found` servers out. RFC 2782 as a pool can follow it: the lowest priority
serves first, so each distinct priority is a tier (0 first, the others backups in turn); within
a tier a record's weight is its server's weight. A weight of 0 has "a very small chance of being
selected" beside weights above 0: there the weights are scaled by ZERO_WEIGHT_SCALE and a 0
becomes 1; a tier of zeros only is a tier of equals (weight 1 each). A target of "." means the
service is not offered there.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from proxy.config.units import Address, canonical_ip

ZERO_WEIGHT_SCALE = 100  # weights beside a 0: a weight-0 server gets 1 turn for each 100 of weight 1
MIN_REFRESH = 1.0  # seconds: an answer is asked again no sooner (a TTL of 0 would be a busy loop)
FAILED_RETRY = 2.0  # seconds before a failed lookup is tried again (hold_valid, if shorter)


class SrvRecord(Hashable, Protocol):
    """An SRV record as an answer holds it (protocol.dns.SrvRecord, a sibling layer's)."""

    @property
    def priority(self) -> int: ...

    @property
    def weight(self) -> int: ...

    @property
    def port(self) -> int: ...

    @property
    def target(self) -> str: ...


@dataclass(frozen=True)
class Found:
    """One server an answer names: tier 0 serves first, higher tiers are backups in turn. `name`
    is the DNS name its address came from (the `resolve: all` name, the SRV target), which its
    TLS certificate is checked for; not part of what a diff compares."""

    tier: int
    address: Address
    weight: int = 1
    name: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Change:
    added: tuple[Found, ...] = ()
    removed: tuple[Found, ...] = ()
    changed: tuple[Found, ...] = ()  # the same address with another weight or tier (as it is now)
    other_family: tuple[Found, ...] = ()  # in the answer but no server: no connect reaches them from the source

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def _address(host: str, port: int) -> Address:
    return Address(str(canonical_ip(host)), port)


def address_servers(
    hosts: Iterable[str], port: int, weight: int = 1, tier: int = 0, name: str | None = None
) -> list[Found]:
    """Every address of a `resolve: all` name as a server of the name's port, weight and tier."""
    return sorted({Found(tier, _address(host, port), weight, name) for host in hosts}, key=_order)


def srv_servers(records: Sequence[SrvRecord], addresses: Mapping[str, Sequence[str]]) -> list[Found]:
    """The servers SRV `records` name, each target at each of its `addresses` (target -> IPs; a
    target missing there has none), in tier and address order. An address named twice keeps its
    first record's (the lowest priority's)."""
    priorities = sorted({record.priority for record in records if record.target not in ("", ".")})
    tier_of = {priority: tier for tier, priority in enumerate(priorities)}
    weights = srv_weights([record for record in records if record.priority in tier_of])
    found: dict[Address, Found] = {}
    for record in sorted(records, key=lambda record: (record.priority, record.target, record.port)):
        if record.priority not in tier_of:
            continue
        for host in addresses.get(record.target, ()):
            address = _address(host, record.port)
            if address not in found:
                found[address] = Found(tier_of[record.priority], address, weights[record], record.target)
    return sorted(found.values(), key=_order)


def srv_weights(records: Sequence[SrvRecord]) -> dict[SrvRecord, int]:
    """Each record's weight as a pool's (at least 1), from the RFC 2782 weights of its priority."""
    by_priority: dict[int, list[SrvRecord]] = {}
    for record in records:
        by_priority.setdefault(record.priority, []).append(record)
    weights = {}
    for group in by_priority.values():
        mixed = any(record.weight for record in group) and not all(record.weight for record in group)
        for record in group:
            if mixed:
                weights[record] = record.weight * ZERO_WEIGHT_SCALE or 1
            else:
                weights[record] = record.weight or 1
    return weights


def bounded(found: Sequence[Found], limit: int) -> list[Found]:
    """At most `limit` servers: the first tiers first, and within a tier the lowest addresses, so
    that every process and every answer in another order keeps the same ones."""
    return sorted(found, key=_order)[: max(0, limit)]


def _order(found: Found) -> tuple:
    """Tier, then address by number (IPv4 first, then IPv6, then a name), then port."""
    host, port = found.address.host, found.address.port
    try:
        ip = canonical_ip(host)
    except ValueError:  # a `resolve: all` name standing for itself before DNS answers
        return (found.tier, 7, 0, host, port)
    return (found.tier, ip.version, int(ip), "", port)


def diff(old: Iterable[Found], new: Iterable[Found]) -> Change:
    """What changed from `old` to `new`, by address: servers added, removed, and those whose
    weight or tier changed. Each tuple in tier and address order."""
    before = {each.address: each for each in old}
    after = {each.address: each for each in new}
    return Change(
        added=tuple(sorted((each for address, each in after.items() if address not in before), key=_order)),
        removed=tuple(sorted((each for address, each in before.items() if address not in after), key=_order)),
        changed=tuple(
            sorted((each for address, each in after.items() if before.get(address, each) != each), key=_order)
        ),
    )


def refresh_after(ttl: float, hold_valid: float) -> float:
    """Seconds until an answer is asked again: its TTL, at most `hold_valid`, at least MIN_REFRESH."""
    return max(MIN_REFRESH, min(ttl, hold_valid))


def retry_after(hold_valid: float) -> float:
    """Seconds until a failed lookup is tried again."""
    return max(MIN_REFRESH, min(FAILED_RETRY, hold_valid))
