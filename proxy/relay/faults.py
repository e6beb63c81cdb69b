"""Faults on purpose: the toxics of one connection at work, between a producer side and its consumer.

A pair whose listener has no toxics never gets here (`PairSettings.faults` is None). A pair that
drew some (proxy/policy/faults.py decides) gets one `Toxics`: per faulted direction a
`FaultedStream`, and the timers that end the connection (`timeout`, `reset_peer`).

A FaultedStream sits in the seams a side declares (side.py): it is the producer's `bytes_to`
(take the chunk and hold it) and `end_to` (the end of stream waits behind what is held, then
`slow_close`'s delay), and the consumer's `producer` (told `room_made` as the consumer drains:
release more, and let the producer read again only once what is held has drained too). It
releases into its own outlet, the consumer's `forward` or a hex dump in front of it. Nothing
is replaced on the side objects, and other connections pay nothing.

What a toxic holds is the chunks as they were read, one entry a read; the schedule says how big
the next piece is and when it goes, and only then is that slice of the front chunk cut and
sent. Each chunk counts at its cost, its bytes and CHUNK_COST for the objects that hold them,
against `buffer_size` (past it the producer is PAUSED, as by a full buffer) and against the
process's budget, so a sender of many small chunks cannot hold more than one of few big ones.
A pass of the loop releases at most RELEASES_PER_PASS pieces, so a toxic that cuts a chunk
into many small pieces due at once shares the loop with the other connections. Bytes are
dumped as they are released: the hex dump shows what the consumer was given, and when (the
pcap records what the sockets carried anyway).

The pair's inspection (inspection.py) holds the `Toxics` and stops them when the pair ends,
before its sides close: that stops the timers and gives back what the toxics held.

A stream's flow (checked): FLOWING --the producer's end--> ENDING --all released--> SHUTTING;
any --the pair ends--> STOPPED.
"""

from __future__ import annotations

import random
from collections import deque
from typing import TYPE_CHECKING

from proxy.config.faults import fault_names
from proxy.config.schema import FaultConfig
from proxy.loop.reactor import Timer
from proxy.policy.faults import NEVER, Schedule
from proxy.relay.seams import Outlet
from proxy.relay.side import Side
from proxy.relay.states import PAUSED, StateEnum, check_move

if TYPE_CHECKING:
    from proxy.relay.pair import Pair

CHUNK_COST = 192  # bytes a held chunk costs beyond its payload: its bytes object and schedule entry (~160 measured)
RELEASES_PER_PASS = 64  # pieces released in one pass of the loop at most; the rest go in the next


class Flow(StateEnum):
    FLOWING = "flowing"
    ENDING = "ending"  # the producer's stream ended: the consumer shuts once the chunks are out
    SHUTTING = "shutting"  # the consumer's shut is due (after `slow_close`'s delay) or done
    STOPPED = "stopped"  # the pair ended: nothing is held or released any more


_FLOWING, _ENDING, _SHUTTING, _STOPPED = Flow.FLOWING, Flow.ENDING, Flow.SHUTTING, Flow.STOPPED
_FLOW_MOVES: dict[Flow, frozenset[Flow]] = {
    Flow.FLOWING: frozenset({Flow.ENDING, Flow.STOPPED}),
    Flow.ENDING: frozenset({Flow.SHUTTING, Flow.STOPPED}),
    Flow.SHUTTING: frozenset({Flow.STOPPED}),
    Flow.STOPPED: frozenset(),
}


class FaultedStream:
    """One faulted direction: what `producer` reads reaches `consumer` as its toxics say.

    The pair plugs `take` and `end` in as the producer's outlets and the stream as the
    consumer's producer; `release_to` is where released pieces go (see `plug`).
    """

    flow = _FLOWING

    def __init__(self, pair: Pair, producer: Side, consumer: Side, faults: tuple[FaultConfig, ...], rng: random.Random):
        self.pair = pair
        self.reactor = pair.runtime.reactor
        self.producer = producer
        self.consumer = consumer
        self.schedule = Schedule(faults, rng)
        self.close_delay = sum(fault.delay for fault in faults if fault.type == "slow_close")
        self.chunks: deque[bytes] = deque()  # held, one a read, in order
        self.front_sent = 0  # bytes of the front chunk already released
        self.held = 0  # bytes of the chunks not released yet
        self.timer: Timer | None = None
        self.released = 0  # bytes released so far: a dump plugged in later starts at this offset
        self.release_to: Outlet = consumer.forward

    def _flow_to(self, new: Flow) -> None:
        self.flow = check_move(_FLOW_MOVES, self.flow, new, f"faulted {self.producer.direction}")

    def plug(self, release_to: Outlet) -> None:
        """Released pieces go to `release_to` from now on (a hex dump in front of the consumer, or not)."""
        self.release_to = release_to

    @property
    def cost(self) -> int:
        """What the held chunks cost, as `buffer_size` and the budget count it."""
        return self.held + len(self.chunks) * CHUNK_COST

    # -- the seams: the producer's outlets, the consumer's producer -----------------------

    def take(self, data: memoryview, flags: int = 0) -> None:
        """Hold a chunk the producer read (a view it will reuse) until the schedule lets it go
        (`flags` is always 0: a faulted pair merges no end, see Side.join)."""
        producer = self.producer
        kept = self.schedule.add(len(data), self.reactor.now)
        if kept < len(data):
            producer.uncount(len(data) - kept)  # past limit_data: never delivered, not counted
        if kept:
            self.chunks.append(data[:kept].tobytes())
            self.held += kept
            self.consumer.outgoing.budget.add(kept + CHUNK_COST)
        self.pump()
        if self.schedule.exhausted or self._full():
            producer.pause_reading()  # (a producer closed meanwhile is not reading)
        if self.consumer.outgoing.budget.over:
            producer.hold_for_budget()

    def end(self) -> None:
        """The producer's stream ended: the consumer shuts its writing half after what is held."""
        self._flow_to(_ENDING)
        self.pump()

    def room_made(self, drained: bool) -> None:
        """The consumer sent bytes: release what is due into the room, and let the producer read
        again if everything has drained (`drained`: the consumer's own buffer has)."""
        if drained and self.producer.read is PAUSED:
            self.resume()
        self.pump()

    def resume(self) -> None:
        """The producer reads again only once the toxic's bytes and the consumer's have drained."""
        outgoing = self.consumer.outgoing
        if not self.schedule.exhausted and self.cost + outgoing.size <= outgoing.low:
            self.producer.resume()

    # -- releasing -----------------------------------------------------------------------

    def _full(self) -> bool:
        outgoing = self.consumer.outgoing
        return self.cost + outgoing.size >= outgoing.high

    def pump(self) -> None:
        """Release the pieces that are due, while the consumer takes them; then wait for the next."""
        if self.flow is _STOPPED:
            return
        schedule, consumer = self.schedule, self.consumer
        now = self.reactor.now
        outgoing = consumer.outgoing
        released = 0
        while outgoing.size < outgoing.high:
            piece = schedule.peek()
            if piece is None:
                break
            at, size = piece
            if at > now or released == RELEASES_PER_PASS:
                if self.timer is None and at != NEVER:
                    self.timer = self.reactor.call_later(max(0.0, at - now), self._due)
                break
            schedule.pop()
            released += 1
            self._release(size)
            if self.flow is _STOPPED:
                return  # the consumer failed taking that piece, and the pair is over
        if self.chunks:
            if self.producer.read is PAUSED:
                self.resume()
            return
        if self.schedule.exhausted and not consumer.pending():
            self.pair.finish("limit", "fault: limit_data")
        elif self.flow is _ENDING:
            self._flow_to(_SHUTTING)
            if self.close_delay:
                self.timer = self.reactor.call_later(self.close_delay, self._shut)
            else:
                self._shut()
        elif self.producer.read is PAUSED:
            self.resume()

    def _release(self, size: int) -> None:
        """Send the next `size` held bytes (a piece never spans two chunks) to the consumer."""
        chunks, start = self.chunks, self.front_sent
        front = chunks[0]
        piece = memoryview(front)[start : start + size]
        if start + size == len(front):
            chunks.popleft()
            self.front_sent = 0
            freed = size + CHUNK_COST
        else:
            self.front_sent = start + size
            freed = size
        self.held -= size
        self.consumer.outgoing.budget.remove(freed)
        self.released += size
        self.release_to(piece, 0)

    def _due(self) -> None:
        self.timer = None
        self.pump()

    def _shut(self) -> None:
        self.timer = None
        self.consumer.shut_write_when_drained()

    def handle_error(self, exc: Exception) -> None:
        self.pair.handle_error(exc)

    def stop(self) -> None:
        """The connection ends: no more timers, and what the toxic held no longer counts."""
        self._flow_to(_STOPPED)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.consumer.outgoing.budget.remove(self.cost)
        self.producer.uncount(self.held)  # never delivered: the access line does not count them
        self.held = 0
        self.chunks.clear()


class Toxics:
    """The toxics one connection drew: its faulted directions and the timers that end it.

    `streams` maps a direction's producer side to its FaultedStream; the pair's inspection
    plugs them into the sides' seams at `join`, and calls `stop` when the pair ends.
    """

    def __init__(self, pair: Pair, faults: tuple[FaultConfig, ...], rng: random.Random) -> None:
        self.pair = pair
        self.names = fault_names(faults)
        client, upstream = pair.client, pair.upstream
        self.streams: dict[Side, FaultedStream] = {}
        for stream, producer, consumer in (("upstream", client, upstream), ("downstream", upstream, client)):
            chosen = tuple(fault for fault in faults if fault.stream == stream)
            if any(fault.type != "reset_peer" for fault in chosen):
                self.streams[producer] = FaultedStream(pair, producer, consumer, chosen, rng)
        reactor = pair.runtime.reactor
        self.timers = []
        for fault in faults:
            if fault.type == "reset_peer":
                self.timers.append(reactor.call_later(fault.timeout, self._end, "reset", "fault: reset_peer"))
            elif fault.type == "timeout" and fault.timeout:
                self.timers.append(reactor.call_later(fault.timeout, self._end, "timeout", "fault: timeout"))

    def _end(self, result: str, reason: str) -> None:
        self.pair.finish(result, reason, abort=result == "reset")

    def stop(self) -> None:
        """The pair ends: its timers stop, and what the streams held is given back."""
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        for stream in self.streams.values():
            stream.stop()

    def handle_error(self, exc: Exception) -> None:
        self.pair.handle_error(exc)
