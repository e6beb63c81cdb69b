"""A pcapng capture file (or standard output) that many connections write to, rotated by size.

The sink frames packets as pcapng (proxy/protocol/pcapng.py) and writes them through a bounded
output queue (proxy/output/queue.py), so a reader that does not keep up (`--pcap - | wireshark`)
never slows serving. The blocks of one `write` (a chunk's segments and their acknowledgements,
and the interface block they need, the first time) go out as one record: a record that does not
fit is dropped whole, and so is everything after it until the queue has drained (a packet must
never follow the interface block it needs, lost).
Then the log says how much was lost and the capture goes on in the same section; Wireshark
shows the gap as what it is, segments that were not captured. An interface whose block was lost
is declared again, under a new index.

Each listener is one interface, declared in a section before its first packet. With a
`max_size`, a regular file (never a FIFO or a device) that holds a packet is rotated before a
block would take it past that size (a fresh file takes its first packet whatever the size of
that packet and of the section's own blocks, so a rotation always makes room): PATH becomes
PATH.1, PATH.1 becomes PATH.2 and so on,
and at most `keep` old files are kept. A rotation renames only the old files there are (the
folder is listed once, when the sink opens; the sink knows what it renamed since), so it costs
the loop one rename per old file, never one per number up to `keep`. Every file starts with its
own section, so each one opens on its own.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from proxy.config.schema import PcapConfig
from proxy.errors import describe_os_error
from proxy.output.queue import DUMP_QUEUE_LIMIT, Output, StreamOutput, open_private, output_for
from proxy.protocol.pcapng import Packet, PcapngWriter

STANDARD_OUTPUT = "-"


class Speaker(Protocol):
    """What a sink's packets come from (a leg of a connection): it says who it is once per
    generation (see PcapSink), on its first packet."""

    generation: int  # the sink's generation it last said who it is in

    @property
    def introduction(self) -> str: ...


def worker_path(path: str, worker: int, workers: int) -> str:
    """The file worker `worker` of `workers` writes: one each, since a pcapng stream cannot be shared.

    `capture.pcapng` becomes `capture.w1.pcapng` for worker 1; one process keeps the path.
    """
    if workers <= 1 or path == STANDARD_OUTPUT:
        return path
    folder, name = os.path.split(path)
    stem, dot, suffix = name.rpartition(".")
    name = f"{stem}.w{worker}.{suffix}" if dot and stem else f"{name}.w{worker}"
    return os.path.join(folder, name)


class PcapSink:
    """One capture target: sections, interfaces, rotation and drops.

    `write` takes the packets of one chunk of a listener's connection; `generation` counts the
    new files and the recoveries from drops so far, so that a connection can say who it is again
    (its comment) on its first packet after one. `warn(event, **fields)` logs what went wrong:
    packets lost to a stalled reader (once it has caught up), a rotation that failed. A capture
    never fails the connections it watches.
    """

    def __init__(self, config: PcapConfig, path: str, warn: Callable[..., None]) -> None:
        self.config = config
        self.path = path
        self.warn = warn
        self.generation = 0
        self.lost_packets = 0
        self.lost_bytes = 0
        # A block was dropped: nothing more is written until the reader has caught up.
        self._broken = False
        self._writer = PcapngWriter()
        self._interfaces: dict[str, int] = {}
        self._fd: int | None = None
        self._rotates = False  # whether the file is one a rotation may rename (a regular file)
        self._size = 0  # bytes in the current file
        self._holds_packets = False  # whether the current file has a packet: only then may it rotate
        self._old_files = self._listed_old_files()  # the numbers N of the files PATH.N there are
        self.output: Output | StreamOutput = self._open()
        self._start_section()

    def _open(self) -> Output | StreamOutput:
        if self.path == STANDARD_OUTPUT:
            output = output_for(sys.stdout, DUMP_QUEUE_LIMIT)
        else:
            self._fd = open_private(self.path, append=False)
            # Only a regular file rotates: renaming a FIFO or a device (/dev/null, as root) would
            # move the node itself.
            self._rotates = stat.S_ISREG(os.fstat(self._fd).st_mode)
            output = Output(self._fd, DUMP_QUEUE_LIMIT)
        output.on_recovered = self._recovered
        self._size = 0
        self._holds_packets = False
        return output

    def _listed_old_files(self) -> set[int]:
        """The N of each PATH.N beside the capture (an earlier run's, moved along like this one's)."""
        if self.path == STANDARD_OUTPUT:
            return set()
        folder, name = os.path.split(self.path)
        prefix = f"{name}."
        try:
            names = os.listdir(folder or os.curdir)
        except OSError:
            return set()  # a folder we may write but not list: an earlier run's files are replaced, not moved
        numbers = (entry[len(prefix) :] for entry in names if entry.startswith(prefix))
        return {int(number) for number in numbers if number.isascii() and number.isdigit() and number[0] != "0"}

    def _start_section(self) -> None:
        """A new section of a new file: what the last file lost does not hold this one back."""
        self.generation += 1
        self._interfaces.clear()
        self._broken = False
        self._put(self._writer.header())

    def _put(self, block: bytes) -> bool:
        if self._broken or not self.output.write(block):
            self._broken = True
            self.lost_bytes += len(block)
            return False
        self._size += len(block)
        return True

    def _recovered(self, _lines: int, _size: int) -> bytes:
        """The reader caught up after drops: writing goes on, each connection saying again who it is."""
        self.warn("pcap_dropped", file=self.path, packets=self.lost_packets, bytes=self.lost_bytes)
        self.lost_packets = self.lost_bytes = 0
        self._broken = False
        self.generation += 1
        return b""

    def write(
        self,
        listener: str,
        timestamp_us: int,
        packets: Sequence[Packet],
        speaker: Speaker | None = None,
        kept: int | None = None,
    ) -> None:
        """Frame and write packets of a connection of `listener`, all seen at `timestamp_us`.

        `speaker` (None: nobody) says who it is on its first packet in each generation. `kept`
        is how many more bytes of the sender's payload are kept (a snap length, see
        PcapngWriter.packet; an acknowledgement has no payload to cut); None keeps them all.
        The packets go in one write, but for a rotation: a file that holds a packet is rotated
        first if the next one (with its interface's block, the first time the file sees
        `listener`) would take it past `max_size`; a fresh file takes its first packet whatever
        its size, so a file passes `max_size` only by that packet (and its section's fixed
        blocks), and every rotation is followed by a packet written.
        """
        frame = self._writer.packet
        limit = self.config.max_size if self._rotates else None
        interface = self._interfaces.get(listener)
        pieces: list[bytes | memoryview] = []
        if interface is None:
            interface, pieces = self._declared(listener)
        size = len(pieces[0]) if pieces else 0  # of what this write holds so far
        count = 0  # packets it holds
        mark = 0
        for packet in packets:
            comment = None
            if speaker is not None and speaker.generation != self.generation:
                speaker.generation = self.generation
                comment = speaker.introduction
            if limit is not None:
                mark = len(pieces)
            block = frame(pieces, interface, timestamp_us, packet, comment, kept)
            if limit is not None and (count or self._holds_packets) and self._size + size + block > limit:
                del pieces[mark:]
                self._put_packets(listener, interface, pieces, count)
                self._rotate()
                limit = self.config.max_size if self._rotates else None  # None if the rotation failed
                interface, pieces = self._declared(listener)
                size, count = (len(pieces[0]) if pieces else 0), 0
                block = frame(pieces, interface, timestamp_us, packet, comment, kept)
            size += block
            count += 1
            if kept is not None:
                kept -= len(packet.payload)
        self._put_packets(listener, interface, pieces, count)

    def _declared(self, listener: str) -> tuple[int, list[bytes | memoryview]]:
        """The interface of `listener` in this section, and the pieces of a write starting with
        the block declaring it if the section has not: its index is given out, to withdraw if
        that write does not happen."""
        interface = self._interfaces.get(listener)
        if interface is not None:
            return interface, []
        interface, declaration = self._writer.interface(listener)
        return interface, [declaration]

    def _put_packets(self, listener: str, interface: int, pieces: list[bytes | memoryview], count: int) -> None:
        """Write `count` packets framed into `pieces`, after their interface's declaration if
        `listener` has none yet in this section."""
        declares = listener not in self._interfaces
        if not count:
            if declares:
                self._writer.withdraw_interface()
            return
        if not self._put(b"".join(pieces)):
            if declares:
                self._writer.withdraw_interface()
            self.lost_packets += count
            return
        if declares:
            self._interfaces[listener] = interface
        self._holds_packets = True

    def _rotate(self) -> None:
        """PATH to PATH.1, PATH.1 to PATH.2, ..., keeping `keep` old files; then a fresh PATH.

        If that fails (a full disk, a folder made read-only), the capture stops with a warning
        and the proxy goes on serving.
        """
        self._close_file()
        keep = self.config.keep
        try:
            for number in sorted((number for number in self._old_files if number < keep), reverse=True):
                self._move(f"{self.path}.{number}", number + 1)
                self._old_files.discard(number)
            self._move(self.path, 1)
            self.output = self._open()
        except OSError as exc:
            self.warn("pcap_failed", file=self.path, error=describe_os_error(exc))
            self.config = replace(self.config, max_size=None)  # no more rotations: every write is dropped
            return
        self._start_section()

    def _move(self, source: str, number: int) -> None:
        """`source` becomes PATH.number, replacing it; a source someone removed meanwhile moves nothing."""
        try:
            os.replace(source, f"{self.path}.{number}")
        except FileNotFoundError:
            return
        self._old_files.add(number)

    def _close_file(self) -> None:
        self.output.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def flush(self) -> None:
        self.output.flush()

    def close(self) -> None:
        self.output.flush()
        self._close_file()
