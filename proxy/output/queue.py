"""Writing the log and the dump without ever blocking the loop: one bounded queue per output.

An `Output` takes bytes (whole lines) for one inherited descriptor (stderr, stdout). When
nothing is queued it writes at once, without blocking; what the descriptor does not take goes
into a queue of at most `limit` bytes that the reactor drains when the descriptor is writable.
A record that does not fit is dropped whole and counted; once the queue has drained, the owner
is asked for one line saying how much was lost (`on_recovered`), which is written next.

The inherited descriptor itself is never made non-blocking (its file description is shared
with the shell and whoever else writes to it): pipes, FIFOs and terminals are reopened through
/proc/self/fd for a private description of our own, sockets (journald) are written with
MSG_DONTWAIT on a duplicate. Regular files and other devices never wait for a reader, cannot
be polled, and are written directly. This module holds no reference to a loop:
`proxy.loop.drain.attach_output` puts an output on one.

The files the proxy writes traffic or secrets to (the hex dump, captures, the TLS key log) are
opened with `open_private`: a file it creates is its owner's alone (0600), whatever the umask.

Every write to a pipe is whole lines of at most PIPE_BUF bytes, which the kernel writes in one
piece or not at all: processes sharing a pipe (`run --workers`) never interleave mid-line.
"""

from __future__ import annotations

import os
import select
import socket
import stat
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, TextIO

PIPE_BUF = select.PIPE_BUF  # 4096 on Linux: the largest write a pipe takes atomically
LOG_QUEUE_LIMIT = 256 * 1024  # bytes of log lines (about 1500 access lines) held while stderr does not keep up
DUMP_QUEUE_LIMIT = 4 * 1024 * 1024  # bytes of hex dump held while stdout does not keep up
FLUSH_TIMEOUT = 1.0  # seconds an exiting process waits for one output to take what is queued


class Drainer(Protocol):
    """What drains an output on an event loop (proxy.loop.drain.OutputDrain)."""

    def interest_changed(self) -> None: ...

    def close(self) -> None: ...


def pieces(data: bytes) -> list[bytes]:
    """`data` cut after newlines into pieces of at most PIPE_BUF bytes (a longer line is cut
    anywhere, it cannot be written atomically anyway)."""
    result = []
    start, size = 0, len(data)
    while size - start > PIPE_BUF:
        cut = data.rfind(b"\n", start, start + PIPE_BUF) + 1
        if cut <= start:
            cut = start + PIPE_BUF
        result.append(data[start:cut])
        start = cut
    result.append(data[start:] if start else data)
    return result


class Output:
    """One descriptor written without blocking, through a queue of at most `limit` bytes."""

    def __init__(self, fd: int, limit: int) -> None:
        self.limit = limit
        self.queue: deque[bytes] = deque()
        self.queued = 0  # bytes in the queue
        self.dropped_bytes = 0
        self.dropped_lines = 0
        self.dropped_total = 0  # lines ever dropped, never reset by the recovery report (for `show info`)
        # Called once the queue has drained after drops, with (lines, bytes) lost; returns the line to write.
        self.on_recovered: Callable[[int, int], bytes] | None = None
        self.drainer: Drainer | None = None  # set by proxy.loop.drain.attach_output while on a loop
        self._owned_fd: int | None = None
        self._socket: socket.socket | None = None
        self.fd = fd
        self.pollable = False  # whether it can wait on the reactor (else written directly, blocking)
        self._send: Callable[[bytes], int] = self._write_all
        self._open(fd)

    def _open(self, fd: int) -> None:
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return  # not open: every write fails and is counted
        if stat.S_ISSOCK(mode):
            duplicate = os.dup(fd)
            try:
                self._socket = socket.socket(fileno=duplicate)
            except OSError:
                os.close(duplicate)
                return  # a socket Python cannot wrap: written directly as before
            self.fd = self._socket.fileno()
            self._send = self._send_socket
            self.pollable = True
        elif stat.S_ISFIFO(mode) or (stat.S_ISCHR(mode) and os.isatty(fd)):
            flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
            try:
                self._owned_fd = self.fd = os.open(f"/proc/self/fd/{fd}", flags)
            except OSError:
                return  # no /proc, or not ours to reopen: written directly as before
            self._send = self._write_once
            self.pollable = True

    # -- writing ----------------------------------------------------------------------------

    def _write_all(self, data: bytes) -> int:
        """A file or device that never waits for a reader: everything, blocking (in one write,
        but for a full disk or a signal)."""
        size = len(data)
        written = os.write(self.fd, data)
        if written < size:
            view = memoryview(data)
            while written < size:
                written += os.write(self.fd, view[written:])
        return size

    def _write_once(self, data: bytes) -> int:
        return os.write(self.fd, data)

    def _send_socket(self, data: bytes) -> int:
        return self._socket.send(data, socket.MSG_DONTWAIT)  # type: ignore[union-attr]

    def write(self, data: bytes) -> bool:
        """Write or queue `data` (whole lines); False if it was dropped because the queue is full."""
        if not self.queue:
            if len(data) > PIPE_BUF and self.pollable:
                data = self._write_pieces(data)
            else:
                try:
                    written = self._send(data)
                except (BlockingIOError, InterruptedError):
                    written = 0
                except OSError:
                    self._count_dropped(data)
                    return False  # the reader is gone for good (EPIPE), or the disk is full
                data = data[written:]
            if not data:
                return True
        if self.queued + len(data) > self.limit:
            self._count_dropped(data)
            return False
        self.queue.extend(pieces(data))
        self.queued += len(data)
        if self.drainer is not None:
            self.drainer.interest_changed()
        return True

    def refuses(self, size: int, lines: int) -> bool:
        """Whether a record of `size` bytes (`lines` lines) would be dropped if written now; if
        so it counts as dropped, so the caller need not even make it."""
        if not self.queue or self.queued + size <= self.limit:
            return False
        self._count_drop(size, lines)
        return True

    def _write_pieces(self, data: bytes) -> bytes:
        """Write a large record in atomic pieces while they go; returns what is left."""
        start = 0
        for piece in pieces(data):
            try:
                written = self._send(piece)
            except (BlockingIOError, InterruptedError):
                written = 0
            except OSError:
                self._count_dropped(data[start:])
                return b""
            start += written
            if written < len(piece):
                break
        return data[start:]

    def _count_dropped(self, data: bytes) -> None:
        self._count_drop(len(data), data.count(b"\n"))

    def _count_drop(self, size: int, lines: int) -> None:
        self.dropped_bytes += size
        self.dropped_lines += lines
        self.dropped_total += lines

    def drain(self) -> None:
        """Write what is queued while the descriptor takes it, in batches of whole pieces up to
        PIPE_BUF; once empty after drops, write what `on_recovered` says about them."""
        queue = self.queue
        while queue:
            count, size = 1, len(queue[0])
            while count < len(queue) and size + len(queue[count]) <= PIPE_BUF:
                size += len(queue[count])
                count += 1
            batch = queue[0] if count == 1 else b"".join([queue[i] for i in range(count)])
            try:
                written = self._send(batch)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the reader is gone: nothing queued can be written any more
                self._count_dropped(b"".join(queue))
                queue.clear()
                self.queued = 0
                break
            for _ in range(count):
                queue.popleft()
            self.queued -= written
            if written < size:
                queue.appendleft(batch[written:])
                return
        if (self.dropped_lines or self.dropped_bytes) and self.on_recovered is not None:
            lines, size = self.dropped_lines, self.dropped_bytes
            self.dropped_lines = self.dropped_bytes = 0
            self.write(self.on_recovered(lines, size))

    # -- life cycle -----------------------------------------------------------------------

    def detach(self) -> None:
        if self.drainer is not None:
            self.drainer.close()

    def after_fork(self) -> None:
        """In a new child: an empty queue of its own, and no reactor yet. The parent's reactor
        is not touched (its epoll instance is shared with the parent)."""
        self.queue.clear()
        self.queued = self.dropped_bytes = self.dropped_lines = self.dropped_total = 0
        self.drainer = None

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> None:
        """Write what is queued, waiting at most `timeout` seconds for the descriptor."""
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while self.queue:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return
            self.drain()

    def close(self) -> None:
        """Release the private descriptor; later writes are dropped (never sent to a reused fd)."""
        self.detach()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._owned_fd is not None:
            os.close(self._owned_fd)
            self._owned_fd = None
        self.fd, self.pollable, self._send = -1, False, self._write_all


class StreamOutput:
    """An output onto a Python text stream without a descriptor (an io.StringIO): never blocks."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.on_recovered: Callable[[int, int], bytes] | None = None  # nothing is ever dropped
        self.dropped_total = 0
        self.queued = 0  # nothing ever waits

    def write(self, data: bytes) -> bool:
        self.stream.write(data.decode("utf-8", "replace"))
        return True

    def refuses(self, size: int, lines: int) -> bool:
        return False

    def detach(self) -> None:
        pass

    def after_fork(self) -> None:
        pass

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> None:
        pass

    def close(self) -> None:
        pass


PRIVATE_MODE = 0o600


def open_private(path: str, *, append: bool) -> int:
    """A descriptor writing `path`, made with mode 0600 if it does not exist (else its mode stays);
    `append` keeps what it holds, else it is emptied. OSError as os.open raises it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    return os.open(path, flags, PRIVATE_MODE)


def file_identity(path: str) -> tuple | None:
    """What `path` names on disk, equal for every path to one file: its device and inode when it
    exists (hard links, symbolic ones), else the path with its links resolved (a file not made yet).

    None for a character device (`/dev/null`, a terminal): writers to one do not share a file
    whose records they could interleave, as they would in a regular file or a FIFO."""
    try:
        info = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    if stat.S_ISCHR(info.st_mode):
        return None
    return ("inode", info.st_dev, info.st_ino)


def output_for(stream: TextIO, limit: int) -> Output | StreamOutput:
    """The output for a Python stream: its descriptor when it has one."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return StreamOutput(stream)
    return Output(fd, limit)
