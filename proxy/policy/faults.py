"""Which toxics a connection gets, and when each piece of a faulted stream may go: the arithmetic.

Pure: no sockets; the time comes in as `now`, randomness from an injected `random.Random`.
proxy/relay/faults.py holds the bytes and runs the timers.

A listener's `FaultPlan` says which toxics each route's connections may get (the listener's,
then the route's own); `decide` rolls each toxic's `toxicity` once for a connection. A
`Schedule` is one direction of one connection: it is told each chunk's size and the time it was
read (`add`), and says which piece goes next and when (`peek`, `pop`): latency, slicer and
bandwidth in the order they were given; limit_data cuts the stream off; timeout holds it for
ever. Release times never go backwards, so the order of the bytes is kept.

Pieces are cut one at a time, as they are asked for: each toxic keeps only the piece it is
cutting (its time, the bytes left, how many it cut), so a chunk cut into a byte a second costs
what a chunk sent whole does, in memory and in time. A piece never spans two chunks.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.config.schema import FaultConfig, ListenerConfig

NEVER = float("inf")
BANDWIDTH_STEPS = 20  # a bandwidth toxic releases about this many pieces a second (at most 16KiB each)
MAX_BANDWIDTH_PIECE = 16 * 1024
SHAPING = frozenset({"latency", "slicer", "bandwidth", "timeout"})  # toxics that cut or time each piece


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


def slice_size(left: int, average: int, variation: int, rng: random.Random) -> int:
    """The next slice of `left` bytes: `average` give or take `variation`, at least 1 byte."""
    return min(left, max(1, average + rng.randint(-variation, variation)))


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


class _Stage:
    """One shaping toxic at work: the piece it is cutting, and the next cut of it."""

    __slots__ = ("fault", "bucket", "at", "left", "step")

    def __init__(self, fault: FaultConfig) -> None:
        self.fault = fault
        self.bucket = TokenBucket(fault.rate) if fault.type == "bandwidth" else None
        self.at = 0.0  # when the piece in hand reached this toxic
        self.left = 0  # of its bytes, not cut yet: 0 when the toxic needs another piece
        self.step = 0  # pieces cut from it so far

    def start(self, at: float, size: int) -> None:
        self.at, self.left, self.step = at, size, 0

    def cut(self, rng: random.Random) -> tuple[float, int]:
        """The next piece (release time, size) of the piece in hand."""
        fault, left = self.fault, self.left
        kind = fault.type
        if kind == "slicer":
            size = slice_size(left, fault.average_size, fault.size_variation, rng)
            at = self.at + self.step * fault.delay
        elif self.bucket is not None:
            size = min(left, self.bucket.piece())
            at = self.bucket.reserve(size, self.at)
        elif kind == "latency":
            size, at = left, self.at + jitter_delay(fault.latency, fault.jitter, rng)
        else:  # timeout
            size, at = left, NEVER
        self.left = left - size
        self.step += 1
        return at, size


class Schedule:
    """One faulted direction of one connection: which piece of the chunks read goes next, and when.

    `add` each chunk as it is read; `peek` says the next piece (release time, size), or None
    when every byte added has gone; `pop` once that piece has gone. Pieces come in the order of
    the bytes: the first piece `peek` gives is the first bytes of the first chunk not yet gone.
    """

    def __init__(self, faults: tuple[FaultConfig, ...], rng: random.Random) -> None:
        # Each shaping toxic in order, each cutting what the one before it gave.
        self.stages = [_Stage(fault) for fault in faults if fault.type in SHAPING]
        self.rng = rng
        limits = [fault.bytes for fault in faults if fault.type == "limit_data"]
        self.allowance: int | None = min(limits) if limits else None  # bytes limit_data still lets through
        self.waiting: deque[tuple[float, int]] = deque()  # chunks no toxic has started on: (read at, size)
        self.ahead: tuple[float, int] | None = None  # the piece `peek` gave, until it is popped
        self.last = 0.0  # the last release time given: none goes before it

    @property
    def exhausted(self) -> bool:
        """limit_data let its last byte through: the stream ends here."""
        return self.allowance == 0

    def add(self, size: int, now: float) -> int:
        """A chunk of `size` bytes read at `now`: how many of them go (limit_data drops the rest)."""
        if self.allowance is not None:
            size = min(size, self.allowance)
            self.allowance -= size
        if size:
            self.waiting.append((now, size))
        return size

    def peek(self) -> tuple[float, int] | None:
        """The next piece (release time, size), or None when nothing is held."""
        if self.ahead is None:
            piece = self._cut(len(self.stages))
            if piece is not None:
                self.last = max(self.last, piece[0])
                self.ahead = (self.last, piece[1])
        return self.ahead

    def pop(self) -> None:
        """The piece `peek` gave has gone."""
        self.ahead = None

    def _cut(self, depth: int) -> tuple[float, int] | None:
        """The next piece out of the first `depth` toxics, or None when they hold nothing."""
        if not depth:
            return self.waiting.popleft() if self.waiting else None
        stage = self.stages[depth - 1]
        if not stage.left:
            piece = self._cut(depth - 1)
            if piece is None:
                return None
            stage.start(*piece)
        return stage.cut(self.rng)
