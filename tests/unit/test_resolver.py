"""The resolver on a real reactor, with an injected lookup function that can stall like a dead DNS."""

from __future__ import annotations

import socket
import threading

from proxy.config.units import Address
from proxy.loop.reactor import Reactor
from proxy.loop.resolver import Resolver

SAFETY = 5.0


class StallingLookup:
    """getaddrinfo's shape; names in `stalled` wait until `release()`, the others answer at once."""

    def __init__(self, *stalled: str) -> None:
        self.stalled = set(stalled)
        self.calls: list[str] = []
        self._released = threading.Event()

    def __call__(self, host, port, *, type=0):
        self.calls.append(host)
        if host in self.stalled:
            self._released.wait(SAFETY)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port or 0))]

    def release(self) -> None:
        self._released.set()


def run_until(reactor: Reactor, done, timeout: float = SAFETY) -> None:
    """Run the loop until `done()` is true (checked every 10 ms) or `timeout` passes."""

    def check():
        if done():
            reactor.stop()
        else:
            reactor.call_later(0.01, check)

    safety = reactor.call_later(timeout, reactor.stop)
    check()
    reactor.loop()
    safety.cancel()


def test_concurrent_lookups_of_one_name_share_one_query(reactor):
    lookup = StallingLookup("db.example")
    resolver = Resolver(reactor, lookup=lookup)
    results = []
    for _ in range(10):
        resolver.resolve(Address("db.example", 5432), results.append)
    reactor.call_later(0.1, lookup.release)
    run_until(reactor, lambda: len(results) == 10)
    resolver.close()
    assert lookup.calls == ["db.example"]
    assert results == [[(socket.AF_INET, ("127.0.0.1", 5432))]] * 10


def test_one_query_answers_each_waiter_with_its_own_port(reactor):
    lookup = StallingLookup("db.example")
    resolver = Resolver(reactor, lookup=lookup)
    results = {}
    for port in (80, 443):
        resolver.resolve(Address("db.example", port), lambda result, port=port: results.setdefault(port, result))
    lookup.release()
    run_until(reactor, lambda: len(results) == 2)
    resolver.close()
    assert lookup.calls == ["db.example"]
    assert results == {80: [(socket.AF_INET, ("127.0.0.1", 80))], 443: [(socket.AF_INET, ("127.0.0.1", 443))]}


def test_cancelled_lookups_are_dropped_before_they_run(reactor):
    lookup = StallingLookup("stalled.example")
    resolver = Resolver(reactor, threads=1, lookup=lookup)
    answered = []
    resolver.resolve(Address("stalled.example", 80), answered.append)  # takes the only thread
    run_until(reactor, lambda: lookup.calls)
    gone = [resolver.resolve(Address(f"gone{i}.example", 80), answered.append) for i in range(3)]
    for handle in gone:
        handle.cancel()
    resolver.resolve(Address("wanted.example", 80), answered.append)
    lookup.release()
    run_until(reactor, lambda: len(answered) == 2)
    reactor.call_later(0.1, reactor.stop)
    reactor.loop()
    resolver.close()
    assert lookup.calls == ["stalled.example", "wanted.example"]
    assert len(answered) == 2


def test_a_shared_query_runs_while_one_waiter_is_left(reactor):
    lookup = StallingLookup("stalled.example")
    resolver = Resolver(reactor, threads=1, lookup=lookup)
    answered = []
    resolver.resolve(Address("stalled.example", 80), answered.append)
    run_until(reactor, lambda: lookup.calls)
    leaving = resolver.resolve(Address("shared.example", 80), answered.append)
    resolver.resolve(Address("shared.example", 81), answered.append)
    leaving.cancel()
    leaving.cancel()  # twice is harmless
    lookup.release()
    run_until(reactor, lambda: len(answered) == 2)
    resolver.close()
    assert lookup.calls == ["stalled.example", "shared.example"]
    assert answered[1] == [(socket.AF_INET, ("127.0.0.1", 81))]


def test_past_the_bound_a_lookup_fails_at_once(reactor):
    lookup = StallingLookup("stalled.example", "w0.example", "w1.example")
    resolver = Resolver(reactor, threads=1, lookup=lookup, max_waiting=2)
    answered = []
    resolver.resolve(Address("stalled.example", 80), answered.append)
    run_until(reactor, lambda: lookup.calls)
    resolver.resolve(Address("w0.example", 80), answered.append)
    resolver.resolve(Address("w1.example", 80), answered.append)
    refused = []
    resolver.resolve(Address("w2.example", 80), refused.append)
    assert len(refused) == 1
    assert isinstance(refused[0], OSError)
    assert str(refused[0]) == "too many name lookups waiting"
    # A name already waiting is no new query: it joins that one.
    resolver.resolve(Address("w1.example", 81), answered.append)
    lookup.release()
    run_until(reactor, lambda: len(answered) == 4)
    resolver.close()
    assert all(isinstance(result, list) for result in answered)


def test_a_failed_lookup_reports_the_error(reactor):
    def lookup(host, port, *, type=0):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    resolver = Resolver(reactor, lookup=lookup)
    results = []
    resolver.resolve(Address("nowhere.example", 80), results.append)
    run_until(reactor, lambda: results)
    resolver.close()
    assert isinstance(results[0], OSError)
    assert results[0].strerror == "Name or service not known"


def test_a_literal_address_is_answered_at_once_without_a_lookup(reactor):
    lookup = StallingLookup()
    resolver = Resolver(reactor, lookup=lookup)
    results = []
    resolver.resolve(Address("::1", 80), results.append).cancel()
    assert results == [[(socket.AF_INET6, ("::1", 80))]]
    assert lookup.calls == []


def test_health_lookups_go_on_while_client_lookups_stall(reactor):
    names = [f"client{i}.example" for i in range(8)]
    lookup = StallingLookup(*names)
    resolver = Resolver(reactor, threads=2, lookup=lookup)
    for name in names:
        resolver.resolve(Address(name, 80), lambda result: None)
    health = []
    resolver.health.resolve(Address("checked.example", 80), health.append)
    run_until(reactor, lambda: health, timeout=2.0)
    lookup.release()
    resolver.close()
    assert health == [[(socket.AF_INET, ("127.0.0.1", 80))]]


def test_a_name_the_system_cannot_even_encode_fails_like_any_other(reactor):
    # getaddrinfo raises UnicodeError, not OSError, for a label over 63 characters: the caller
    # still gets an answer instead of a lookup that never ends.
    resolver = Resolver(reactor)
    results = []
    resolver.resolve(Address("a" * 64 + ".example", 80), results.append)
    run_until(reactor, lambda: results)
    resolver.close()
    assert isinstance(results[0], OSError)
    assert str(results[0]).startswith("invalid name:")
