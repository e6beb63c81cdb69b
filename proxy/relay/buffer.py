"""The send buffer: bytes waiting for a socket to take them, with watermarks; and the budget
that bounds what all the buffers of the process hold together.

Chunks are kept as they arrived (no concatenation); a partial send consumes from the front by
slicing a memoryview, so nothing is copied twice. The watermarks are what the peer's reader
obeys: at or above `high` it stops reading, at or below `low` it may read again.

The budget is the same rule for the whole process: buffers report the bytes they take in and
give out (only bytes that had to wait: what a socket takes at once is never counted). Past the
limit, producers that queue more are held; once the total has drained to `low`, they are let go.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol


class Producer(Protocol):
    def budget_released(self) -> None:
        """The budget has drained: read again if nothing else holds this producer back."""


class Budget:
    """Bytes held by every buffer of a process against one limit, with hysteresis.

    `over` turns on when `held` goes past `limit` and off when it is back at or below `low`
    (three quarters of the limit); producers `hold`-ed meanwhile are then released, in the
    order they were held.
    """

    __slots__ = ("limit", "low", "held", "over", "_waiting")

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("a budget must be positive")
        self.limit = limit
        self.low = limit * 3 // 4
        self.held = 0
        self.over = False
        self._waiting: dict[Producer, None] = {}  # insertion-ordered set

    def add(self, count: int) -> None:
        self.held += count
        if self.held > self.limit:
            self.over = True

    def remove(self, count: int) -> None:
        self.held -= count
        if self.over and self.held <= self.low:
            self.over = False
            waiting, self._waiting = self._waiting, {}
            for producer in waiting:
                producer.budget_released()

    def hold(self, producer: Producer) -> None:
        """`producer` stopped reading for the budget's sake: release it once the budget drains."""
        self._waiting[producer] = None

    def forget(self, producer: Producer) -> None:
        """`producer` is gone: nothing to release."""
        self._waiting.pop(producer, None)


class SendBuffer:
    """A FIFO of byte chunks with a running size.

    `append` takes ownership of an immutable chunk (bytes, or a memoryview of bytes nobody
    will reuse). `front` is the chunk to send next; `consume(n)` drops `n` bytes from the
    front after a send took them. What it holds counts against `budget` (a private one, with
    no limit to speak of, when none is given).

    The queue itself is made by the first append: most connections never queue a byte (a socket
    takes what it is given), and an empty deque costs about 600 bytes, two per idle pair.
    """

    __slots__ = ("_chunks", "size", "high", "low", "budget")

    def __init__(self, high: int, low: int | None = None, budget: Budget | None = None) -> None:
        if high <= 0:
            raise ValueError("high watermark must be positive")
        self._chunks: deque[memoryview] | None = None
        self.size = 0
        self.high = high
        self.low = high // 4 if low is None else min(low, high)
        self.budget = budget if budget is not None else Budget(1 << 62)

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    @property
    def full(self) -> bool:
        """At or past the high watermark: the producer should stop reading."""
        return self.size >= self.high

    @property
    def drained(self) -> bool:
        """At or below the low watermark: a paused producer may read again."""
        return self.size <= self.low

    def append(self, chunk: bytes | memoryview) -> None:
        if chunk:
            chunks = self._chunks
            if chunks is None:
                chunks = self._chunks = deque()
            chunks.append(memoryview(chunk))
            self.size += len(chunk)
            self.budget.add(len(chunk))

    def front(self) -> memoryview:
        """The next chunk to send; only valid while the buffer is non-empty."""
        return self._chunks[0]

    def consume(self, count: int) -> None:
        """Drop `count` bytes from the front (a send took them)."""
        if not 0 <= count <= self.size:
            raise ValueError(f"cannot consume {count} bytes from a buffer of {self.size}")
        self.size -= count
        chunks = self._chunks
        left = count
        while left:
            first = chunks[0]
            if left < len(first):
                chunks[0] = first[left:]
                break
            left -= len(first)
            chunks.popleft()
        self.budget.remove(count)  # last: releasing the budget may let producers read again

    def send_with(self, send: Callable[[memoryview], int]) -> None:
        """Send from the front with `send` (a socket's) until empty or the socket is full.

        BlockingIOError is absorbed (the bytes stay queued); other OSErrors reach the caller.
        """
        try:
            while self.size:
                chunk = self._chunks[0]
                sent = send(chunk)
                self.consume(sent)
                if sent < len(chunk):
                    return
        except (BlockingIOError, InterruptedError):
            pass

    def clear(self) -> None:
        held, self.size = self.size, 0
        if self._chunks is not None:
            self._chunks.clear()
        self.budget.remove(held)
