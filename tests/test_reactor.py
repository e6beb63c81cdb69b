"""The reactor and the dispatcher base, with real sockets."""

from __future__ import annotations

import io
import selectors
import socket
import threading

from proxy.dispatcher import Dispatcher
from proxy.log import EventLog
from proxy.reactor import Reactor


def new_reactor() -> tuple[Reactor, io.StringIO]:
    stream = io.StringIO()
    reactor = Reactor(EventLog(stream=stream))
    reactor.call_later(5, reactor.stop)  # every test's loop ends, whatever happens
    return reactor, stream


class Reader(Dispatcher):
    def __init__(self, reactor, sock, on_data=None):
        super().__init__(reactor, sock)
        self.received = b""
        self.on_data = on_data
        self.interest_changed()

    def readable(self) -> bool:
        return True

    def handle_read(self) -> None:
        data = self.socket.recv(100)
        self.received += data
        if self.on_data:
            self.on_data(self, data)


def test_timers_fire_in_order_and_cancelled_ones_do_not():
    reactor, _ = new_reactor()
    fired = []
    reactor.call_later(0.03, fired.append, "c")
    reactor.call_later(0.01, fired.append, "a")
    reactor.call_later(0.02, fired.append, "b")
    reactor.call_later(0.015, fired.append, "never").cancel()
    reactor.call_later(0.05, reactor.stop)
    reactor.loop()
    reactor.close()
    assert fired == ["a", "b", "c"]


def test_call_soon_runs_after_the_pass():
    reactor, _ = new_reactor()
    order = []
    reactor.call_soon(order.append, 1)
    reactor.call_soon(lambda: (order.append(2), reactor.stop()))
    reactor.loop()
    reactor.close()
    assert order == [1, 2]


def test_call_soon_threadsafe_wakes_a_loop_blocked_in_select():
    reactor, _ = new_reactor()
    seen = []

    def from_thread():
        reactor.call_soon_threadsafe(lambda: (seen.append(threading.current_thread().name), reactor.stop()))

    threading.Timer(0.1, from_thread).start()
    reactor.loop()  # only the 5 s safety timer is pending: only the wake-up can end this early
    reactor.close()
    assert seen == ["MainThread"]


def test_cancelled_timers_do_not_pile_up():
    reactor, _ = new_reactor()
    for _ in range(5000):
        reactor.call_later(900, print).cancel()
    assert reactor.pending_timers < 2500
    reactor.close()


def test_one_dispatchers_error_closes_it_and_the_loop_serves_the_others():
    reactor, log = new_reactor()
    bad_left, bad_right = socket.socketpair()
    good_left, good_right = socket.socketpair()

    def explode(_dispatcher, _data):
        raise RuntimeError("boom")

    bad = Reader(reactor, bad_left, explode)
    good = Reader(reactor, good_left, lambda _d, _data: reactor.stop())
    bad_right.send(b"x")
    reactor.call_later(0.05, good_right.send, b"y")
    reactor.loop()
    assert bad.closed and not good.closed
    assert good.received == b"y"
    assert "dispatcher_error" in log.getvalue() and "boom" in log.getvalue()
    reactor.close()
    for sock in (bad_right, good_right):
        sock.close()


class CountingSelector(selectors.DefaultSelector):
    calls: list[str]

    def register(self, *args, **kwargs):
        self.calls.append("register")
        return super().register(*args, **kwargs)

    def modify(self, *args, **kwargs):
        self.calls.append("modify")
        return super().modify(*args, **kwargs)

    def unregister(self, *args, **kwargs):
        self.calls.append("unregister")
        return super().unregister(*args, **kwargs)


def test_interest_is_applied_only_when_the_mask_changes():
    reactor, _ = new_reactor()
    reactor.selector.close()
    reactor.selector = CountingSelector()
    reactor.selector.calls = []
    reactor.selector.register(reactor._wake_r.fileno(), selectors.EVENT_READ, None)
    reactor.selector.calls.clear()
    left, right = socket.socketpair()
    reader = Reader(reactor, left)
    reactor.call_soon(reader.interest_changed)  # same answer again: no selector call
    reactor.call_soon(reader.interest_changed)
    reactor.call_later(0.05, reactor.stop)
    reactor.loop()
    assert reactor.selector.calls == ["register"]
    reader.close()
    assert reactor.selector.calls == ["register", "unregister"]
    reactor.close()
    right.close()


def test_close_is_idempotent_and_unregisters_before_closing():
    reactor, _ = new_reactor()
    left, right = socket.socketpair()
    reader = Reader(reactor, left)
    reactor.call_later(0.01, reactor.stop)
    reactor.loop()
    fd = reader.fd
    assert reactor.map[fd] is reader
    reader.close()
    reader.close()
    assert fd not in reactor.map
    assert fd not in reactor.selector.get_map()
    assert left.fileno() == -1
    reactor.close()
    right.close()
