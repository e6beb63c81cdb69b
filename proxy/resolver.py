"""Host name resolution off the loop: getaddrinfo in worker threads, results posted back.

The loop never blocks on DNS. A literal IP address is answered at once without a thread.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from proxy.reactor import Reactor
from proxy.units import Address

# (family, sockaddr) pairs in the order getaddrinfo gave them, or the error that resolution hit
Resolution = list[tuple[int, tuple]] | OSError
ResolvedCallback = Callable[[Resolution], None]


class Resolver:
    """Resolves addresses for connectors; callbacks run on the reactor's thread."""

    def __init__(self, reactor: Reactor, threads: int = 4) -> None:
        self.reactor = reactor
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def resolve(self, address: Address, callback: ResolvedCallback) -> None:
        if address.is_literal:
            family = socket.AF_INET6 if address.is_ipv6 else socket.AF_INET
            callback([(family, (address.host, address.port))])
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="resolver")
        self._pool.submit(self._lookup, address, callback)

    def _lookup(self, address: Address, callback: ResolvedCallback) -> None:
        try:
            infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
            result: Resolution = [(family, sockaddr[:2]) for family, _, _, _, sockaddr in infos]
        except OSError as exc:
            result = exc
        self.reactor.call_soon_threadsafe(callback, result)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
