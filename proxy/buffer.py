"""The send buffer: bytes waiting for a socket to take them, with watermarks.

Chunks are kept as they arrived (no concatenation); a partial send consumes from the front by
slicing a memoryview, so nothing is copied twice. The watermarks are what the peer's reader
obeys: at or above `high` it stops reading, at or below `low` it may read again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class SendBuffer:
    """A FIFO of byte chunks with a running size.

    `append` takes ownership of an immutable chunk (bytes, or a memoryview of bytes nobody
    will reuse). `front` is the chunk to send next; `consume(n)` drops `n` bytes from the
    front after a send took them.
    """

    __slots__ = ("_chunks", "size", "high", "low")

    def __init__(self, high: int, low: int | None = None) -> None:
        if high <= 0:
            raise ValueError("high watermark must be positive")
        self._chunks: deque[memoryview] = deque()
        self.size = 0
        self.high = high
        self.low = high // 4 if low is None else min(low, high)

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
            self._chunks.append(memoryview(chunk))
            self.size += len(chunk)

    def front(self) -> memoryview:
        """The next chunk to send; only valid while the buffer is non-empty."""
        return self._chunks[0]

    def consume(self, count: int) -> None:
        """Drop `count` bytes from the front (a send took them)."""
        if not 0 <= count <= self.size:
            raise ValueError(f"cannot consume {count} bytes from a buffer of {self.size}")
        self.size -= count
        chunks = self._chunks
        while count:
            first = chunks[0]
            if count < len(first):
                chunks[0] = first[count:]
                return
            count -= len(first)
            chunks.popleft()

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
        self._chunks.clear()
        self.size = 0
