"""Upstream pools: every balancing strategy, backups, retries, passive and active health."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.schema import BALANCE_STRATEGIES, HealthCheckConfig, ServerConfig
from proxy.config.units import Address
from proxy.policy.upstreams import PASSIVE_DOWN_FIRST, PASSIVE_DOWN_MAX, Pool
from tests.support import pool, ports


def picks(p: Pool, count: int, client: str = "10.0.0.1", now: float = 0.0) -> list[int]:
    return [p.candidates(client, now)[0].address.port for _ in range(count)]


def pick(p: Pool, client: str = "10.0.0.1", now: float = 0.0) -> int:
    return picks(p, 1, client, now)[0]


# -- round_robin ---------------------------------------------------------------------------


def test_round_robin_thirty_over_three_lands_ten_each():
    assert Counter(picks(pool(1, 2, 3), 30)) == {1: 10, 2: 10, 3: 10}


def test_round_robin_weights_are_exact_and_interleaved_smoothly():
    sequence = picks(pool((1, 1), (2, 2)), 30)
    assert Counter(sequence) == {1: 10, 2: 20}
    runs_of_heavy = "".join(map(str, sequence)).split("1")
    assert max(len(run) for run in runs_of_heavy) <= 2


def test_round_robin_retries_follow_the_rotation():
    p = pool(1, 2, 3)
    assert [ports(p.candidates("c", 0)) for _ in range(4)] == [[1, 2, 3], [2, 3, 1], [3, 1, 2], [1, 2, 3]]


def test_round_robin_skips_a_down_server_and_shares_among_the_rest():
    p = pool(1, 2, 3)
    p.connect_failed(p.servers[1], now=0)
    assert Counter(picks(p, 10, now=0.5)) == {1: 5, 3: 5}


# -- least_conn ----------------------------------------------------------------------------


def test_least_conn_prefers_the_idle_server():
    p = pool(1, 2, balance="least_conn")
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
    assert picks(p, 4) in ([1, 2, 1, 2], [2, 1, 2, 1])  # equal again: they alternate


def test_least_conn_weighs_connections_by_weight():
    p = pool((1, 1), (2, 3), balance="least_conn")
    heavy, light = p.servers[1], p.servers[0]
    for _ in range(2):
        p.connection_started(heavy)
    assert pick(p) == 1  # 0/1 beats 2/3
    p.connection_started(light)
    assert pick(p) == 2  # 2/3 beats 1/1
    assert ports(p.candidates("c", 0)) == [2, 1]  # the retry: the next least loaded


def test_least_conn_alternates_between_idle_servers():
    assert Counter(picks(pool(1, 2, 3, balance="least_conn"), 30)) == {1: 10, 2: 10, 3: 10}


# -- random --------------------------------------------------------------------------------


def test_random_respects_weights():
    counts = Counter(picks(pool((1, 1), (2, 2), balance="random"), 3000))
    assert abs(counts[1] - 1000) < 150  # about 6 standard deviations
    assert abs(counts[2] - 2000) < 150


def test_random_is_reproducible_with_a_seeded_rng():
    assert picks(pool(1, 2, 3, balance="random"), 20) == picks(pool(1, 2, 3, balance="random"), 20)


# -- first ---------------------------------------------------------------------------------


def test_first_takes_the_first_available():
    p = pool(1, 2, 3, balance="first")
    assert set(picks(p, 5)) == {1}
    assert ports(p.candidates("c", 0)) == [1, 2, 3]
    p.connect_failed(p.servers[0], now=0)
    assert ports(p.candidates("c", 0.1)) == [2, 3]
    assert pick(p, now=PASSIVE_DOWN_FIRST) == 1


# -- source_hash ---------------------------------------------------------------------------

CLIENTS = [f"10.{i // 250}.{i % 250}.7" for i in range(600)]


def test_source_hash_is_stable_across_pools():
    one, two = pool(1, 2, 3, balance="source_hash"), pool(1, 2, 3, balance="source_hash")
    assert [pick(one, c) for c in CLIENTS] == [pick(two, c) for c in CLIENTS]
    assert [pick(one, c) for c in CLIENTS] == [pick(one, c) for c in CLIENTS]


def test_source_hash_is_stable_across_processes():
    # Fixed answers: a salted or version-dependent hash would move clients on every restart.
    p = pool(1, 2, 3, balance="source_hash")
    assert [pick(p, c) for c in ("10.0.0.1", "10.0.0.2", "192.0.2.33", "2001:db8::1")] == [1, 1, 3, 2]


def test_source_hash_spreads_clients_by_weight():
    counts = Counter(pick(pool((1, 1), (2, 3), balance="source_hash"), c) for c in CLIENTS)
    assert abs(counts[1] - 150) < 50
    assert abs(counts[2] - 450) < 50
    assert set(Counter(pick(pool(1, 2, 3, balance="source_hash"), c) for c in CLIENTS)) == {1, 2, 3}


def test_source_hash_moves_only_the_clients_of_a_down_server():
    p = pool(1, 2, 3, balance="source_hash")
    before = {c: pick(p, c) for c in CLIENTS}
    p.connect_failed(p.servers[2], now=0)
    after = {c: pick(p, c, now=0.1) for c in CLIENTS}
    assert all(after[c] == before[c] for c in CLIENTS if before[c] != 3)
    moved = Counter(after[c] for c in CLIENTS if before[c] == 3)
    assert set(moved) == {1, 2}  # spread over the others, not all onto one


def test_source_hash_treats_ipv4_mapped_ipv6_as_ipv4():
    p = pool(1, 2, 3, balance="source_hash")
    assert [pick(p, c) for c in CLIENTS[:50]] == [pick(p, f"::ffff:{c}") for c in CLIENTS[:50]]


# -- backups, retries ----------------------------------------------------------------------


def test_backup_only_when_every_primary_is_down_by_passive_failures():
    p = pool(1, 2, (9, 1, True))
    assert 9 not in picks(p, 10)
    p.connect_failed(p.servers[0], now=0)
    assert 9 not in picks(p, 10, now=0.1)
    p.connect_failed(p.servers[1], now=0)
    assert ports(p.candidates("c", 0.1)) == [9]
    assert pick(p, now=PASSIVE_DOWN_FIRST) != 9  # the primaries' back-off is over


def test_backup_when_active_checks_mark_primaries_down():
    p = pool(1, (9, 1, True), health_check=HealthCheckConfig(rise=1, fall=2))
    assert not p.check_result(p.servers[0], False)
    assert p.check_result(p.servers[0], False)  # the second failure in a row: down
    assert picks(p, 3) == [9, 9, 9]
    assert p.check_result(p.servers[0], True)  # rise 1: up again
    assert pick(p) == 1


def test_retries_reach_the_backups_after_the_available_primaries():
    # The primary is not known to be down yet: a failed connect to it must still find the backup.
    p = pool(1, (9, 1, True), retries=2)
    assert ports(p.candidates("c", 0)) == [1, 9]
    p = pool(1, 2, (8, 1, True), (9, 1, True), retries=2, balance="first")
    assert ports(p.candidates("c", 0)) == [1, 2, 8]
    p.connect_failed(p.servers[0], now=0)
    assert ports(p.candidates("c", 0.1)) == [2, 8, 9]
    assert ports(pool(1, 2, (9, 1, True), retries=1).candidates("c", 0)) in ([1, 2], [2, 1])


def test_backups_rotate_among_themselves_in_the_strategy_order():
    p = pool(1, (8, 1, True), (9, 1, True), retries=1)
    p.connect_failed(p.servers[0], now=0)
    assert [ports(p.candidates("c", 0.1)) for _ in range(3)] == [[8, 9], [9, 8], [8, 9]]


def test_candidates_hold_the_pick_then_retries():
    p = pool(1, 2, 3, 4, retries=2)
    candidates = p.candidates("c", 0)
    assert len(candidates) == 3
    assert len(set(map(id, candidates))) == 3
    assert len(pool(1, 2, retries=5).candidates("c", 0)) == 2
    assert len(pool(1, 2, 3, retries=0).candidates("c", 0)) == 1


def test_a_fully_down_pool_still_offers_servers():
    p = pool(1, 2, (9, 1, True), retries=5)
    for server in p.servers:
        p.connect_failed(server, now=0)
    candidates = ports(p.candidates("c", 0.1))
    assert sorted(candidates[:2]) == [1, 2]  # primaries first, then the backup
    assert candidates[2:] == [9]
    p = pool(1, 2, 3, health_check=HealthCheckConfig(fall=1))
    for server in p.servers:
        p.check_result(server, False)
    assert len(p.candidates("c", 0)) == 3


# -- passive health ------------------------------------------------------------------------


def test_passive_health_backs_off_and_recovers():
    p = pool(1, 2, balance="first")
    server = p.servers[0]
    p.connect_failed(server, now=100)
    assert pick(p, now=100 + PASSIVE_DOWN_FIRST - 0.01) == 2
    assert pick(p, now=100 + PASSIVE_DOWN_FIRST) == 1  # retried after 1s
    p.connect_failed(server, now=101)  # a second failure in a row: twice as long
    assert not server.available(101 + 2 * PASSIVE_DOWN_FIRST - 0.01)
    assert server.available(101 + 2 * PASSIVE_DOWN_FIRST)
    p.connect_succeeded(server)
    p.connect_failed(server, now=300)  # the streak was broken: back to the first interval
    assert server.available(300 + PASSIVE_DOWN_FIRST)


def test_passive_back_off_doubles_up_to_the_maximum():
    p = pool(1, 2)
    server = p.servers[0]
    now, intervals = 0.0, []
    for _ in range(2000):  # long enough that an unbounded 2 ** n would overflow a float
        p.connect_failed(server, now)
        intervals.append(server.down_until - now)
        now = server.down_until
    assert intervals[:6] == [1, 2, 4, 8, 16, PASSIVE_DOWN_MAX]
    assert set(intervals[5:]) == {PASSIVE_DOWN_MAX}


def test_failures_during_a_back_off_do_not_double_it():
    p = pool(1, 2)
    server = p.servers[0]
    for _ in range(10):  # a burst: many connects that were under way fail at once
        p.connect_failed(server, now=5.0)
    assert server.down_until == 5.0 + PASSIVE_DOWN_FIRST
    p.connect_failed(server, now=5.5)  # still the same outage: restarts the interval
    assert server.down_until == 5.5 + PASSIVE_DOWN_FIRST


# -- active health -------------------------------------------------------------------------


def test_check_result_falls_and_rises():
    p = pool(1, 2, health_check=HealthCheckConfig(rise=2, fall=3))
    server = p.servers[0]
    assert server.available(0)  # servers start up
    assert not p.check_result(server, True)
    assert [p.check_result(server, False) for _ in range(2)] == [False, False]
    assert not p.check_result(server, True)  # breaks the streak
    assert [p.check_result(server, False) for _ in range(3)] == [False, False, True]
    assert not server.available(0)
    assert not p.check_result(server, False)  # already down
    assert [p.check_result(server, True) for _ in range(2)] == [False, True]
    assert server.available(0)


def test_coming_up_by_checks_ends_a_passive_back_off():
    p = pool(1, 2, health_check=HealthCheckConfig(rise=1, fall=1))
    server = p.servers[0]
    p.connect_failed(server, now=0)
    p.check_result(server, False)
    p.check_result(server, True)
    assert server.available(0.1)


def test_check_result_without_a_health_check_config_uses_the_defaults():
    p = pool(1, 2)
    defaults = HealthCheckConfig()
    assert [p.check_result(p.servers[0], False) for _ in range(defaults.fall)][-1]


# -- properties ----------------------------------------------------------------------------


@given(
    servers=st.lists(st.tuples(st.integers(1, 5), st.booleans()), min_size=1, max_size=6),
    events=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["fail", "ok", "check_down", "open"])), max_size=12),
    balance=st.sampled_from(BALANCE_STRATEGIES),
    retries=st.integers(0, 6),
    client=st.ip_addresses().map(str),
)
def test_candidates_are_distinct_and_bounded(servers, events, balance, retries, client):
    p = pool(
        *((port, weight, backup) for port, (weight, backup) in enumerate(servers, 1)),
        balance=balance,
        retries=retries,
        health_check=HealthCheckConfig(fall=1),
    )
    for index, event in events:
        server = p.servers[index % len(p.servers)]
        if event == "fail":
            p.connect_failed(server, now=0)
        elif event == "ok":
            p.connect_succeeded(server)
        elif event == "check_down":
            p.check_result(server, False)
        else:
            p.connection_started(server)
    for _ in range(3):
        candidates = p.candidates(client, 0.5)
        assert 1 <= len(candidates) <= min(1 + retries, len(servers))
        assert len(set(map(id, candidates))) == len(candidates)
        available = [s for s in p.servers if s.available(0.5)]
        backups = [s.config.backup for s in candidates]
        assert backups == sorted(backups)  # every primary offered comes before any backup
        if available:
            assert all(s.available(0.5) for s in candidates)
            assert len(candidates) == min(1 + retries, len(available))
            primaries = [s for s in available if not s.config.backup]
            assert set(map(id, candidates[: len(primaries)])) <= set(map(id, primaries))


@given(st.lists(st.integers(1, 5), min_size=1, max_size=6))
def test_round_robin_gives_each_server_its_weight_per_cycle(weights):
    p = pool(*((port, weight) for port, weight in enumerate(weights, 1)))
    for _ in range(2):
        assert Counter(picks(p, sum(weights))) == dict(enumerate(weights, 1))


@given(st.lists(st.integers(1, 5), min_size=2, max_size=6), st.integers(0, 5), st.ip_addresses().map(str))
def test_source_hash_keeps_a_client_unless_its_own_server_goes_down(weights, down, client):
    p = pool(*((port, weight) for port, weight in enumerate(weights, 1)), balance="source_hash")
    order = ports(p.candidates(client, 0))
    p.connect_failed(p.servers[down % len(weights)], now=0)
    expected = next(port for port in order if port != down % len(weights) + 1)
    assert pick(p, client, now=0.1) == expected


# -- servers an operator adds, removes and weighs ---------------------------------------------


def test_servers_added_removed_and_weighed_at_run_time():
    p = pool(1, 2, max_servers=2)
    p.add_server(ServerConfig(Address("127.0.0.1", 3), weight=2))
    assert ports(p.servers) == [1, 2, 3]
    with pytest.raises(ValueError, match=re.escape("upstream p has server 127.0.0.1:3 already")):
        p.add_server(ServerConfig(Address("127.0.0.1", 3)))
    p.add_server(ServerConfig(Address("127.0.0.1", 4)))
    with pytest.raises(ValueError, match="upstream p is full: max_servers is 2"):
        p.add_server(ServerConfig(Address("127.0.0.1", 5)))
    leaving = p.servers[0]
    p.connection_started(leaving)
    p.remove_server(Address("127.0.0.1", 1))  # a listed server, until the next reload
    assert ports(p.servers) == [2, 3, 4] and leaving.active == 1
    p.set_weight(Address("127.0.0.1", 2), 3)
    assert Counter(picks(p, 60)) == {2: 30, 3: 20, 4: 10}
    with pytest.raises(ValueError, match=re.escape("no server 127.0.0.1:1 in upstream p")):
        p.set_weight(Address("127.0.0.1", 1), 2)
