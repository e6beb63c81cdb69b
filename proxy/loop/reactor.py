"""The event loop: one poller, an explicit map of dispatchers, a timer heap, a wake-up fd.

Theory of operation
-------------------
Each pass of `loop()`:

1. Re-read interest for the dispatchers marked dirty since the last pass, and only those.
   A dispatcher's mask is its `interest()`: `readable()`/`writable()` as READ/WRITE; the poller (epoll,
   see poller.py) is touched only when that mask differs from the registered one (0 means
   unregistered).
2. Wait in `poll()` until an fd is ready or the earliest timer is due (no wait at all when
   callbacks are queued).
3. Dispatch each ready fd to its dispatcher (the reactor's own map): a read event calls
   `handle_read` (`handle_last_read` when the peer's stream has ended), a write event
   `handle_write_event` (the connect's outcome, or `handle_write`).
   An exception escaping a dispatcher goes to that dispatcher's `handle_error`, never out of the
   loop. A dispatcher closed earlier in the same batch has left the map, so its remaining events
   find nobody. The map gains dispatchers only in step 1, so a new one that reuses a closed
   descriptor's number never gets events from the batch that saw the old one close.
4. Run due timers, then callbacks queued with `call_soon`. An exception escaping one goes to
   the `handle_error` of the object the callback is a bound method of, when it has one.

Signals and other threads wake the loop through a socketpair: `signal.set_wakeup_fd` writes to
it, and `call_soon_threadsafe` queues a callback and writes one byte to it.

Nothing here is global: every dispatcher is handed the reactor it lives on.
"""

from __future__ import annotations

import heapq
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy.loop.dispatcher import CLOSED
from proxy.loop.poller import ENDED, READ, WRITE, Poller, best_poller

if TYPE_CHECKING:
    from proxy.log import EventLog
    from proxy.loop.dispatcher import Dispatcher

# The longest single wait: epoll refuses timeouts past the platform's time_t, and a timer may be
# due centuries away (a huge idle_timeout); waking once an hour to look again costs nothing.
MAX_WAIT = 3600.0
# Cancelled timers stay in the heap until due; long timeouts (idle: minutes) on short connections
# would pile them up, so the heap is rebuilt once more than this many are most of it.
COMPACT_AFTER = 1024


class Timer:
    """A callback due at a monotonic time; `cancel()` makes it a no-op."""

    __slots__ = ("args", "callback", "cancelled", "reactor", "when")

    def __init__(self, reactor: Reactor, when: float, callback: Callable[..., Any], args: tuple) -> None:
        self.reactor = reactor
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback = _nothing
            self.args = ()
            # Counted here rather than in a reactor method: most connections cancel two timers.
            reactor = self.reactor
            reactor.cancelled_timers += 1
            if reactor.cancelled_timers > COMPACT_AFTER and reactor.cancelled_timers * 2 > len(reactor.timers):
                reactor.compact_timers()


def _nothing(*_args: Any) -> None:
    pass


class Reactor:
    """The loop over one poller. Dispatchers register themselves by joining `dirty`
    (`interest_changed`)."""

    def __init__(self, log: EventLog, poller: Poller | None = None) -> None:
        self.log = log
        self.poller = poller if poller is not None else best_poller()
        self.map: dict[int, Dispatcher] = {}
        self.now = time.monotonic()
        self.dirty: set[Dispatcher] = set()  # whose interest to re-read before the next wait
        # (when, seq, timer): tuples compare in C, and seq keeps equal times in scheduling order.
        self.timers: list[tuple[float, int, Timer]] = []
        self._timer_seq = 0
        self.cancelled_timers = 0  # of those in `timers` (Timer.cancel counts them)
        self._ready: deque[tuple[Callable[..., Any], tuple]] = deque()
        self._threadsafe: deque[tuple[Callable[..., Any], tuple]] = deque()
        self._running = False
        self._wakeup_fd_set = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_fd = self._wake_r.fileno()
        self.poller.register(self._wake_fd, READ)

    # -- interest ------------------------------------------------------------------------

    def forget(self, dispatcher: Dispatcher, *, closing: bool = False) -> None:
        """Unregister `dispatcher` at once (`closing`: its socket is about to be closed)."""
        self.dirty.discard(dispatcher)
        fd = dispatcher.fd
        if dispatcher.mask:
            if not (closing and dispatcher.private_fd and self.poller.drops_closed):
                self.poller.unregister(fd)
            dispatcher.mask = 0
        if self.map.get(fd) is dispatcher:
            del self.map[fd]

    def transfer(self, old: Dispatcher, new: Dispatcher) -> None:
        """`new` takes over `old`'s registration (same fd); its interest is re-read next pass."""
        self.dirty.discard(old)
        if old.mask:
            # Same events: the map names the new dispatcher, and the kernel is not asked anything.
            self.map[new.fd] = new
            new.mask, old.mask = old.mask, 0
        self.dirty.add(new)

    def _apply_interest(self) -> None:
        dirty = self.dirty
        poller = self.poller
        closed = CLOSED
        while dirty:
            dispatcher = dirty.pop()
            if dispatcher.state is closed:
                continue
            mask = dispatcher.interest()
            old = dispatcher.mask
            if mask == old:
                continue
            if not old:
                poller.register(dispatcher.fd, mask, dispatcher)
                self.map[dispatcher.fd] = dispatcher
            elif not mask:
                poller.unregister(dispatcher.fd)
            else:
                poller.modify(dispatcher.fd, mask, dispatcher)
            dispatcher.mask = mask

    # -- timers and callbacks ------------------------------------------------------------

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run `callback(*args)` on the loop after `delay` seconds; returns a cancellable Timer."""
        self._timer_seq += 1
        when = time.monotonic() + delay
        timer = Timer(self, when, callback, args)
        heapq.heappush(self.timers, (when, self._timer_seq, timer))
        return timer

    def compact_timers(self) -> None:
        """Drop the cancelled timers from the heap."""
        self.timers = [entry for entry in self.timers if not entry[2].cancelled]
        heapq.heapify(self.timers)
        self.cancelled_timers = 0

    @property
    def pending_timers(self) -> int:
        """Timers in the heap, cancelled ones included (they are dropped lazily)."""
        return len(self.timers)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run `callback(*args)` on the loop after the current pass. Loop thread only."""
        self._ready.append((callback, args))

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        """Like call_soon, from any thread (or a signal handler); wakes the loop."""
        self._threadsafe.append((callback, args))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the pipe is full, so the loop is going to wake anyway

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        threadsafe = self._threadsafe
        while threadsafe:
            self._ready.append(threadsafe.popleft())

    def _timeout(self) -> float | None:
        if self._ready or self._threadsafe:
            return 0
        timers = self.timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
            self.cancelled_timers -= 1
        if not timers:
            return None
        wait = timers[0][0] - time.monotonic()  # (once a pass: no min() and max() calls)
        if wait <= 0.0:
            return 0.0
        return wait if wait < MAX_WAIT else MAX_WAIT

    def _run_due_timers(self) -> None:
        timers = self.timers
        now = self.now
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)[2]
            if timer.cancelled:
                self.cancelled_timers -= 1
            else:
                timer.cancelled = True  # spent: a later cancel() must not count it again
                self._run_callback(timer.callback, timer.args)

    def _run_ready(self) -> None:
        ready = self._ready
        for _ in range(len(ready)):
            callback, args = ready.popleft()
            self._run_callback(callback, args)

    def _run_callback(self, callback: Callable[..., Any], args: tuple) -> None:
        try:
            callback(*args)
        except Exception as exc:
            self.callback_failed(callback, exc)

    def callback_failed(self, callback: Callable[..., Any], exc: Exception) -> None:
        """`callback` raised: end exactly the work it belongs to, never the loop that serves all
        the others. A bound method's object that has `handle_error` (a pair, a connector) gets
        the exception and ends its own connection; anything else is logged as `callback_failed`."""
        handle_error = getattr(getattr(callback, "__self__", None), "handle_error", None)
        if handle_error is not None:
            try:
                handle_error(exc)
                return
            except Exception as second:
                exc = second
        self.log.failure("callback_failed", exc, callback=getattr(callback, "__qualname__", "?"))

    # -- signals -------------------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: Callable[[], Any]) -> None:
        """Run `callback()` on the loop when `signum` arrives (main thread only)."""
        if not self._wakeup_fd_set:
            signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
            self._wakeup_fd_set = True
        signal.signal(signum, lambda _signum, _frame: self.call_soon_threadsafe(callback))

    # -- the loop ------------------------------------------------------------------------

    def loop(self) -> None:
        """Serve until `stop()` is called."""
        self._running = True
        poll = self.poller.poll
        dispatchers = self.map
        wake_fd = self._wake_fd
        not_write, not_read = ~WRITE, ~READ  # EPOLLHUP and EPOLLERR count as both
        closed = CLOSED
        while self._running:
            if self.dirty:
                self._apply_interest()
            events = poll(self._timeout())
            self.now = time.monotonic()
            for fd, mask in events:
                dispatcher = dispatchers.get(fd)
                if dispatcher is None:
                    if fd == wake_fd:
                        self._drain_wakeups()
                    continue
                wanted = dispatcher.mask
                try:
                    if mask & not_write and wanted & READ:
                        if mask & ENDED:
                            dispatcher.handle_last_read()
                        else:
                            dispatcher.handle_read()
                    if mask & not_read and wanted & WRITE and dispatcher.state is not closed:
                        dispatcher.handle_write_event(mask)
                except Exception as exc:
                    dispatcher.handle_error(exc)
            timers = self.timers  # (a cancel may have compacted it into a new list)
            if timers and timers[0][0] <= self.now:
                self._run_due_timers()
            if self._ready:
                self._run_ready()

    def stop(self) -> None:
        """End `loop()` after the current pass."""
        self._running = False

    def close(self) -> None:
        """Close every dispatcher still registered, then the poller itself."""
        for dispatcher in list(self.map.values()):
            dispatcher.close()
        if self._wakeup_fd_set:
            signal.set_wakeup_fd(-1)
            self._wakeup_fd_set = False
        self.poller.close()
        self._wake_r.close()
        self._wake_w.close()
