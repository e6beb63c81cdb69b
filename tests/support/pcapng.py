"""An independent reading of a pcapng file: its blocks, each length checked at both ends."""

from __future__ import annotations

import struct

SHB, IDB, EPB = 0x0A0D0D0A, 1, 6  # section header, interface description, enhanced packet


def parse_blocks(capture: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of each block; lengths at both ends agree and are multiples of 4."""
    blocks = []
    while capture:
        block_type, total = struct.unpack("<II", capture[:8])
        assert total % 4 == 0 and total <= len(capture)
        assert struct.unpack("<I", capture[total - 4 : total])[0] == total
        blocks.append((block_type, capture[8 : total - 4]))
        capture = capture[total:]
    return blocks
