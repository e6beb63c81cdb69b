"""What every pair of a process shares (`Runtime`), and what one listener's pairs have in common
(`PairSettings`), made once per process and once per listener (per load)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.config.schema import DEFAULT_MAX_BUFFERED
from proxy.log import EventLog
from proxy.loop.reactor import Reactor
from proxy.loop.resolver import Resolver
from proxy.policy.faults import FaultPlan
from proxy.relay.buffer import Budget
from proxy.relay.dumping import DumpPlan

if TYPE_CHECKING:
    from proxy.relay.pair import Pair

SCRATCH_SIZE = 256 * 1024


class Runtime:
    """What every pair in one process shares: the loop, the resolver, the outputs."""

    def __init__(
        self,
        reactor: Reactor,
        resolver: Resolver,
        log: EventLog,
        worker: tuple[int, int] = (0, 1),
        *,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
    ) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.log = log
        self.log_access = log.enabled("info")  # when off (warning and up), no access record is built
        self.timeline = log.debugging  # each pair logs its `conn_event` lines
        # One read buffer for the whole process: the loop is single-threaded and every read is
        # forwarded (or copied into a SendBuffer) before the next one.
        self.scratch = memoryview(bytearray(SCRATCH_SIZE))
        # What every SendBuffer and pipe of the process holds, against `max_buffered`.
        self.budget = Budget(max_buffered)
        self.pairs: set[Pair] = set()
        self.rng = random.Random()  # which connections get a toxic with a `toxicity` below 1, and their jitter
        # Under `--workers N`, worker i numbers its connections i+1, i+1+N, ...: unique across workers.
        self._next_conn = worker[0] + 1 - worker[1]
        self._conn_step = worker[1]

    def next_conn_id(self) -> int:
        self._next_conn += self._conn_step
        return self._next_conn


@dataclass(frozen=True)
class PairSettings:
    """What one listener's pairs have in common, prepared once per listener."""

    listener: str
    connect_timeout: float  # the listener's: how long a client may take to send a preamble
    idle_timeout: float
    buffer_size: int
    dump: DumpPlan | None = None  # None: no connection of this listener is dumped or captured
    splice: bool = False  # move bytes with os.splice where neither side is TLS
    faults: FaultPlan | None = None  # None: no connection of this listener gets a toxic
