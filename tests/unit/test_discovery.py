"""Servers from DNS answers, pure: SRV priorities as tiers and weights (RFC 2782), the bound,
the diff between two answers, when to ask again; and a pool taking answers in."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.schema import DiscoverConfig, ServerConfig, SourceConfig, UpstreamConfig
from proxy.config.units import Address
from proxy.policy.discovery import (
    MIN_REFRESH,
    ZERO_WEIGHT_SCALE,
    Found,
    address_servers,
    bounded,
    diff,
    refresh_after,
    srv_servers,
    srv_weights,
)
from proxy.policy.upstreams import SRV_GROUP, Pool
from proxy.protocol.dns import SrvRecord

targets = st.sampled_from([f"t{n}.test" for n in range(6)])
records = st.lists(st.builds(SrvRecord, st.integers(0, 5), st.integers(0, 20), st.integers(1, 3), targets), max_size=12)
hosts = st.integers(1, 20).map(lambda n: f"10.0.0.{n}")
founds = st.lists(st.builds(Found, st.integers(0, 3), st.builds(Address, hosts, st.integers(1, 3)), st.integers(1, 9)))


def _addresses(names: list[str]) -> dict[str, list[str]]:
    return {name: [f"10.1.{index}.1", f"10.1.{index}.2"] for index, name in enumerate(names)}


GLUE = _addresses([f"t{n}.test" for n in range(6)])


@given(records)
def test_the_lowest_priority_is_the_first_tier_and_the_tiers_follow_in_order(answer):
    servers = srv_servers(answer, GLUE)
    tier_of = {}
    for priority in sorted({record.priority for record in answer}):
        tier_of[priority] = len(tier_of)
    for server in servers:
        # each server's tier is the rank of the lowest priority naming its address
        named = [r.priority for r in answer if server.address.port == r.port and server.address.host in GLUE[r.target]]
        assert server.tier == tier_of[min(named)]
    assert len({server.address for server in servers}) == len(servers)
    assert [server.tier for server in servers] == sorted(server.tier for server in servers)


@given(records)
def test_weights_keep_their_ratios_within_a_priority_and_a_zero_gets_a_very_small_chance(answer):
    weights = srv_weights(answer)
    for record, weight in weights.items():
        assert weight >= 1
        same = [other for other in answer if other.priority == record.priority]
        if all(other.weight for other in same):
            assert weight == record.weight
        elif not any(other.weight for other in same):
            assert weight == 1
        else:
            assert weight == (record.weight * ZERO_WEIGHT_SCALE or 1)


def test_a_target_of_a_dot_offers_nothing_and_its_priority_makes_no_tier():
    answer = [SrvRecord(0, 0, 1, "."), SrvRecord(5, 1, 2, "t0.test")]
    assert srv_servers(answer, GLUE) == [Found(0, Address("10.1.0.1", 2)), Found(0, Address("10.1.0.2", 2))]


@given(founds, founds)
def test_a_diff_applied_to_the_old_set_gives_the_new_one(old, new):
    old = list({each.address: each for each in old}.values())
    new = list({each.address: each for each in new}.values())
    change = diff(old, new)
    result = {each.address: each for each in old}
    for each in change.removed:
        del result[each.address]
    for each in (*change.added, *change.changed):
        result[each.address] = each
    assert result == {each.address: each for each in new}
    assert bool(change) == (set(old) != set(new))
    assert not {each.address for each in change.added} & {each.address for each in old}


@given(founds, st.integers(0, 30))
def test_the_bound_keeps_the_first_tiers_whatever_the_answers_order(found, limit):
    found = list({each.address: each for each in found}.values())  # an answer names an address once
    kept = bounded(found, limit)
    assert len(kept) == min(limit, len(found))
    assert Counter(kept) <= Counter(found)
    assert kept == bounded(list(reversed(found)), limit)
    if kept and len(kept) < len(found):
        assert max(each.tier for each in kept) <= min(each.tier for each in found if each not in kept)


@given(st.floats(0, 1e6), st.floats(0.001, 1e6))
def test_an_answer_is_asked_again_within_its_ttl_and_hold_valid_but_never_in_a_loop(ttl, hold_valid):
    delay = refresh_after(ttl, hold_valid)
    assert delay >= MIN_REFRESH
    assert delay <= max(MIN_REFRESH, min(ttl, hold_valid))


def _dns_pool(**kwargs) -> Pool:
    listed = ServerConfig(Address("app.test", 80), resolve="all")
    return Pool(UpstreamConfig("app", (listed,), discover=DiscoverConfig("_app._tcp.test"), **kwargs))


def test_a_pool_keeps_the_state_of_a_server_whose_address_stays_and_lets_go_of_one_that_left():
    pool = _dns_pool()
    assert [str(s.address) for s in pool.servers] == ["app.test:80"]  # the name, until DNS answers
    change = pool.found(0, address_servers(["10.0.0.1", "10.0.0.2"], 80))
    assert [str(each.address) for each in change.added] == ["10.0.0.1:80", "10.0.0.2:80"]
    assert [str(each.address) for each in change.removed] == ["app.test:80"]
    staying = pool.servers[0]
    pool.connection_started(staying)
    leaving = pool.servers[1]
    pool.found(0, address_servers(["10.0.0.1", "10.0.0.3"], 80))
    assert pool.servers[0] is staying and staying.active == 1
    assert leaving not in pool.servers
    pool.connection_ended(leaving)  # a connection open on it ends on its own counter
    assert [str(s.address) for s in pool.unresolved(0).added] == ["app.test:80"]


def test_backup_tiers_serve_only_when_every_tier_before_is_down():
    pool = _dns_pool()
    answer = [SrvRecord(10, 1, 1, "t0.test"), SrvRecord(20, 1, 2, "t1.test"), SrvRecord(30, 1, 3, "t2.test")]
    pool.found(SRV_GROUP, srv_servers(answer, GLUE))
    pool.found(0, [])  # the name has no address: only the SRV servers are left
    first_tier = [s for s in pool.servers if s.tier == 0]
    assert {s.address.port for s in pool.candidates("c", 0)[:2]} == {1}
    for server in first_tier:
        pool.connect_failed(server, 0.0)
    assert pool.candidates("c", 0)[0].address.port == 2


def test_max_servers_bounds_the_dns_groups_together():
    pool = _dns_pool(max_servers=3)
    pool.found(0, address_servers(["10.0.0.1", "10.0.0.2"], 80))
    pool.found(SRV_GROUP, srv_servers([SrvRecord(1, 1, 9, "t0.test")], GLUE))
    assert len(pool.servers) == 3 and len(pool.groups[SRV_GROUP]) == 1


def test_servers_from_dns_take_their_source_and_an_address_of_the_other_family_is_left_out():
    listed = ServerConfig(Address("app.test", 80), source=SourceConfig("10.0.0.9"), resolve="all")
    upstream = UpstreamConfig(
        "app", (listed,), discover=DiscoverConfig("_app._tcp.test"), source=SourceConfig("10.0.0.5")
    )
    pool = Pool(upstream)
    change = pool.found(0, address_servers(["10.0.0.1", "2001:db8::1"], 80))
    assert [str(each.address) for each in change.added] == ["10.0.0.1:80"]
    assert [str(each.address) for each in change.other_family] == ["[2001:db8::1]:80"]
    pool.found(SRV_GROUP, srv_servers([SrvRecord(1, 1, 9, "t0.test")], GLUE))
    sources = {str(server.address): server.config.source.host for server in pool.servers}
    assert sources == {"10.0.0.1:80": "10.0.0.9", "10.1.0.1:9": "10.0.0.5", "10.1.0.2:9": "10.0.0.5"}
    with pytest.raises(ValueError, match=r"source 10.0.0.5 is IPv4 and server \[2001:db8::2\]:80 is not"):
        pool.add_server(ServerConfig(Address("2001:db8::2", 80)))


def test_a_server_from_dns_keeps_the_name_it_was_found_by_through_a_reload():
    pool = _dns_pool()
    assert [server.name for server in pool.servers] == ["app.test"]  # the name, standing for itself
    pool.found(0, address_servers(["10.0.0.1"], 80, name="app.test"))
    pool.found(SRV_GROUP, srv_servers([SrvRecord(1, 1, 9, "t0.test")], GLUE))
    reloaded = _dns_pool()
    reloaded.take_over(pool)
    assert [(str(s.address), s.name) for s in reloaded.servers] == [
        ("10.0.0.1:80", "app.test"),
        ("10.1.0.1:9", "t0.test"),
        ("10.1.0.2:9", "t0.test"),
    ]
