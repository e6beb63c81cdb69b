"""The connector on a real reactor: which servers it reports as failed, and when it gives up."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from proxy.config.units import Address
from proxy.errors import StateError
from proxy.log import EventLog
from proxy.loop.connector import Connector, ConnectorState
from proxy.loop.reactor import Reactor
from proxy.loop.resolver import Resolver
from tests.support import free_port

SAFETY = 5.0

# Run in a child: it lowers its own descriptor limit, which must not touch the test process.
_OUT_OF_DESCRIPTORS = textwrap.dedent(
    """
    import io, socket, types
    from tests.support.processes import exhaust_descriptors
    from proxy.loop.connector import Connector
    from proxy.log import EventLog
    from proxy.loop.reactor import Reactor
    from proxy.loop.resolver import Resolver
    from proxy.config.units import Address

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    reactor = Reactor(EventLog(stream=io.StringIO()))
    seen = []

    class Observer:
        def connected(self, attempt, address):
            seen.append("connected")
            attempt.close()
            reactor.stop()

        def attempt_failed(self, address, reason):
            seen.append("attempt_failed")

        def unreachable(self, reason, local=False):
            seen.append(f"unreachable: {reason} local={local}")
            reactor.stop()

    hoard = exhaust_descriptors()
    candidate = types.SimpleNamespace(address=Address("127.0.0.1", server.getsockname()[1]))
    Connector(reactor, Resolver(reactor), iter([candidate, candidate]), 1.0, Observer()).start()
    # an answer given inside start() came before the loop: a second, enough to see any other
    reactor.call_later(1 if seen else 5, reactor.stop)
    reactor.loop()
    print(seen)
    """
)


def test_running_out_of_descriptors_blames_no_server():
    # EMFILE is this process's trouble, not the server's: passive health must not mark it down,
    # and the other servers are not tried (they would fail the same way).
    child = subprocess.run([sys.executable, "-c", _OUT_OF_DESCRIPTORS], capture_output=True, text=True, timeout=30)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "['unreachable: too many open files local=True']"


@pytest.fixture
def black_hole():
    """A port on 127.0.0.1 that drops SYNs: a listen(0) socket never accepted, its queue full."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=SAFETY)
    yield listener.getsockname()[1]
    filler.close()
    listener.close()


@pytest.fixture
def listening():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    yield listener.getsockname()[1]
    listener.close()


class Recorder:
    """A ConnectObserver that writes down what it is told, with the time since `started`."""

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor
        self.started = time.monotonic()
        self.events: list[tuple[str, str, float]] = []

    def _note(self, what: str, detail: str) -> None:
        self.events.append((what, detail, time.monotonic() - self.started))

    def connected(self, attempt, server):
        self._note("connected", str(server.address))
        attempt.close()
        self.reactor.stop()

    def attempt_failed(self, server, reason):
        self._note("attempt_failed", reason)

    def unreachable(self, reason, local=False):
        self._note("unreachable", reason)
        self.reactor.stop()

    def handle_error(self, exc):
        self._note("handle_error", str(exc))


@dataclass(frozen=True)
class Candidate:
    """What a pool hands the connector: here, nothing but the address."""

    address: Address


def candidates(*addresses: Address) -> Iterator[Candidate]:
    return iter([Candidate(address) for address in addresses])


def run(reactor: Reactor, connector: Connector) -> None:
    safety = reactor.call_later(SAFETY, reactor.stop)
    connector.start()
    reactor.loop()
    safety.cancel()


class Addresses:
    """A lookup function (getaddrinfo's shape) that answers every name with `count` copies of
    127.0.0.1, or stalls until `release()` for the names in `stalled`."""

    def __init__(self, count: int = 1, stalled: tuple[str, ...] = ()) -> None:
        self.count = count
        self.stalled = stalled
        self.calls: list[str] = []
        self.released = threading.Event()

    def __call__(self, host, port, *, type=0):
        self.calls.append(host)
        if host in self.stalled:
            self.released.wait(SAFETY)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port or 0))] * self.count


def test_connect_timeout_bounds_all_addresses_of_a_server_together(reactor, black_hole):
    # A name with four addresses that all black-hole fails after one connect_timeout, not four.
    resolver = Resolver(reactor, lookup=Addresses(count=4))
    recorder = Recorder(reactor)
    run(reactor, Connector(reactor, resolver, candidates(Address("many.example", black_hole)), 0.4, recorder))
    resolver.close()
    assert [event[:2] for event in recorder.events] == [
        ("attempt_failed", "connect timed out"),
        ("unreachable", "connect timed out"),
    ]
    assert 0.3 < recorder.events[-1][2] < 1.2


def test_after_a_server_times_out_the_next_one_is_tried(reactor, black_hole, listening):
    resolver = Resolver(reactor, lookup=Addresses(count=4))
    recorder = Recorder(reactor)
    servers = candidates(Address("many.example", black_hole), Address("127.0.0.1", listening))
    run(reactor, Connector(reactor, resolver, servers, 0.4, recorder))
    resolver.close()
    assert [event[:2] for event in recorder.events] == [
        ("attempt_failed", "connect timed out"),
        ("connected", f"127.0.0.1:{listening}"),
    ]
    assert recorder.events[-1][2] < 1.2


def test_connect_timeout_covers_a_stalled_name_lookup(reactor, listening):
    # The lookup stalls (a dead DNS server): the server has failed after connect_timeout, its
    # queued lookup is dropped, and the next server is tried.
    lookup = Addresses(stalled=("stalled.example",))
    resolver = Resolver(reactor, threads=1, lookup=lookup)
    resolver.resolve(Address("stalled.example", 80), lambda result: None)  # takes the only thread
    recorder = Recorder(reactor)
    servers = candidates(Address("queued.example", listening), Address("127.0.0.1", listening))
    run(reactor, Connector(reactor, resolver, servers, 0.3, recorder))
    lookup.released.set()
    reactor.call_later(0.1, reactor.stop)
    reactor.loop()
    resolver.close()
    assert [event[:2] for event in recorder.events] == [
        ("attempt_failed", "name resolution timed out"),
        ("connected", f"127.0.0.1:{listening}"),
    ]
    assert 0.2 < recorder.events[0][2] < 1.0
    assert lookup.calls == ["stalled.example"]  # queued.example was dropped before it ran


def test_cancelling_drops_the_queued_lookup(reactor):
    lookup = Addresses(stalled=("stalled.example",))
    resolver = Resolver(reactor, threads=1, lookup=lookup)
    resolver.resolve(Address("stalled.example", 80), lambda result: None)
    recorder = Recorder(reactor)
    connector = Connector(reactor, resolver, candidates(Address("queued.example", 80)), 5.0, recorder)
    connector.start()
    connector.cancel()
    lookup.released.set()
    reactor.call_later(0.2, reactor.stop)
    reactor.loop()
    resolver.close()
    assert recorder.events == []
    assert lookup.calls == ["stalled.example"]


class Raising(Recorder):
    def connected(self, attempt, server):
        self._note("connected", str(server.address))
        raise RuntimeError("bug in connected")


def test_the_observer_is_told_of_the_candidates_themselves(reactor, listening):
    # The connector walks opaque candidates by their `.address` and names the very objects it
    # was given, so the observer needs no search to find its own state for a server.
    resolver = Resolver(reactor)
    first, second = Candidate(Address("127.0.0.1", free_port())), Candidate(Address("127.0.0.1", listening))
    seen = []

    class Observer(Recorder):
        def connected(self, attempt, server):
            seen.append(("connected", server))
            super().connected(attempt, server)

        def attempt_failed(self, server, reason):
            seen.append(("attempt_failed", server))

    run(reactor, Connector(reactor, resolver, iter([first, second]), 2.0, Observer(reactor)))
    resolver.close()
    assert len(seen) == 2
    assert seen[0][0] == "attempt_failed" and seen[0][1] is first
    assert seen[1][0] == "connected" and seen[1][1] is second


def test_an_exception_in_connected_ends_the_attempt_and_reaches_the_observer(reactor, listening):
    # The attempt's socket must not stay registered for writing: the loop would spin on it.
    resolver = Resolver(reactor)
    recorder = Raising(reactor)
    registered = len(reactor.map)
    connector = Connector(reactor, resolver, candidates(Address("127.0.0.1", listening)), 2.0, recorder)
    events = []
    poll = reactor.poller.poll

    def counting_poll(timeout=None):
        ready = poll(timeout)
        events.extend(ready)
        return ready

    reactor.poller.poll = counting_poll
    reactor.call_later(0.3, reactor.stop)
    connector.start()
    reactor.loop()
    resolver.close()
    assert len(events) < 20
    assert len(reactor.map) == registered
    assert [event[:2] for event in recorder.events] == [
        ("connected", f"127.0.0.1:{listening}"),
        ("handle_error", "bug in connected"),
    ]


def test_a_pair_whose_connect_code_raises_ends_alone_with_result_error(reactor, listening):
    # A bug in the code that runs once the upstream connects ends that connection, logged once,
    # with nothing of it left registered; the loop goes on.
    from proxy.config.schema import ServerConfig, UpstreamConfig
    from proxy.policy.upstreams import Pool
    from proxy.relay.pair import Pair
    from proxy.relay.runtime import PairSettings, Runtime

    class BrokenPair(Pair):
        def upstream_ready(self):  # what the dialer calls once the upstream has connected
            super().upstream_ready()
            raise RuntimeError("bug after the hand-over")

    stream = io.StringIO()
    resolver = Resolver(reactor)
    runtime = Runtime(reactor, resolver, EventLog(stream=stream))
    settings = PairSettings(listener="edge", connect_timeout=1.0, idle_timeout=5.0, buffer_size=65536)
    client, proxy_end = socket.socketpair()
    registered = len(reactor.map)
    pool = Pool(UpstreamConfig("up", (ServerConfig(Address("127.0.0.1", listening)),)))
    pair = BrokenPair(runtime, settings, proxy_end, ("127.0.0.1", 1234), on_finish=lambda pair: reactor.stop())
    pair.connect(pool, pool.servers)
    safety = reactor.call_later(SAFETY, reactor.stop)
    reactor.loop()
    safety.cancel()
    client.settimeout(SAFETY)
    with client:
        assert client.recv(1) == b""
    lines = stream.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["connection_error", "access"]
    assert "result=error" in lines[1]
    assert 'reason="RuntimeError: bug after the hand-over"' in lines[1]
    assert len(reactor.map) == registered
    assert pool.servers[0].active == 0


class StateRecorder(Recorder):
    """A Recorder that also writes down the connector's state each time it is told something."""

    connector: Connector

    def _note(self, what, detail):
        super()._note(what, self.connector.state.value)


def test_the_connector_states_as_its_observer_sees_them(reactor, listening):
    resolver = Resolver(reactor)
    recorder = StateRecorder(reactor)
    servers = candidates(Address("127.0.0.1", free_port()), Address("127.0.0.1", listening))
    connector = recorder.connector = Connector(reactor, resolver, servers, 2.0, recorder)
    assert connector.state is ConnectorState.READY
    run(reactor, connector)
    assert [event[:2] for event in recorder.events] == [("attempt_failed", "trying"), ("connected", "connected")]
    connector.cancel()  # its owner ends, after the connect: nothing left to stop
    assert connector.state is ConnectorState.CONNECTED

    recorder = StateRecorder(reactor)
    connector = recorder.connector = Connector(reactor, resolver, candidates(), 2.0, recorder)
    run(reactor, connector)
    resolver.close()
    assert [event[:2] for event in recorder.events] == [("unreachable", "unreachable")]


def test_a_cancelled_connector_stays_cancelled_and_starts_only_once(reactor, black_hole):
    resolver = Resolver(reactor)
    recorder = Recorder(reactor)
    connector = Connector(reactor, resolver, candidates(Address("127.0.0.1", black_hole)), 0.2, recorder)
    connector.start()
    assert connector.state is ConnectorState.TRYING
    with pytest.raises(StateError, match="connector cannot go from trying to trying"):
        connector.start()
    connector.cancel()
    connector.cancel()
    assert connector.state is ConnectorState.CANCELLED
    reactor.call_later(0.4, reactor.stop)  # past its connect timeout: nothing is reported
    reactor.loop()
    resolver.close()
    assert recorder.events == []
    with pytest.raises(StateError, match="connector cannot go from cancelled to trying"):
        connector.start()
