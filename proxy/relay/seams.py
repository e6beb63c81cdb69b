"""What a side talks to besides its socket: the owner it reports to, and the outlets its bytes go to.

A side (side.py) reports everything but bytes to its owner, the pair, through `SideOwner`; the
owner decides what follows. Its bytes go to an `Outlet`, set at `join`: the peer's `forward`,
or something plugged in between (a hex dump, a toxic, the timeline's first-byte watch), which
ends in the peer's `forward` too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.relay.side import Side

Outlet = Callable[[memoryview, int], None]  # where a side's bytes go: (a view the caller will reuse, send flags)


class SideOwner(Protocol):
    """What a side reports to the pair that owns it; the owner decides what happens next."""

    def end_of_stream(self, side: Side) -> None:
        """`side` read the end of its stream (its read state is EOF already); the owner passes
        it on through `side.end_to`."""

    def write_shut(self, side: Side) -> None:
        """`side` shut its writing half, as the owner asked with `shut_write_when_drained`."""

    def peer_gone(self, side: Side, exc: OSError) -> None:
        """The remote end of `side` is gone (a reset, say): the connection is over."""

    def failed(self, side: Side, exc: BaseException) -> None:
        """An unexpected exception (a bug) in work for `side`."""

    def protocol_failed(self, side: Side, result: str, reason: str) -> None:
        """The protocol on `side` broke (a TLS error): the connection ends with `result`."""

    def handshake_done(self, side: Side) -> None:
        """`side`'s TLS handshake is complete; it reads no plaintext until `start_reading`."""

    def handshake_failed(self, side: Side, result: str, reason: str) -> None:
        """`side`'s TLS handshake failed."""
