"""The reactor and the dispatcher base, on real sockets: timers, callbacks, wake-up, errors, interest."""

from __future__ import annotations

import io
import os
import select
import socket
import threading
import time
import types

import pytest

from proxy.errors import StateError
from proxy.log import EventLog
from proxy.loop import reactor as reactor_module
from proxy.loop.dispatcher import Dispatcher, State
from proxy.loop.poller import READ, WRITE, EpollPoller, SelectorsPoller
from proxy.loop.reactor import Reactor

SAFETY = 5.0  # every loop in this file is also stopped by a timer this far out


@pytest.fixture
def log_stream():
    return io.StringIO()


@pytest.fixture(params=[EpollPoller, SelectorsPoller])
def poller(request):
    """Every reactor test runs on epoll itself and on the selectors module's fallback."""
    if request.param is EpollPoller and not hasattr(select, "epoll"):
        pytest.skip("no epoll on this platform")
    return request.param


@pytest.fixture
def reactor(log_stream, poller):
    reactor = Reactor(EventLog(stream=log_stream), poller())
    reactor.call_later(SAFETY, reactor.stop)
    yield reactor
    reactor.close()


@pytest.fixture
def socketpairs():
    """socketpairs() -> (a, b), both closed at teardown (closing twice is harmless)."""
    made: list[socket.socket] = []

    def make() -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        made.extend((a, b))
        return a, b

    yield make
    for sock in made:
        sock.close()


def run_one_pass(reactor: Reactor) -> None:
    """Run exactly one pass of the loop: a queued callback ends it."""
    reactor.call_soon(reactor.stop)
    reactor.loop()


class Reader(Dispatcher):
    """Reads whatever arrives; `on_data(self, data)` is called with each recv()."""

    def __init__(self, reactor, sock, on_data=None, name="reader"):
        super().__init__(reactor, sock)
        self.name = name
        self.received = b""
        self.on_data = on_data
        self.want_read = True
        self.want_write = False
        self.interest_changed()

    def readable(self) -> bool:
        return self.want_read

    def writable(self) -> bool:
        return self.want_write

    def handle_read(self) -> None:
        data = self.socket.recv(4096)
        self.received += data
        if self.on_data:
            self.on_data(self, data)


class Exploder(Reader):
    def handle_read(self) -> None:
        self.socket.recv(4096)
        raise RuntimeError("boom in handle_read")


class CountingPoller:
    """Passes everything to the reactor's real poller, and counts the calls that change it.

    Not a mock: the events still come from the kernel. At each unregister it also records
    whether the descriptor was still open, which is what "unregister before close" means.
    """

    def __init__(self, poller) -> None:
        self._poller = poller
        self.calls: list[tuple[str, int, int | None]] = []
        self.open_at_unregister: list[bool] = []

    def register(self, fileobj, events, data=None):
        self.calls.append(("register", fileobj, events))
        return self._poller.register(fileobj, events, data)

    def modify(self, fileobj, events, data=None):
        self.calls.append(("modify", fileobj, events))
        return self._poller.modify(fileobj, events, data)

    def unregister(self, fileobj):
        self.calls.append(("unregister", fileobj, None))
        try:
            os.fstat(fileobj)
            self.open_at_unregister.append(True)
        except OSError:
            self.open_at_unregister.append(False)
        return self._poller.unregister(fileobj)

    def __getattr__(self, name):
        return getattr(self._poller, name)


@pytest.fixture
def counting(reactor):
    poller = CountingPoller(reactor.poller)
    reactor.poller = poller
    return poller


# -- timers ------------------------------------------------------------------------------


def test_timers_fire_in_order_of_their_due_time_not_of_scheduling(reactor):
    fired = []
    start = time.monotonic()

    def record(name, delay):
        fired.append(name)
        assert time.monotonic() - start >= delay, f"timer {name} fired early"

    for name, delay in [("c", 0.06), ("a", 0.02), ("d", 0.08), ("b", 0.04)]:
        reactor.call_later(delay, record, name, delay)
    reactor.call_later(0.15, reactor.stop)
    reactor.loop()
    assert fired == ["a", "b", "c", "d"]
    assert "callback_failed" not in reactor.log.stream.getvalue()


def test_timers_due_at_the_same_time_fire_in_scheduling_order(reactor, monkeypatch):
    fired = []
    # The clock only moves on between calls; hold it still so that the ten timers really tie.
    frozen = time.monotonic()
    with monkeypatch.context() as patch:
        patch.setattr(reactor_module, "time", types.SimpleNamespace(monotonic=lambda: frozen))
        for i in [*range(10), *range(10)]:
            reactor.call_later(0.01 * (i % 2), fired.append, i)
    reactor.call_later(0.05, reactor.stop)
    reactor.loop()
    assert fired == [0, 2, 4, 6, 8] * 2 + [1, 3, 5, 7, 9] * 2


def test_a_cancelled_timer_does_not_fire(reactor):
    fired = []
    reactor.call_later(0.01, fired.append, "kept")
    reactor.call_later(0.02, fired.append, "cancelled").cancel()
    later = reactor.call_later(0.03, fired.append, "cancelled from a timer")
    reactor.call_later(0.015, later.cancel)
    reactor.call_later(0.1, reactor.stop)
    reactor.loop()
    assert fired == ["kept"]


def test_cancelling_twice_or_after_firing_is_harmless(reactor):
    fired = []
    timer = reactor.call_later(0.01, fired.append, 1)
    reactor.call_later(0.05, reactor.stop)
    reactor.loop()
    timer.cancel()
    timer.cancel()
    other = reactor.call_later(0.01, fired.append, 2)
    other.cancel()
    other.cancel()
    reactor.call_later(0.05, reactor.stop)
    reactor.loop()
    assert fired == [1]


def test_cancelled_timers_do_not_pile_up(reactor):
    for _ in range(5000):
        reactor.call_later(900, print).cancel()
    assert reactor.pending_timers < 2500


def test_a_failing_timer_is_logged_and_the_loop_goes_on(reactor, log_stream):
    fired = []

    def broken():
        raise ValueError("timer trouble")

    reactor.call_later(0.01, broken)
    reactor.call_later(0.02, fired.append, "after")
    reactor.call_later(0.05, reactor.stop)
    reactor.loop()
    assert fired == ["after"]
    assert "callback_failed" in log_stream.getvalue()
    assert "timer trouble" in log_stream.getvalue()


class Owner:
    """Something that owns its callbacks and ends its own work when one of them raises."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def broken(self) -> None:
        raise ValueError("owner's trouble")

    def handle_error(self, exc: BaseException) -> None:
        self.errors.append(exc)


def test_a_failing_timer_goes_to_its_owners_handle_error(reactor, log_stream):
    owner = Owner()
    reactor.call_later(0.01, owner.broken)
    reactor.call_soon(owner.broken)
    reactor.call_later(0.05, reactor.stop)
    reactor.loop()
    assert [str(exc) for exc in owner.errors] == ["owner's trouble", "owner's trouble"]
    assert "callback_failed" not in log_stream.getvalue()


def test_an_owner_whose_handle_error_raises_too_is_logged(reactor, log_stream):
    class Hopeless(Owner):
        def handle_error(self, exc):
            raise RuntimeError("and worse")

    reactor.call_soon(Hopeless().broken)
    run_one_pass(reactor)
    assert "callback_failed" in log_stream.getvalue()
    assert "and worse" in log_stream.getvalue()


# -- callbacks ---------------------------------------------------------------------------


def test_call_soon_runs_later_on_the_loop_in_order(reactor):
    order = []
    reactor.call_soon(order.append, 1)
    reactor.call_soon(order.append, 2)
    assert order == [], "call_soon never runs the callback on the spot"
    reactor.call_soon(reactor.stop)
    reactor.loop()
    assert order == [1, 2]


def test_call_soon_from_a_handler_runs_after_every_handler_of_that_pass(reactor, socketpairs):
    order = []

    def queue_callback(dispatcher, _data):
        order.append(dispatcher.name)
        reactor.call_soon(order.append, f"soon from {dispatcher.name}")

    a_left, a_right = socketpairs()
    b_left, b_right = socketpairs()
    Reader(reactor, a_left, queue_callback, name="a")
    Reader(reactor, b_left, queue_callback, name="b")
    a_right.send(b"x")
    b_right.send(b"y")
    reactor.call_later(0.1, reactor.stop)
    reactor.loop()
    handlers, callbacks = order[:2], order[2:]
    assert sorted(handlers) == ["a", "b"], f"both handlers ran in the same pass: {order}"
    assert callbacks == [f"soon from {name}" for name in handlers]


def test_a_callback_that_requeues_itself_does_not_starve_the_sockets(reactor, socketpairs):
    left, right = socketpairs()
    spins = []
    spins_when_read = []

    def spin():
        spins.append(1)
        if len(spins) == 3:
            right.send(b"ping")
        if len(spins) < 10_000:  # bounded even if the loop never got back to select()
            reactor.call_soon(spin)

    def on_read(_dispatcher, _data):
        spins_when_read.append(len(spins))
        reactor.stop()

    reader = Reader(reactor, left, on_read)
    reactor.call_soon(spin)
    reactor.loop()
    assert reader.received == b"ping"
    assert spins_when_read and spins_when_read[0] <= 4, "one spin per pass, then the socket is served"


def test_call_soon_threadsafe_wakes_a_loop_blocked_in_select(reactor):
    events = []
    reactor.call_later(3.0, lambda: (events.append("bounding timer"), reactor.stop()))

    def on_loop():
        events.append(("callback", threading.current_thread() is threading.main_thread()))
        reactor.stop()

    def from_another_thread():
        time.sleep(0.2)  # long enough for the loop to be asleep in select()
        reactor.call_soon_threadsafe(on_loop)

    thread = threading.Thread(target=from_another_thread)
    started = time.monotonic()
    thread.start()
    try:
        reactor.loop()  # nothing but timers seconds away: only the wake-up can end this early
    finally:
        thread.join(timeout=5)
    elapsed = time.monotonic() - started
    assert events == [("callback", True)], "the callback ran on the loop's thread, before the bounding timer"
    assert elapsed < 2.0


def test_many_threadsafe_callbacks_all_run(reactor):
    seen = []
    done = threading.Event()

    def from_another_thread():
        for i in range(2000):
            reactor.call_soon_threadsafe(seen.append, i)
        reactor.call_soon_threadsafe(reactor.stop)
        done.set()

    thread = threading.Thread(target=from_another_thread)
    thread.start()
    reactor.loop()
    thread.join(timeout=5)
    assert done.is_set()
    assert seen == list(range(2000))


# -- errors in dispatchers ---------------------------------------------------------------


def test_an_error_in_one_handler_closes_that_dispatcher_and_the_loop_serves_the_others(
    reactor, log_stream, socketpairs
):
    bad_left, bad_right = socketpairs()
    good_left, good_right = socketpairs()
    bad = Exploder(reactor, bad_left, name="bad")
    good = Reader(reactor, good_left, lambda _d, data: data == b"after" and reactor.stop(), name="good")
    bad_right.send(b"x")
    # Sent well after the error: only a loop that is still running delivers it.
    reactor.call_later(0.1, good_right.send, b"after")
    reactor.loop()
    assert bad.closed
    assert bad.state is State.CLOSED
    assert bad_left.fileno() == -1
    assert bad.fd not in reactor.map
    assert not good.closed
    assert good.received == b"after"
    bad_right.settimeout(5)
    assert bad_right.recv(10) == b"", "the peer of the failed dispatcher sees it close"
    logged = log_stream.getvalue()
    assert "dispatcher_error" in logged
    assert "dispatcher=Exploder" in logged
    assert "boom in handle_read" in logged
    assert logged.count("dispatcher_error") == 1


def test_a_failing_call_soon_callback_is_logged_and_the_next_one_runs(reactor, log_stream):
    ran = []
    reactor.call_soon(lambda: 1 / 0)
    reactor.call_soon(ran.append, "next")
    reactor.call_soon(reactor.stop)
    reactor.loop()
    assert ran == ["next"]
    assert "callback_failed" in log_stream.getvalue()
    assert "ZeroDivisionError" in log_stream.getvalue()


def test_a_dispatcher_closed_by_an_earlier_handler_of_the_same_pass_gets_no_events(reactor, log_stream, socketpairs):
    handled = []
    a_left, a_right = socketpairs()
    b_left, b_right = socketpairs()
    dispatchers = {}

    def close_the_other(dispatcher, _data):
        handled.append(dispatcher.name)
        dispatchers["b" if dispatcher.name == "a" else "a"].close()

    dispatchers["a"] = Reader(reactor, a_left, close_the_other, name="a")
    dispatchers["b"] = Reader(reactor, b_left, close_the_other, name="b")
    run_one_pass(reactor)  # register both before either has data
    a_right.send(b"x")
    b_right.send(b"y")
    reactor.call_later(0.1, reactor.stop)
    reactor.loop()
    assert len(handled) == 1, f"the closed dispatcher was still handled: {handled}"
    survivor = handled[0]
    assert not dispatchers[survivor].closed
    assert dispatchers["b" if survivor == "a" else "a"].closed
    assert "dispatcher_error" not in log_stream.getvalue()


# -- interest ----------------------------------------------------------------------------


def test_interest_is_registered_once_and_unchanged_interest_touches_no_selector(reactor, counting, socketpairs):
    left, _right = socketpairs()
    reader = Reader(reactor, left)
    run_one_pass(reactor)
    assert counting.calls == [("register", reader.fd, READ)]
    assert reactor.map[reader.fd] is reader

    reader.interest_changed()
    reader.interest_changed()  # marked dirty twice, same answer
    run_one_pass(reactor)
    run_one_pass(reactor)
    assert counting.calls == [("register", reader.fd, READ)], "same interest: no selector call"


def test_interest_changes_become_modify_unregister_and_register(reactor, counting, socketpairs):
    left, _right = socketpairs()
    reader = Reader(reactor, left)
    run_one_pass(reactor)
    counting.calls.clear()

    reader.want_write = True
    reader.interest_changed()
    run_one_pass(reactor)
    assert counting.calls == [("modify", reader.fd, READ | WRITE)]

    reader.want_read = reader.want_write = False
    reader.interest_changed()
    run_one_pass(reactor)
    assert counting.calls[1:] == [("unregister", reader.fd, None)]
    assert reader.mask == 0

    reader.want_read = True
    reader.interest_changed()
    run_one_pass(reactor)
    assert counting.calls[2:] == [("register", reader.fd, READ)]
    assert reader.mask == READ


def test_interest_is_not_polled_without_interest_changed(reactor, counting, socketpairs):
    left, right = socketpairs()
    reader = Reader(reactor, left)
    run_one_pass(reactor)
    counting.calls.clear()
    reader.want_read = False  # but nobody said so
    run_one_pass(reactor)
    run_one_pass(reactor)
    assert counting.calls == []
    right.send(b"still read")
    reactor.call_later(0.1, reactor.stop)
    reactor.loop()
    assert reader.received == b"still read", "the registered interest stays until interest_changed()"


def test_a_dispatcher_that_wants_nothing_is_never_registered(reactor, counting, socketpairs):
    left, right = socketpairs()
    reader = Reader(reactor, left)
    reader.want_read = False
    run_one_pass(reactor)
    right.send(b"ignored")
    reactor.call_later(0.05, reactor.stop)
    reactor.loop()
    assert counting.calls == []
    assert reader.received == b""
    assert reader.fd not in reactor.map


# -- close -------------------------------------------------------------------------------


def test_close_is_idempotent_and_unregisters_before_closing(reactor, counting, socketpairs):
    left, right = socketpairs()
    reader = Reader(reactor, left)
    run_one_pass(reactor)
    fd = reader.fd
    assert reactor.map[fd] is reader
    assert reader.mask == READ

    reader.close()
    assert counting.calls[-1] == ("unregister", fd, None)
    assert counting.open_at_unregister == [True], "the fd was unregistered while still open"
    assert reader.closed
    assert left.fileno() == -1
    assert fd not in reactor.map
    assert reader.mask == 0

    calls = list(counting.calls)
    reader.close()
    reader.close()
    reader.interest_changed()  # a late callback of the closed connection
    run_one_pass(reactor)
    assert counting.calls == calls, "closing again, or asking for interest after close, touches nothing"
    assert "error" not in reactor.log.stream.getvalue()
    right.settimeout(5)
    assert right.recv(10) == b"", "the peer sees the close"


def test_closing_a_dispatcher_never_registered_only_closes_its_socket(reactor, counting, socketpairs):
    left, _right = socketpairs()
    reader = Reader(reactor, left)  # marked dirty, not yet applied
    reader.close()
    run_one_pass(reactor)
    assert counting.calls == []
    assert left.fileno() == -1
    assert reader.fd not in reactor.map


def test_a_dispatcher_closed_while_dirty_is_not_registered_again(reactor, counting, socketpairs):
    left, _right = socketpairs()
    reader = Reader(reactor, left)
    run_one_pass(reactor)
    reader.want_write = True
    reader.interest_changed()
    reader.close()
    run_one_pass(reactor)
    assert [call[0] for call in counting.calls] == ["register", "unregister"]
    assert reader.fd not in reactor.map


def test_a_dispatcher_that_handed_its_socket_on_cannot_hand_it_on_again(reactor, socketpairs):
    # Done is done: a second owner for the socket (or the poller registration) would race the
    # first one for its events, or register a descriptor the kernel may have given to another.
    left, right = socketpairs()
    first = Reader(reactor, left)
    run_one_pass(reactor)
    second = Reader(reactor, left, name="second")
    first.hand_over(second)
    with pytest.raises(StateError, match="Reader cannot go from closed to closed"):
        first.hand_over(Dispatcher(reactor, left))
    with pytest.raises(StateError, match="Reader cannot go from closed to closed"):
        first.detach()
    right.sendall(b"still here")
    reactor.call_later(0.05, reactor.stop)
    reactor.loop()
    assert second.received == b"still here"


def test_closing_the_reactor_closes_its_dispatchers(log_stream, socketpairs):
    reactor = Reactor(EventLog(stream=log_stream))
    left, right = socketpairs()
    reader = Reader(reactor, left)
    run_one_pass(reactor)
    reactor.close()
    assert reader.closed and left.fileno() == -1
    right.settimeout(5)
    assert right.recv(10) == b""


def test_a_timer_centuries_away_does_not_break_the_wait(log_stream):
    # A huge idle_timeout must not overflow epoll's timeout argument and end the loop.
    reactor = Reactor(EventLog(stream=log_stream))
    try:
        reactor.call_later(1e300, lambda: None)
        stopper = threading.Timer(0.1, reactor.call_soon_threadsafe, (reactor.stop,))
        stopper.start()
        try:
            reactor.loop()
        finally:
            stopper.cancel()
            stopper.join(timeout=5)
    finally:
        reactor.close()
