"""The pure parts of faults: specs read and written back, and the schedule's arithmetic (no sockets)."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.faults import COMMON_KEYS, FAULT_KEYS, format_fault, parse_fault
from proxy.config.schema import FaultConfig, ListenerConfig, RouteConfig
from proxy.config.units import parse_address
from proxy.policy.faults import NEVER, FaultPlan, Schedule, TokenBucket, jitter_delay, slice_size

SPECS = [
    "latency:latency=100ms,jitter=20ms",
    "bandwidth:rate=64KiB",
    "slicer:average_size=8,size_variation=4,delay=1ms",
    "slow_close:delay=2s",
    "timeout:timeout=0",
    "reset_peer:timeout=1s,stream=upstream",
    "limit_data:bytes=10KiB,toxicity=0.25",
]


@pytest.mark.parametrize("spec", SPECS)
def test_a_spec_written_back_reads_the_same(spec):
    fault = parse_fault(spec)
    assert parse_fault(format_fault(fault)) == fault


def test_units_are_toxiproxy_s_names_with_the_project_s_units():
    assert parse_fault("bandwidth:rate=64KiB").rate == 65536
    assert parse_fault("latency:latency=250ms").latency == pytest.approx(0.25)
    fault = parse_fault("limit_data:bytes=100")
    assert (fault.bytes, fault.stream, fault.toxicity) == (100, "downstream", 1.0)


def _drain(schedule: Schedule) -> list[tuple[float, int]]:
    """Every piece the schedule holds, in the order they go."""
    pieces = []
    while (piece := schedule.peek()) is not None:
        schedule.pop()
        pieces.append(piece)
    return pieces


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=20),
    pops=st.lists(st.integers(0, 50), min_size=20, max_size=20),
    latency=st.floats(0, 1),
    jitter=st.floats(0, 0.5),
    average=st.integers(1, 5000),
    rate=st.integers(1, 10**7),
    seed=st.integers(0, 2**32),
)
def test_every_byte_goes_once_in_order_and_never_early(sizes, pops, latency, jitter, average, rate, seed):
    faults = (
        FaultConfig("latency", latency=latency, jitter=jitter),
        FaultConfig("slicer", average_size=average, size_variation=average // 2),
        FaultConfig("bandwidth", rate=rate),
    )
    schedule = Schedule(faults, random.Random(seed))
    chunks = []  # (where the chunk ends in the stream, when it was read)
    pieces = []
    added, now = 0, 0.0
    for size, popped in zip(sizes, pops, strict=False):  # chunks added while earlier ones go
        assert schedule.add(size, now) == size
        added += size
        chunks.append((added, now))
        for _ in range(popped):
            if (piece := schedule.peek()) is None:
                break
            schedule.pop()
            pieces.append(piece)
        now += 0.01
    pieces += _drain(schedule)
    assert sum(length for _, length in pieces) == added
    assert all(length >= 1 for _, length in pieces)
    assert [at for at, _ in pieces] == sorted(at for at, _ in pieces)
    offset, chunk = 0, 0
    for at, length in pieces:  # each piece lies within one chunk, and goes no earlier than it may
        end, read_at = chunks[chunk]
        assert offset + length <= end
        assert at >= read_at + max(0.0, latency - jitter) - 1e-9
        offset += length
        chunk += offset == end


def test_a_chunk_is_cut_only_as_its_pieces_are_asked_for():
    schedule = Schedule((FaultConfig("slicer", average_size=1, delay=1.0),), random.Random(0))
    schedule.add(1 << 40, 5.0)  # a terabyte in one-byte slices: nothing is cut yet
    assert schedule.peek() == schedule.peek() == (5.0, 1)
    schedule.pop()
    assert schedule.peek() == (6.0, 1)
    paced = Schedule((FaultConfig("bandwidth", rate=4),), random.Random(0))
    paced.add(1 << 40, 0.0)
    assert [at for at, _ in (paced.peek(), paced.pop(), paced.peek())[::2]] == [0.0, 0.25]


def test_bandwidth_keeps_the_rate():
    bucket = TokenBucket(1000)
    assert bucket.reserve(500, 0.0) == 0.0
    assert bucket.reserve(500, 0.0) == pytest.approx(0.5)
    assert bucket.reserve(1000, 0.0) == pytest.approx(1.0)  # 2000 bytes go by 2 s: no burst earned
    assert bucket.reserve(10, 5.0) == 5.0


def test_slices_and_jitter_stay_in_their_bounds():
    rng = random.Random(1)
    for _ in range(200):
        assert 4 <= slice_size(1000, 8, 4, rng) <= 12
        assert slice_size(3, 8, 4, rng) == 3
        assert 0.05 <= jitter_delay(0.1, 0.05, rng) <= 0.15
    assert slice_size(1000, 2, 5, rng) >= 1
    assert jitter_delay(0.01, 1.0, random.Random(2)) >= 0.0


def test_limit_data_cuts_the_stream_and_timeout_holds_it():
    schedule = Schedule((FaultConfig("limit_data", bytes=10),), random.Random(0))
    assert schedule.add(6, 1.0) == 6
    assert not schedule.exhausted
    assert schedule.add(6, 2.0) == 4
    assert schedule.exhausted
    assert schedule.add(6, 3.0) == 0
    assert _drain(schedule) == [(1.0, 6), (2.0, 4)]
    held = Schedule((FaultConfig("timeout"),), random.Random(0))
    held.add(5, 1.0)
    assert held.peek() == (NEVER, 5)


def test_a_route_s_faults_add_to_its_listener_s_and_toxicity_is_a_share():
    latency, slicer = FaultConfig("latency", latency=1.0), FaultConfig("slicer", average_size=1, toxicity=0.5)
    listener = ListenerConfig(
        name="l",
        listen=parse_address("127.0.0.1:0"),
        routes=(RouteConfig("u", name="r", faults=(slicer,)), RouteConfig("u")),
        faults=(latency,),
    )
    plan = FaultPlan.of(listener)
    rng = random.Random(7)
    assert plan.decide(1, rng) == (latency,)
    drawn = [plan.decide("r", rng) for _ in range(1000)]
    assert all(faults[0] is latency for faults in drawn)
    assert 400 <= sum(len(faults) == 2 for faults in drawn) <= 600
    plain = ListenerConfig(name="l", listen=parse_address("127.0.0.1:0"), routes=(RouteConfig("u"),))
    assert FaultPlan.of(plain) is None


def test_the_keys_of_every_type_are_the_fields_of_a_fault():
    keys = {key for keys in FAULT_KEYS.values() for key in keys} | set(COMMON_KEYS) | {"type"}
    assert keys == {field.name for field in dataclasses.fields(FaultConfig)}
