"""The capture sink on real files: what a rotation renames (only the old files that exist, so its
cost does not grow with `keep`), and files whose headers alone pass the rotation guard, which
rotate once per packet at most and never loop."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from proxy.config.schema import MAX_PCAP_KEEP, PcapConfig
from proxy.output.pcap_sink import PcapSink
from proxy.protocol.pcapng import MAX_PAYLOAD_IPV4, Peer, TcpConversation
from tests.support import EPB, IDB, SHB, parse_blocks

KiB = 1024
_renames: list[tuple[str, str]] | None = None  # os.rename and os.replace calls, while a test counts them


def _audit(event: str, args: tuple) -> None:
    if event == "os.rename" and _renames is not None:
        _renames.append((str(args[0]), str(args[1])))


sys.addaudithook(_audit)  # a hook cannot be removed: it records only while a test sets _renames


class Speaker:
    """A leg that says who it is on each packet (the sink's generation never matches)."""

    def __init__(self, introduction: str) -> None:
        self.introduction = introduction
        self.generation = -1


def full_segments(count: int) -> list:
    """`count` data packets as large as IPv4 allows (without the ACKs between them), each
    larger than 64 KiB once framed."""
    conversation = TcpConversation(("127.0.0.1", 40000), ("127.0.0.1", 8080), local=Peer.SERVER)
    conversation.open()
    return conversation.send(Peer.CLIENT, b"x" * MAX_PAYLOAD_IPV4 * count)[::2]


def rotating_sink(path: Path, keep: int, warnings: list) -> PcapSink:
    config = PcapConfig(str(path), max_size=64 * KiB, keep=keep)
    return PcapSink(config, str(path), lambda event, **fields: warnings.append((event, fields)))


def test_a_rotation_renames_only_the_old_files_that_exist(tmp_path):
    global _renames
    capture = tmp_path / "capture.pcapng"
    for old in (1, 3):  # left by an earlier run: moved along like the files this one rotates
        (tmp_path / f"capture.pcapng.{old}").write_bytes(b"old %d" % old)
    warnings: list = []
    sink = rotating_sink(capture, MAX_PCAP_KEEP, warnings)
    _renames = []
    try:
        for packet in full_segments(3):
            sink.write("edge", 1_700_000_000_000_000, [packet], Speaker("conn=1"))
    finally:
        renames, _renames = _renames, None
    sink.close()
    name = lambda path: Path(path).name  # noqa: E731
    assert [(name(old), name(new)) for old, new in renames] == [
        ("capture.pcapng.3", "capture.pcapng.4"),
        ("capture.pcapng.1", "capture.pcapng.2"),
        ("capture.pcapng", "capture.pcapng.1"),
        ("capture.pcapng.4", "capture.pcapng.5"),
        ("capture.pcapng.2", "capture.pcapng.3"),
        ("capture.pcapng.1", "capture.pcapng.2"),
        ("capture.pcapng", "capture.pcapng.1"),
    ], "two rotations, each renaming the files there are, not every number up to keep"
    assert (tmp_path / "capture.pcapng.3").read_bytes() == b"old 1"
    assert (tmp_path / "capture.pcapng.5").read_bytes() == b"old 3"
    assert warnings == []


def test_headers_past_the_guard_rotate_once_per_packet_and_never_loop(tmp_path):
    capture = tmp_path / "capture.pcapng"
    listener = "l" * 600  # its interface block alone takes a new file past 512 bytes
    warnings: list = []
    sink = rotating_sink(capture, 2, warnings)
    packets = full_segments(3)
    for packet in packets:
        sink.write(listener, 1_700_000_000_000_000, [packet], Speaker(f"conn=1 listener={listener}"))
    sink.close()
    files = [capture, *(tmp_path / f"capture.pcapng.{index}" for index in (1, 2))]
    assert sorted(path.name for path in tmp_path.iterdir()) == [path.name for path in files]
    for path in files:
        blocks = parse_blocks(path.read_bytes())
        epbs = [body for kind, body in blocks if kind == EPB]
        assert [kind for kind, _ in blocks][:2] == [SHB, IDB] and epbs, f"{path.name}: a file that opens"
        if path.stat().st_size > 64 * KiB:
            assert len(epbs) == 1, f"{path.name}: only a file's first packet takes it past max_size"
    oldest_first = [block for path in reversed(files) for block in parse_blocks(path.read_bytes())]
    lengths = [struct.unpack("<I", body[12:16])[0] for kind, body in oldest_first if kind == EPB]
    assert lengths == [len(packet.header) + len(packet.payload) for packet in packets], "every packet, one a file"
    assert warnings == []
