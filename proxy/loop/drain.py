"""An output's queue drained by the loop: write interest on its descriptor only while bytes wait.

`attach_output(reactor, output)` puts a `proxy.output.Output` (the log's, the dump's) on a reactor; a
stream output, or one written directly (a regular file), needs nothing and is left alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.loop.dispatcher import Dispatcher
from proxy.output import Output

if TYPE_CHECKING:
    from proxy.loop.reactor import Reactor


def attach_output(reactor: Reactor, output: object) -> None:
    """Let `reactor` drain `output`'s queue (a no-op for outputs that never wait)."""
    if not isinstance(output, Output):
        return
    output.detach()
    if output.pollable:
        output.drainer = OutputDrain(reactor, output)
        if output.queue:
            output.drainer.interest_changed()


class _FdHandle:
    """The descriptor as the Dispatcher base wants it (something with fileno())."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


class OutputDrain(Dispatcher):
    """The output on the reactor: write interest only while something is queued."""

    def __init__(self, reactor: Reactor, output: Output) -> None:
        super().__init__(reactor, _FdHandle(output.fd))  # type: ignore[arg-type]
        self.output = output

    def writable(self) -> bool:
        return bool(self.output.queue)

    def handle_write(self) -> None:
        self.output.drain()
        if not self.output.queue:
            self.interest_changed()

    def close(self) -> None:
        """Leave the reactor; the descriptor belongs to the output and stays open."""
        if self.closed:
            return
        self.detach()
        if self.output.drainer is self:
            self.output.drainer = None
