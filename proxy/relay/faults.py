"""Faults on purpose: the toxics of one connection at work, between a producer side and its consumer.

A pair whose listener has no toxics never gets here (`PairSettings.faults` is None). A pair that
drew some (proxy/policy/faults.py decides) gets one `Toxics`: per faulted direction a
`FaultedStream`, and the timers that end the connection (`timeout`, `reset_peer`).

A FaultedStream sits where the producer's `deliver` hands bytes to the consumer's `forward`:
it shadows, on these two side objects only, the consumer's `forward` (take the chunk and hold
it), `shut_write_when_drained` (the end of stream waits behind what is held, then
`slow_close`'s delay), `handle_write` (once the consumer drained, release more) and the
producer's `resume` (it reads again only once what is held has drained too). The class methods
stay untouched, so other connections pay nothing.

What a toxic holds is the chunks as they were read, one entry a read; the schedule says how big
the next piece is and when it goes, and only then is that slice of the front chunk cut and
sent. Each chunk counts at its cost, its bytes and CHUNK_COST for the objects that hold them,
against `buffer_size` (past it the producer is PAUSED, as by a full buffer) and against the
process's budget, so a sender of many small chunks cannot hold more than one of few big ones.
A pass of the loop releases at most RELEASES_PER_PASS pieces, so a toxic that cuts a chunk
into many small pieces due at once shares the loop with the other connections. Bytes are
dumped as they are released: the hex dump shows what the consumer was given, and when (the
pcap records what the sockets carried anyway).

`Toxics` shadows the client side's `close` too: every way a pair ends closes it, and that stops
the timers and gives back what the toxics held. Until then the toxics live on the side objects
whose methods they shadow; the pair keeps only their names, for its access line.
"""

from __future__ import annotations

import random
from collections import deque
from typing import TYPE_CHECKING

from proxy.config.faults import fault_names
from proxy.config.schema import FaultConfig
from proxy.loop.reactor import Timer
from proxy.policy.faults import NEVER, Schedule
from proxy.relay.side import Reading, Side

if TYPE_CHECKING:
    from proxy.relay.pair import Pair
    from proxy.relay.tap import HexdumpWriter, SnappedDump

_SHADOWED = ("forward", "shut_write_when_drained", "handle_write", "resume", "set_tap")
CHUNK_COST = 192  # bytes a held chunk costs beyond its payload: its bytes object and schedule entry (~160 measured)
RELEASES_PER_PASS = 64  # pieces released in one pass of the loop at most; the rest go in the next


class FaultedStream:
    """One faulted direction: what `producer` reads reaches `consumer` as its toxics say."""

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
        self.eof = False  # the producer's stream ended: the consumer shuts once the chunks are out
        self.shutting = False
        self.stopped = False
        self.offset = 0  # of the bytes released so far, for the dump
        # The dump moves from the producer's reads to the releases here.
        self.tap, producer.tap = producer.tap, None
        consumer.forward = self.take  # type: ignore[method-assign]
        consumer.shut_write_when_drained = self.end  # type: ignore[method-assign]
        consumer.handle_write = self.handle_write  # type: ignore[method-assign]
        producer.resume = self.resume  # type: ignore[method-assign]
        producer.set_tap = self.set_tap  # type: ignore[method-assign]

    @property
    def cost(self) -> int:
        """What the held chunks cost, as `buffer_size` and the budget count it."""
        return self.held + len(self.chunks) * CHUNK_COST

    # -- the consumer's shadowed methods -------------------------------------------------

    def take(self, data: memoryview, flags: int = 0) -> None:
        """Hold a chunk the producer read (a view it will reuse) until the schedule lets it go
        (`flags` is always 0: a faulted pair merges no end, see Side.join)."""
        producer = self.producer
        kept = self.schedule.add(len(data), self.reactor.now)
        if kept < len(data):
            producer.bytes_read -= len(data) - kept  # past limit_data: never delivered, not counted
        if kept:
            self.chunks.append(data[:kept].tobytes())
            self.held += kept
            self.consumer.outgoing.budget.add(kept + CHUNK_COST)
        self.pump()
        if self.stopped:
            return
        if (self.schedule.exhausted or self._full()) and producer.read is Reading.READING:
            producer._read_to(Reading.PAUSED)
        if self.consumer.outgoing.budget.over:
            producer.hold_for_budget()

    def end(self) -> None:
        """The producer's stream ended: the consumer shuts its writing half after what is held."""
        self.eof = True
        self.pump()

    def handle_write(self) -> None:
        type(self.consumer).handle_write(self.consumer)
        if not self.stopped:
            self.pump()

    def resume(self) -> None:
        """The producer reads again only once the toxic's bytes and the consumer's have drained."""
        producer = self.producer
        outgoing = self.consumer.outgoing
        if not self.schedule.exhausted and self.cost + outgoing.size <= outgoing.low:
            type(producer).resume(producer)

    def set_tap(self, tap: HexdumpWriter | SnappedDump | None) -> None:
        """The producer's dump, turned on or off at run time: it is written here, at release."""
        self.tap = tap

    # -- releasing -----------------------------------------------------------------------

    def _full(self) -> bool:
        outgoing = self.consumer.outgoing
        return self.cost + outgoing.size >= outgoing.high

    def pump(self) -> None:
        """Release the pieces that are due, while the consumer takes them; then wait for the next."""
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
            if self.stopped:
                return
        if self.chunks:
            if self.producer.read is Reading.PAUSED:
                self.resume()
            return
        if self.schedule.exhausted and not consumer.pending():
            self.pair.finish("limit", "fault: limit_data")
        elif self.eof and not self.shutting:
            self.shutting = True
            if self.close_delay:
                self.timer = self.reactor.call_later(self.close_delay, self._shut)
            else:
                self._shut()
        elif self.producer.read is Reading.PAUSED:
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
        consumer = self.consumer
        consumer.outgoing.budget.remove(freed)
        if self.tap is not None:
            self._dump(piece)
        self.offset += size
        type(consumer).forward(consumer, piece)

    def _dump(self, piece: memoryview) -> None:
        producer = self.producer
        self.tap.chunk(producer.conn, producer.direction, self.offset, piece, producer.address, self.consumer.address)

    def _due(self) -> None:
        self.timer = None
        self.pump()

    def _shut(self) -> None:
        self.timer = None
        type(self.consumer).shut_write_when_drained(self.consumer)

    def handle_error(self, exc: Exception) -> None:
        self.pair.handle_error(exc)

    def stop(self) -> None:
        """The connection ends: no more timers, and what the toxic held no longer counts."""
        self.stopped = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.consumer.outgoing.budget.remove(self.cost)
        self.producer.bytes_read -= self.held  # never delivered: the access line does not count them
        self.held = 0
        self.chunks.clear()
        for side in (self.producer, self.consumer):
            for name in _SHADOWED:
                side.__dict__.pop(name, None)


class Toxics:
    """The toxics one connection drew: its faulted directions and the timers that end it."""

    def __init__(self, pair: Pair, faults: tuple[FaultConfig, ...], rng: random.Random) -> None:
        self.pair = pair
        self.names = fault_names(faults)
        client, upstream = pair.client, pair.upstream
        self.streams = []
        for stream, producer, consumer in (("upstream", client, upstream), ("downstream", upstream, client)):
            chosen = tuple(fault for fault in faults if fault.stream == stream)
            if any(fault.type != "reset_peer" for fault in chosen):
                self.streams.append(FaultedStream(pair, producer, consumer, chosen, rng))
        reactor = pair.runtime.reactor
        self.timers = []
        for fault in faults:
            if fault.type == "reset_peer":
                self.timers.append(reactor.call_later(fault.timeout, self._end, "reset", "fault: reset_peer"))
            elif fault.type == "timeout" and fault.timeout:
                self.timers.append(reactor.call_later(fault.timeout, self._end, "timeout", "fault: timeout"))
        # Every way the pair ends closes its client side: the toxics stop with it.
        client.close = self._close  # type: ignore[method-assign]

    def _end(self, result: str, reason: str) -> None:
        self.pair.finish(result, reason, abort=result == "reset")

    def _close(self) -> None:
        client = self.pair.client
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        for stream in self.streams:
            stream.stop()
        client.__dict__.pop("close", None)
        client.close()

    def handle_error(self, exc: Exception) -> None:
        self.pair.handle_error(exc)
