"""Splicing: bulk bytes that never enter Python, socket -> a kernel pipe -> socket.

A direction of a plain pair (no TLS, no dump) switches from copying to os.splice once it turns
out to be a bulk flow; the pipe is then that direction's buffer, with the same watermarks.
"""

from __future__ import annotations

import fcntl
import os

from proxy.relay.buffer import Budget

SPLICE_AVAILABLE = hasattr(os, "splice")
SPLICE_AFTER = 1024 * 1024  # bytes in big reads one direction copies before it switches to splicing
BULK_READ = 32 * 1024  # a read at least this big: the sender is ahead of us, a bulk flow
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


class PipeBuffer:
    """Bytes on their way to a socket, held in a kernel pipe, for a direction that splices.

    The pipe is sized to the listener's `buffer_size` where the system allows; `high` is the
    size it really got. Making one can fail (OSError) when descriptors run out. Bytes that wait
    in it count against `budget`, but only when the caller `settle`s (not per splice).
    """

    def __init__(self, wanted: int, budget: Budget) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.write_fd, _F_SETPIPE_SZ, wanted)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size: the default size still works
        self.budget = budget
        self.counted = 0  # of `size`, what the budget knows about
        self.size = 0
        self.high = fcntl.fcntl(self.write_fd, _F_GETPIPE_SZ)
        self.low = self.high // 4

    def fill_from(self, fd: int, count: int) -> int:
        """Move up to `count` bytes from socket `fd` into the pipe; 0 means end of stream."""
        moved = os.splice(fd, self.write_fd, count, flags=_SPLICE_FLAGS)
        self.size += moved
        return moved

    def splice_to(self, fd: int) -> None:
        """Move what the pipe holds to socket `fd` until empty or the socket is full."""
        try:
            while self.size:
                self.size -= os.splice(self.read_fd, fd, self.size, flags=_SPLICE_FLAGS)
        except (BlockingIOError, InterruptedError):
            pass

    def settle(self) -> Budget:
        """Bring the budget up to date with what the pipe holds now; returns the budget."""
        budget, change = self.budget, self.size - self.counted
        self.counted = self.size
        if change > 0:
            budget.add(change)
        elif change < 0:
            budget.remove(-change)
        return budget

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                os.close(fd)
        self.read_fd = self.write_fd = -1
        self.size = 0
        self.settle()
