"""Host name resolution off the loop: lookups in worker threads, results posted back to the loop.

The loop never blocks on DNS, and a stalled DNS server must not pile up work behind it:

- a literal IP address is answered at once, without a thread;
- concurrent lookups of one name share one query (whatever their ports);
- at most `max_waiting` queries wait for a thread (MAX_WAITING_LOOKUPS by default); past that a
  lookup fails at once with "too many name lookups waiting";
- `resolve` returns a Lookup whose `cancel()` withdraws the caller; a query nobody waits for any
  more is dropped before it runs (one already running cannot be stopped, its answer is dropped);
- health checks resolve in a lane of their own (`Resolver.health`), so that client lookups stuck
  on a dead DNS server never stop them.

Worker threads are daemons, started as queries need them: a lookup stuck in the C library must
not hold up the exit of the process.
"""

from __future__ import annotations

import socket
import threading
from collections import deque
from collections.abc import Callable

from proxy.config.units import SocketAddress
from proxy.loop.reactor import Reactor

# (family, sockaddr) pairs in the order the lookup gave them, or the error that resolution hit
Resolution = list[tuple[int, tuple]] | OSError
ResolvedCallback = Callable[[Resolution], None]
# socket.getaddrinfo's shape: (host, port, type=...) -> [(family, type, proto, canonname, sockaddr)]
LookupFunction = Callable[..., list[tuple]]

MAX_WAITING_LOOKUPS = 256  # queries of distinct names waiting for a thread, per lane


class TooManyLookups(OSError):
    """The lookup queue is full: this process is short of DNS capacity, no server is to blame."""

    def __init__(self) -> None:
        super().__init__("too many name lookups waiting")


class Lookup:
    """One caller's wait for a name. The callback runs at most once, on the loop's thread."""

    __slots__ = ("callback", "done", "lane", "port", "query")

    def __init__(self, lane: Lane | None, query: _Query | None, port: int, callback: ResolvedCallback) -> None:
        self.lane = lane
        self.query = query
        self.port = port
        self.callback = callback
        self.done = query is None

    def cancel(self) -> None:
        """The caller no longer wants the answer: its callback will not run."""
        if self.done:
            return
        self.done = True
        self.lane.withdraw(self)


class _Query:
    """One lookup of one name, and everybody waiting for it."""

    __slots__ = ("host", "started", "waiters")

    def __init__(self, host: str) -> None:
        self.host = host
        self.started = False  # a thread took it; set under the lane's lock
        self.waiters: dict[Lookup, None] = {}  # insertion-ordered set


def _ignore(_result: Resolution) -> None:
    pass


# What `resolve` returns when it answered at once: there is nothing left to cancel.
_ANSWERED = Lookup(None, None, 0, _ignore)


class Lane:
    """A queue of name lookups and the threads that serve it; callbacks run on the reactor's thread."""

    def __init__(
        self,
        reactor: Reactor,
        lookup: LookupFunction = socket.getaddrinfo,
        threads: int = 4,
        max_waiting: int = MAX_WAITING_LOOKUPS,
        name: str = "resolver",
    ) -> None:
        self.reactor = reactor
        self._lookup = lookup
        self._max_threads = threads
        self._max_waiting = max_waiting
        self._name = name
        self._queries: dict[str, _Query] = {}  # waiting or running, by name; loop thread only
        # Shared with the workers, under the lock:
        self._lock = threading.Condition()
        self._waiting: deque[_Query] = deque()
        self._threads = 0
        self._busy = 0
        self._closed = False

    def resolve(self, address: SocketAddress, callback: ResolvedCallback) -> Lookup:
        """Resolve `address`; `callback(result)` runs on the loop, at once when the answer is known
        now (a literal or UNIX address, or a full queue). Cancel the returned Lookup to withdraw."""
        if address.is_literal:
            family = socket.AF_INET6 if address.is_ipv6 else socket.AF_INET
            callback([(family, (address.host, address.port))])
            return _ANSWERED
        if address.is_unix:
            callback([(socket.AF_UNIX, address.sockaddr)])
            return _ANSWERED
        query = self._queries.get(address.host)
        if query is None:
            query = _Query(address.host)
            if not self._enqueue(query):
                callback(TooManyLookups())
                return _ANSWERED
            self._queries[query.host] = query
        lookup = Lookup(self, query, address.port, callback)
        query.waiters[lookup] = None
        return lookup

    def _enqueue(self, query: _Query) -> bool:
        with self._lock:
            if len(self._waiting) >= self._max_waiting:
                return False
            self._waiting.append(query)
            if self._threads < self._max_threads and self._busy + len(self._waiting) > self._threads:
                self._threads += 1
                threading.Thread(target=self._work, name=self._name, daemon=True).start()
            self._lock.notify()
        return True

    def withdraw(self, lookup: Lookup) -> None:
        """`lookup` is cancelled: drop its query too when nobody else waits and no thread took it."""
        query = lookup.query
        query.waiters.pop(lookup, None)
        if query.waiters:
            return
        with self._lock:
            if query.started:
                return  # it runs anyway; whoever asks for this name meanwhile shares it
            self._waiting.remove(query)
        del self._queries[query.host]

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                query = self._waiting.popleft()
                query.started = True
                self._busy += 1
            result = self._run(query.host)
            with self._lock:
                self._busy -= 1
                if self._closed:
                    return
            try:
                self.reactor.call_soon_threadsafe(self._finished, query, result)
            except OSError:
                return  # the reactor closed under us: nobody is waiting any more

    def _run(self, host: str) -> list[tuple[int, tuple]] | OSError:
        try:
            infos = self._lookup(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            return exc
        except UnicodeError as exc:  # a name the IDNA codec refuses (a label over 63 characters)
            return OSError(f"invalid name: {exc}")
        return [(family, sockaddr[:2]) for family, _, _, _, sockaddr in infos]

    def _finished(self, query: _Query, result: list[tuple[int, tuple]] | OSError) -> None:
        if self._queries.get(query.host) is query:
            del self._queries[query.host]
        for lookup in list(query.waiters):
            if lookup.done:
                continue  # cancelled by an earlier waiter's callback
            lookup.done = True
            answer = result
            if not isinstance(result, OSError):  # the query was made without a port: each waiter's own
                answer = [(family, (sockaddr[0], lookup.port)) for family, sockaddr in result]
            try:
                lookup.callback(answer)
            except Exception as exc:
                # Each waiter is another connection: one's failure must not cost the others their answer.
                self.reactor.callback_failed(lookup.callback, exc)

    def close(self) -> None:
        """Stop the threads (a lookup in progress ends on its own; its answer is dropped)."""
        with self._lock:
            self._closed = True
            self._waiting.clear()
            self._lock.notify_all()
        self._queries.clear()


class Resolver(Lane):
    """Client lookups, plus `health`: a lane of its own for health checks."""

    def __init__(
        self,
        reactor: Reactor,
        threads: int = 4,
        *,
        lookup: LookupFunction = socket.getaddrinfo,
        max_waiting: int = MAX_WAITING_LOOKUPS,
    ) -> None:
        super().__init__(reactor, lookup, threads, max_waiting, "resolver")
        self.health = Lane(reactor, lookup, threads, max_waiting, "resolver-health")

    def close(self) -> None:
        super().close()
        self.health.close()
