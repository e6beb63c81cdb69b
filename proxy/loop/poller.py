"""What the reactor waits on: epoll itself where there is one, the selectors module elsewhere.

Both give the reactor one small interface: `register`, `modify` and `unregister` a descriptor
with READ and/or WRITE interest, and `poll(timeout)` for the ready ones as (fd, events) pairs.
The reactor keeps its own map from descriptor to dispatcher, so epoll needs no per-descriptor
object of its own: each wait is one system call and a list, where the selectors module builds a
key per descriptor and translates every event in Python.

Events are epoll's bits. A ready descriptor may also carry EPOLLHUP or EPOLLERR, which mean
"look at it" for reading and writing alike (as the selectors module has it): the reactor reads
when `events & ~WRITE` and writes when `events & ~READ`, within the interest it registered. A
read event with ENDED (EPOLLRDHUP) says the peer's stream has ended: its last bytes and its end
can be passed on together (epoll only).
"""

from __future__ import annotations

import select
import selectors

_EPOLLIN, _EPOLLERR, _EPOLLHUP = 0x001, 0x008, 0x010
# The peer shut its writing half (EPOLLRDHUP): on a read event, what is left to read is the last
# of its stream. Read interest asks for it too; the selectors module never reports it.
ENDED = 0x2000
READ = _EPOLLIN | ENDED
WRITE = 0x004  # EPOLLOUT's value


class EpollPoller:
    """epoll, level-triggered, called directly."""

    drops_closed = True  # closing a descriptor's last reference takes it out of the set
    # The events that may mean a connect failed: a plain EPOLLOUT is a connect that worked, so
    # only these make it worth asking the socket (SO_ERROR) how it went.
    failure_events = _EPOLLERR | _EPOLLHUP

    def __init__(self) -> None:
        self._epoll = select.epoll()

    def register(self, fd: int, events: int, _dispatcher: object = None) -> None:
        self._epoll.register(fd, events)

    def modify(self, fd: int, events: int, _dispatcher: object = None) -> None:
        self._epoll.modify(fd, events)

    def unregister(self, fd: int) -> None:
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # closed since it was registered: the kernel dropped it already (as selectors does)

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        if timeout is None:
            timeout = -1
        elif timeout > 0:
            # epoll counts milliseconds and rounds down: a timer due in 0.4 ms would be waited
            # for with 0, over and over. Round up instead, as the selectors module does (math.ceil
            # without the call: this runs once a pass).
            timeout = -(-timeout * 1e3 // 1.0) * 1e-3
        try:
            return self._epoll.poll(timeout)
        except InterruptedError:
            return []

    def close(self) -> None:
        self._epoll.close()


class SelectorsPoller:
    """The selectors module's best selector, for platforms without epoll."""

    drops_closed = False  # it keeps its own map, which only unregister empties
    failure_events = WRITE  # a select-style poller says "writable" either way: always ask

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()

    @staticmethod
    def _interest(events: int) -> int:
        return (selectors.EVENT_READ if events & READ else 0) | (selectors.EVENT_WRITE if events & WRITE else 0)

    def register(self, fd: int, events: int, _dispatcher: object = None) -> None:
        self._selector.register(fd, self._interest(events))

    def modify(self, fd: int, events: int, _dispatcher: object = None) -> None:
        self._selector.modify(fd, self._interest(events))

    def unregister(self, fd: int) -> None:
        self._selector.unregister(fd)

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        return [
            (key.fd, (_EPOLLIN if mask & selectors.EVENT_READ else 0) | (WRITE if mask & selectors.EVENT_WRITE else 0))
            for key, mask in self._selector.select(timeout)
        ]

    def close(self) -> None:
        self._selector.close()


Poller = EpollPoller | SelectorsPoller


def best_poller() -> Poller:
    """epoll where the platform has it (Linux), else the selectors module."""
    return EpollPoller() if hasattr(select, "epoll") else SelectorsPoller()
