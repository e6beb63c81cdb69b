"""Faults on purpose: the toxics of one connection at work, between a producer side and its consumer.

A pair whose listener has no toxics never gets here (`PairSettings.faults` is None). A pair that
drew some (proxy/policy/faults.py decides) gets one `Toxics`: per faulted direction a
`FaultedStream`, and the timers that end the connection (`timeout`, `reset_peer`).

A FaultedStream sits where the producer's `deliver` hands bytes to the consumer's `forward`:
it shadows, on these two side objects only, the consumer's `forward` (take the chunk, cut it
and queue it with its release times), `shut_write_when_drained` (the end of stream waits
behind the queue, then `slow_close`'s delay), `handle_write` (once the consumer drained, release
more) and the producer's `resume` (it reads again only once the queue has drained too). The
class methods stay untouched, so other connections pay nothing. Bytes a toxic holds count like
the consumer's send buffer: against `buffer_size` (past it the producer is PAUSED, as by a full
buffer) and against the process's budget. They are dumped as they are released: the hex dump
shows what the consumer was given, and when (the pcap records what the sockets carried anyway).

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
from proxy.policy.faults import Schedule
from proxy.relay.side import Reading, Side

if TYPE_CHECKING:
    from proxy.relay.pair import Pair
    from proxy.relay.tap import HexdumpWriter, SnappedDump

_SHADOWED = ("forward", "shut_write_when_drained", "handle_write", "resume", "set_tap")


class FaultedStream:
    """One faulted direction: what `producer` reads reaches `consumer` as its toxics say."""

    def __init__(self, pair: Pair, producer: Side, consumer: Side, faults: tuple[FaultConfig, ...], rng: random.Random):
        self.pair = pair
        self.reactor = pair.runtime.reactor
        self.producer = producer
        self.consumer = consumer
        self.schedule = Schedule(faults, rng)
        self.close_delay = sum(fault.delay for fault in faults if fault.type == "slow_close")
        self.queue: deque[tuple[float, memoryview]] = deque()  # (release time, piece), in order
        self.held = 0
        self.timer: Timer | None = None
        self.eof = False  # the producer's stream ended: the consumer shuts once the queue is out
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

    # -- the consumer's shadowed methods -------------------------------------------------

    def take(self, data: memoryview, flags: int = 0) -> None:
        """Queue a chunk the producer read (a view it will reuse) on the schedule's times
        (`flags` is always 0: a faulted pair merges no end, see Side.join)."""
        producer = self.producer
        pieces = self.schedule.plan(len(data), self.reactor.now)
        kept = sum(size for _, size in pieces)
        if kept < len(data):
            producer.bytes_read -= len(data) - kept  # past limit_data: never delivered, not counted
        if kept:
            chunk = memoryview(data[:kept].tobytes())
            offset = 0
            for at, size in pieces:
                self.queue.append((at, chunk[offset : offset + size]))
                offset += size
            self.held += kept
            self.consumer.outgoing.budget.add(kept)
        self.pump()
        if self.stopped:
            return
        if (self.schedule.exhausted or self._full()) and producer.read is Reading.READING:
            producer._read_to(Reading.PAUSED)
        if self.consumer.outgoing.budget.over:
            producer.hold_for_budget()

    def end(self) -> None:
        """The producer's stream ended: the consumer shuts its writing half after the queue."""
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
        if not self.schedule.exhausted and self.held + outgoing.size <= outgoing.low:
            type(producer).resume(producer)

    def set_tap(self, tap: HexdumpWriter | SnappedDump | None) -> None:
        """The producer's dump, turned on or off at run time: it is written here, at release."""
        self.tap = tap

    # -- releasing -----------------------------------------------------------------------

    def _full(self) -> bool:
        outgoing = self.consumer.outgoing
        return self.held + outgoing.size >= outgoing.high

    def pump(self) -> None:
        """Release every piece that is due, while the consumer takes them; then wait for the next."""
        queue, consumer = self.queue, self.consumer
        now = self.reactor.now
        outgoing = consumer.outgoing
        while queue and outgoing.size < outgoing.high:
            at, piece = queue[0]
            if at > now:
                if self.timer is None and at != float("inf"):
                    self.timer = self.reactor.call_later(at - now, self._due)
                break
            queue.popleft()
            size = len(piece)
            self.held -= size
            outgoing.budget.remove(size)
            if self.tap is not None:
                self._dump(piece)
            self.offset += size
            type(consumer).forward(consumer, piece)
            if self.stopped:
                return
        if queue:
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
        self.consumer.outgoing.budget.remove(self.held)
        self.producer.bytes_read -= self.held  # never delivered: the access line does not count them
        self.held = 0
        self.queue.clear()
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
