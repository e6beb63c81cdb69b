"""The hex dump tap: what a pair forwards, written as the contract's dump (stdout or a file).

Event lines (open, close) and, per chunk, a header and `hexdump -C` style lines, through a
bounded output queue so that a reader that does not keep up never slows serving.
"""

from __future__ import annotations

import sys
from typing import TextIO

from proxy.log import Clock
from proxy.output.queue import DUMP_QUEUE_LIMIT, Output, StreamOutput, output_for
from proxy.protocol.hexdump import dump_size, dump_text

timestamp_us = Clock(digits=6).stamp  # now, as ISO 8601 in UTC to the microsecond


class HexdumpWriter:
    """Writes the contract's hex dump: event lines and, per chunk, a header and dump lines.

    Records go to `stream` (stdout by default) through `self.output`, a bounded queue of
    DUMP_QUEUE_LIMIT bytes; a record that does not fit is dropped whole, and once the queue has
    drained one `dump_dropped` line says how many bytes of dump were lost (with the `conn` of the
    last record dropped). Header and event lines hold endpoints, names, codes and numbers only:
    an endpoint is printable ASCII without a space however odd its name (config/units.py escapes
    a UNIX socket's once per connection), and the listener's name, the destination of the open
    line of a connection that never opened, is printable text without a space (the loader
    refuses any other), so no record can end early or forge another.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout  # kept: its descriptor is the output's
        self.output: Output | StreamOutput = output_for(self.stream, DUMP_QUEUE_LIMIT)
        self.output.on_recovered = self._dropped_line
        self._dropped_conn = 0

    def _dropped_line(self, _lines: int, size: int) -> bytes:
        return f"{timestamp_us()} conn={self._dropped_conn} dump_dropped bytes={size}\n".encode()

    def _emit(self, conn: int, text: str) -> None:
        if not self.output.write(text.encode()):
            self._dropped_conn = conn

    def opened(self, conn: int, source: str, destination: str, detected: str = "") -> None:
        """The open line; `detected` (` protocol=ssh ...`, escaped) is appended as it is."""
        self._emit(conn, f"{timestamp_us()} conn={conn} open {source} -> {destination}{detected}\n")

    def closed(self, conn: int, result: str) -> None:
        self._emit(conn, f"{timestamp_us()} conn={conn} close result={result}\n")

    def chunk(self, conn: int, direction: str, offset: int, data: memoryview, source: str, destination: str) -> None:
        size = len(data)
        header = f"{timestamp_us()} conn={conn} {direction} offset={offset} len={size} {source} -> {destination}\n"
        output = self.output
        # Records wait for a reader that does not keep up: one the queue cannot take is dropped
        # before a byte of it is formatted.
        refused = output.queued and output.refuses(len(header) + dump_size(size), 1 + (size + 15) // 16)
        if refused or not output.write(header.encode() + dump_text(data)):
            self._dropped_conn = conn

    def truncated(self, conn: int, direction: str, offset: int) -> None:
        self._emit(conn, f"{timestamp_us()} conn={conn} {direction} truncated offset={offset}\n")


class SnappedDump:
    """The dump of one connection cut at `snaplen` bytes per direction, with one `truncated` line
    where each direction's dump stops. A side calls it as it would call the writer."""

    __slots__ = ("writer", "snaplen")

    def __init__(self, writer: HexdumpWriter, snaplen: int) -> None:
        self.writer = writer
        self.snaplen = snaplen

    def chunk(self, conn: int, direction: str, offset: int, data: memoryview, source: str, destination: str) -> None:
        snaplen = self.snaplen
        if offset + len(data) <= snaplen:
            self.writer.chunk(conn, direction, offset, data, source, destination)
        elif offset <= snaplen:  # this chunk crosses the limit (or starts on it): the last one dumped
            if offset < snaplen:
                self.writer.chunk(conn, direction, offset, data[: snaplen - offset], source, destination)
            self.writer.truncated(conn, direction, snaplen)
