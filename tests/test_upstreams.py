"""Upstream pools: every balancing strategy, backups, retries, passive and active health."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from proxy.config import HealthCheckConfig, ServerConfig, UpstreamConfig
from proxy.units import Address
from proxy.upstreams import PASSIVE_DOWN_FIRST, Pool


def pool(*servers: tuple[int, int, bool], balance: str = "round_robin", retries: int = 2, **kwargs) -> Pool:
    """Servers as (port, weight, backup)."""
    configs = tuple(ServerConfig(Address("127.0.0.1", port), weight, backup) for port, weight, backup in servers)
    return Pool(UpstreamConfig("p", configs, balance=balance, retries=retries, **kwargs), random.Random(7))


def ports(servers) -> list[int]:
    return [server.address.port for server in servers]


def picks(p: Pool, count: int, client: str = "10.0.0.1", now: float = 0.0) -> list[int]:
    return [p.candidates(client, now)[0].address.port for _ in range(count)]


def test_round_robin_thirty_over_three_lands_ten_each():
    p = pool((1, 1, False), (2, 1, False), (3, 1, False))
    assert Counter(picks(p, 30)) == {1: 10, 2: 10, 3: 10}


def test_weights_are_respected_and_interleaved_smoothly():
    p = pool((1, 1, False), (2, 2, False))
    sequence = picks(p, 30)
    assert Counter(sequence) == {1: 10, 2: 20}
    longest_run = max(len(run) for run in "".join(map(str, sequence)).split("1"))
    assert longest_run <= 2


def test_least_conn_prefers_the_idle_server():
    p = pool((1, 1, False), (2, 1, False), balance="least_conn")
    first = p.candidates("c", 0)[0]
    p.connection_started(first)
    second = p.candidates("c", 0)[0]
    assert second is not first
    p.connection_started(second)
    p.connection_started(second)
    assert p.candidates("c", 0)[0] is first  # 1 open against 2
    p.connection_ended(second)
    p.connection_ended(second)
    p.connection_ended(first)
    assert sorted(picks(p, 2)) == [1, 2]  # equal again: they alternate


def test_random_respects_weights():
    p = pool((1, 1, False), (2, 3, False), balance="random")
    counts = Counter(picks(p, 4000))
    assert 800 < counts[1] < 1200
    assert 2800 < counts[2] < 3200


def test_first_takes_the_first_available():
    p = pool((1, 1, False), (2, 1, False), balance="first")
    assert set(picks(p, 5)) == {1}
    p.connect_failed(p.servers[0], now=0)
    assert picks(p, 1, now=0.1) == [2]


def test_source_hash_is_stable_and_spreads():
    one = pool((1, 1, False), (2, 1, False), (3, 1, False), balance="source_hash")
    two = pool((1, 1, False), (2, 1, False), (3, 1, False), balance="source_hash")
    clients = [f"10.0.{i // 250}.{i % 250}" for i in range(300)]
    assert [picks(one, 1, c) for c in clients] == [picks(two, 1, c) for c in clients]
    assert set(picks(one, 1, c)[0] for c in clients) == {1, 2, 3}


def test_source_hash_keeps_most_clients_when_a_server_goes_down():
    p = pool((1, 1, False), (2, 1, False), (3, 1, False), balance="source_hash")
    clients = [f"192.0.2.{i}" for i in range(200)]
    before = {c: picks(p, 1, c)[0] for c in clients}
    p.connect_failed(p.servers[2], now=0)
    after = {c: picks(p, 1, c, now=0.1)[0] for c in clients}
    assert 3 not in after.values()
    assert all(after[c] == before[c] for c in clients if before[c] != 3)


def test_backup_only_when_every_primary_is_down():
    p = pool((1, 1, False), (2, 1, False), (9, 1, True))
    assert 9 not in picks(p, 10)
    p.connect_failed(p.servers[0], now=0)
    assert 9 not in picks(p, 10, now=0.1)
    p.connect_failed(p.servers[1], now=0)
    assert picks(p, 1, now=0.1) == [9]


def test_backup_when_active_checks_mark_primaries_down():
    p = pool((1, 1, False), (9, 1, True), health_check=HealthCheckConfig(rise=1, fall=2))
    assert not p.check_result(p.servers[0], False)
    assert p.check_result(p.servers[0], False)  # the second failure in a row: down
    assert picks(p, 1) == [9]
    assert p.check_result(p.servers[0], True)  # rise 1: up again
    assert picks(p, 1) == [1]


def test_candidates_hold_the_pick_then_retries():
    p = pool((1, 1, False), (2, 1, False), (3, 1, False), (4, 1, False), retries=2)
    candidates = p.candidates("c", 0)
    assert len(candidates) == 3
    assert len(set(map(id, candidates))) == 3
    assert len(pool((1, 1, False), retries=5).candidates("c", 0)) == 1


def test_passive_health_backs_off_and_recovers():
    p = pool((1, 1, False), (2, 1, False), balance="first")
    server = p.servers[0]
    p.connect_failed(server, now=100)
    assert not server.available(100 + PASSIVE_DOWN_FIRST - 0.01)
    assert server.available(100 + PASSIVE_DOWN_FIRST)
    p.connect_failed(server, now=200)  # a second failure in a row: twice as long
    assert not server.available(200 + 2 * PASSIVE_DOWN_FIRST - 0.01)
    assert server.available(200 + 2 * PASSIVE_DOWN_FIRST)
    p.connect_succeeded(server)
    p.connect_failed(server, now=300)  # the streak was broken: back to the first interval
    assert server.available(300 + PASSIVE_DOWN_FIRST)


def test_a_fully_down_pool_still_offers_servers():
    p = pool((1, 1, False), (2, 1, False))
    for server in p.servers:
        p.connect_failed(server, now=0)
    assert sorted(ports(p.candidates("c", 0.1))) == [1, 2]


@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=6),
    st.lists(st.integers(0, 5), max_size=10),
    st.sampled_from(["round_robin", "least_conn", "random", "first", "source_hash"]),
    st.integers(0, 6),
)
def test_candidates_are_distinct_and_bounded(weights, failures, balance, retries):
    p = pool(*((i, w, False) for i, w in enumerate(weights, 1)), balance=balance, retries=retries)
    for index in failures:
        if index < len(p.servers):
            p.connect_failed(p.servers[index], now=0)
    candidates = p.candidates("203.0.113.9", 0.5)
    assert 1 <= len(candidates) <= min(1 + retries, len(weights))
    assert len(set(map(id, candidates))) == len(candidates)


@given(st.lists(st.integers(1, 5), min_size=1, max_size=6))
def test_round_robin_gives_each_server_its_weight_per_cycle(weights):
    p = pool(*((i, w, False) for i, w in enumerate(weights, 1)))
    counts = Counter(picks(p, sum(weights)))
    assert counts == {i: w for i, w in enumerate(weights, 1)}
