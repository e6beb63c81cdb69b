"""The preamble reader: what a client sends before it can be routed (a PROXY header, the first
bytes a route matches on).

It reads on the client's socket before the pair is open, bounded in size and in time (the
listener's `connect_timeout`, or the peek's own timeout), and hands the socket back to the pair
when it is done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy.loop.dispatcher import Dispatcher

if TYPE_CHECKING:
    from proxy.relay.pair import Pair


class PreambleReader(Dispatcher):
    """Reads what a client sends before it can be routed (a PROXY header, the first bytes).

    `parse(data)` answers None while more is needed, (info, consumed) once complete, or raises
    ValueError. `on_done(info, rest)` then gets the bytes after the preamble, which belong to
    the payload (a peek consumes nothing). At most `limit` bytes are read, within `timeout`
    seconds (default: the listener's `connect_timeout`). When no complete preamble will come,
    because that time ran out or the client half-closed first, `on_incomplete(data, why)`
    decides (`why` is "timeout" or "eof"; the client's EOF is still ahead of the pair, to be
    forwarded), or the pair ends.
    `initial` is what an earlier preamble reader read past its own preamble.
    """

    def __init__(
        self,
        pair: Pair,
        what: str,
        parse: Callable[[bytes], Any],
        limit: int,
        on_done: Callable[[Any, bytes], None],
        *,
        initial: bytes = b"",
        on_incomplete: Callable[[bytes, str], None] | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(pair.runtime.reactor, pair.client.socket)
        self.pair = pair
        self.what = what
        self.parse = parse
        self.limit = limit
        self.on_done = on_done
        self.on_incomplete = on_incomplete
        self.data = bytearray(initial)
        self._timer = self.reactor.call_later(
            pair.settings.connect_timeout if timeout is None else timeout, self._timed_out
        )
        pair.preamble_started(self)
        self.interest_changed()
        if initial:
            self._examine()

    def readable(self) -> bool:
        return True

    def handle_read(self) -> None:
        chunk = self.socket.recv(self.limit - len(self.data))  # an OSError goes to handle_error
        if not chunk:
            if self.on_incomplete is None:
                reason = f"the client closed before sending a complete {self.what}"
                self.pair.finish("protocol_error", reason, by="client")
            else:
                self._give_up("eof")
            return
        self.data += chunk
        self._examine()

    def _examine(self) -> None:
        try:
            result = self.parse(bytes(self.data))
        except ValueError as exc:
            self.pair.finish("protocol_error", f"{self.what}: {exc}", by="client")
            return
        if result is None:
            if len(self.data) >= self.limit:
                self.pair.finish("protocol_error", f"{self.what}: longer than {self.limit} bytes", by="client")
            return
        info, consumed = result
        self.stop()
        self.on_done(info, bytes(self.data[consumed:]))

    def _timed_out(self) -> None:
        self._timer = None
        if self.on_incomplete is None:
            self.pair.finish("timeout", f"no complete {self.what} within connect_timeout")
            return
        self._give_up("timeout")

    def _give_up(self, why: str) -> None:
        data = bytes(self.data)
        self.stop()
        self.on_incomplete(data, why)

    def handle_error(self, exc: BaseException) -> None:
        self.pair.client.handle_error(exc)  # the client's socket: its side acts on what it means

    def stop(self) -> None:
        """Stop reading and give the socket back to the pair (which owns it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.closed:
            self.detach()
        self.pair.preamble_stopped()
