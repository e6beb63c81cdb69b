"""A pcapng capture file (or standard output) that many connections write to, rotated by size.

The sink frames packets as pcapng (proxy/protocol/pcapng.py) and writes them through a bounded
output queue (proxy/output.py), so a reader that does not keep up (`--pcap - | wireshark`)
never slows serving: a block that does not fit is dropped whole, and so is everything after it
until the queue has drained (a packet must never follow the interface block it needs, lost).
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
from collections.abc import Callable
from dataclasses import replace

from proxy.config.schema import PcapConfig
from proxy.errors import describe_os_error
from proxy.output import DUMP_QUEUE_LIMIT, Output, StreamOutput, open_private, output_for
from proxy.protocol.pcapng import Packet, PcapngWriter

STANDARD_OUTPUT = "-"


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

    `write` takes one packet of a listener's connection; `generation` counts the new files and
    the recoveries from drops so far, so that a connection can say who it is again (its comment)
    on its first packet after one. `warn(event, **fields)` logs what went wrong: packets lost to a
    stalled reader (once it has caught up), a rotation that failed. A capture never fails the
    connections it watches.
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
        packet: Packet,
        comment: str | None = None,
        captured: int | None = None,
    ) -> None:
        """Frame and write one packet of a connection of `listener` (see PcapngWriter.packet).

        A file that holds a packet is rotated first if this one (with its interface's block, the
        first time the file sees `listener`) would take it past `max_size`; a fresh file takes its
        first packet whatever its size, so a file passes `max_size` only by that packet (and its
        section's fixed blocks), and every rotation is followed by a packet written.
        """
        interface, declaration, block = self._framed(listener, timestamp_us, packet, comment, captured)
        if self._rotation_due(len(declaration) + len(block)):
            if declaration:
                self._writer.withdraw_interface()
            self._rotate()
            interface, declaration, block = self._framed(listener, timestamp_us, packet, comment, captured)
        if declaration:
            if not self._put(declaration):
                self._writer.withdraw_interface()
                self.lost_packets += 1
                return
            self._interfaces[listener] = interface
        if self._put(block):
            self._holds_packets = True
        else:
            self.lost_packets += 1

    def _framed(
        self, listener: str, timestamp_us: int, packet: Packet, comment: str | None, captured: int | None
    ) -> tuple[int, bytes, bytes]:
        """The packet's interface and block, and the block declaring that interface first if this
        section has not (b"" if it has): its index is given out, to withdraw if it is not written."""
        interface = self._interfaces.get(listener)
        declaration = b""
        if interface is None:
            interface, declaration = self._writer.interface(listener)
        block = self._writer.packet(interface, timestamp_us, packet.ip, packet.direction, comment, captured)
        return interface, declaration, block

    def _rotation_due(self, size: int) -> bool:
        limit = self.config.max_size
        return limit is not None and self._rotates and self._holds_packets and self._size + size > limit

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
