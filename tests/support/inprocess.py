"""A Server on a thread of the test's own process, for tests that reach into it (its listeners,
an admission step) while real clients connect."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from proxy.config.schema import Config
from proxy.log import EventLog
from proxy.serve.server import Server
from tests.support.logs import logfmt
from tests.support.waits import WAIT


class Lines:
    """A log stream the test thread reads while the server's thread writes."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            self.lines.extend(text.splitlines())

    def flush(self) -> None:
        pass

    def events(self, event: str) -> list[dict[str, str]]:
        with self._lock:
            return [logfmt(line) for line in self.lines if f" {event} " in line]

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)


@contextmanager
def serving(config: Config) -> Iterator[tuple[Server, Lines]]:
    """A Server for `config` on a thread of this process (no signal handlers), stopped on exit."""
    lines = Lines()
    server = Server(config, EventLog("info", stream=lines))
    server.bind(signals=False)
    thread = threading.Thread(target=server.reactor.loop, daemon=True)
    thread.start()
    try:
        yield server, lines
    finally:
        server.reactor.call_soon_threadsafe(server.reactor.stop)
        thread.join(WAIT)
        server.close()


def listener_address(server: Server) -> tuple[str, int]:
    (listener,) = server.listeners.values()
    return listener.dispatcher.socket.getsockname()[:2]
