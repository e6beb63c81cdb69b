"""Which toxics a connection gets, and when each piece of a faulted stream may go: the arithmetic.

Pure: no sockets; the time comes in as `now`, randomness from an injected `random.Random`.
proxy/relay/faults.py holds the bytes and runs the timers.

A listener's `FaultPlan` says which toxics each route's connections may get (the listener's,
then the route's own); `decide` rolls each toxic's `toxicity` once for a connection. A
`Schedule` is one direction of one connection: given a chunk's size and the time it was read,
it says how the chunk is cut and when each piece is released (latency, slicer and bandwidth in
the order they were given; limit_data cuts the stream off; timeout holds it for ever). Release
times never go backwards, so the order of the bytes is kept.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.config.schema import FaultConfig, ListenerConfig

NEVER = float("inf")
BANDWIDTH_STEPS = 20  # a bandwidth toxic releases about this many pieces a second (at most 16KiB each)
MAX_BANDWIDTH_PIECE = 16 * 1024
SHAPING = frozenset({"latency", "slicer", "bandwidth", "limit_data", "timeout"})  # toxics that act on each chunk

Pieces = list[tuple[float, int]]  # (release time, size)


@dataclass(frozen=True)
class FaultPlan:
    """The toxics of one listener's connections, per route (a route's own are added to the listener's)."""

    base: tuple[FaultConfig, ...]
    routes: Mapping[str | int, tuple[FaultConfig, ...]]

    @classmethod
    def of(cls, config: ListenerConfig) -> FaultPlan | None:
        """The plan of `config`, or None when no connection of it can get a toxic."""
        routes = {
            route.name if route.name is not None else index: config.faults + route.faults
            for index, route in enumerate(config.routes)
            if route.faults
        }
        if not config.faults and not routes:
            return None
        return cls(config.faults, routes)

    def decide(self, route: str | int | None, rng: random.Random) -> tuple[FaultConfig, ...]:
        """The toxics that apply to one connection routed by `route`, each rolled once."""
        faults = self.base if route is None else self.routes.get(route, self.base)
        return tuple(fault for fault in faults if fault.toxicity >= 1.0 or rng.random() < fault.toxicity)


def jitter_delay(latency: float, jitter: float, rng: random.Random) -> float:
    """`latency` give or take up to `jitter`, never below 0."""
    if not jitter:
        return latency
    return max(0.0, latency + rng.uniform(-jitter, jitter))


def slice_sizes(size: int, average: int, variation: int, rng: random.Random) -> list[int]:
    """`size` bytes cut into slices of `average` give or take `variation` (each at least 1 byte)."""
    sizes = []
    while size > 0:
        cut = min(size, max(1, average + rng.randint(-variation, variation)))
        sizes.append(cut)
        size -= cut
    return sizes


class TokenBucket:
    """`rate` bytes a second: `reserve(size, now)` says when `size` bytes may go.

    A bucket as deep as one piece: bytes that waited do not earn a burst later.
    """

    __slots__ = ("rate", "free_at")

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.free_at = 0.0  # when the bytes reserved so far have all gone at the rate

    def reserve(self, size: int, now: float) -> float:
        start = max(now, self.free_at)
        self.free_at = start + size / self.rate
        return start

    def piece(self) -> int:
        """How many bytes to release at once: about 1/BANDWIDTH_STEPS of a second's worth."""
        return max(1, min(self.rate // BANDWIDTH_STEPS, MAX_BANDWIDTH_PIECE))


class Schedule:
    """One faulted direction of one connection: how each chunk read is cut and when it goes."""

    def __init__(self, faults: tuple[FaultConfig, ...], rng: random.Random) -> None:
        # Each shaping toxic in order, with its own bucket when it is a bandwidth.
        self.stages = [
            (fault, TokenBucket(fault.rate) if fault.type == "bandwidth" else None)
            for fault in faults
            if fault.type in SHAPING
        ]
        self.rng = rng
        limits = [fault.bytes for fault in faults if fault.type == "limit_data"]
        self.allowance: int | None = min(limits) if limits else None  # bytes limit_data still lets through
        self.last = 0.0  # the last release time given: none goes before it

    @property
    def exhausted(self) -> bool:
        """limit_data let its last byte through: the stream ends here."""
        return self.allowance == 0

    def plan(self, size: int, now: float) -> Pieces:
        """The pieces (release time, size) of a chunk of `size` bytes read at `now`, in order."""
        if self.allowance is not None:
            size = min(size, self.allowance)
            self.allowance -= size
        pieces: Pieces = [(now, size)] if size else []
        for fault, bucket in self.stages:
            pieces = self._apply(fault, bucket, pieces)
        ordered = []
        for at, length in pieces:
            self.last = max(self.last, at)
            ordered.append((self.last, length))
        return ordered

    def _apply(self, fault: FaultConfig, bucket: TokenBucket | None, pieces: Pieces) -> Pieces:
        kind = fault.type
        if kind == "latency":
            return [(at + jitter_delay(fault.latency, fault.jitter, self.rng), size) for at, size in pieces]
        if kind == "timeout":
            return [(NEVER, size) for _, size in pieces]
        if kind == "slicer":
            sliced = []
            for at, size in pieces:
                for step, cut in enumerate(slice_sizes(size, fault.average_size, fault.size_variation, self.rng)):
                    sliced.append((at + step * fault.delay, cut))
            return sliced
        if bucket is not None:
            step = bucket.piece()
            paced = []
            for at, size in pieces:
                while size > 0:
                    cut = min(size, step)
                    paced.append((bucket.reserve(cut, at), cut))
                    size -= cut
            return paced
        return pieces  # limit_data: cut before the other toxics, in `plan`
