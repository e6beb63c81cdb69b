"""`run --workers N`: N serving processes sharing each listening port, and their supervisor.

Each worker is a whole Server (its own reactor) that binds every listener with SO_REUSEPORT, so
the kernel spreads new connections over the workers. The supervisor serves no traffic: it
forwards SIGTERM/SIGINT/SIGHUP to the workers, restarts a worker that dies unexpectedly (with a
growing delay if it keeps dying), and exits once every worker has exited after a stop signal.

A listener on port 0 gets its port chosen once by the supervisor (a bound, non-listening
placeholder socket keeps it reserved), so that every worker and every restart use the same one.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from proxy.config import Config, ConfigError, listener_key, load_config
from proxy.errors import ProxyError
from proxy.log import EventLog
from proxy.reactor import Reactor

RESTART_DELAY_FIRST = 0.1
RESTART_DELAY_MAX = 5.0
REAP_INTERVAL = 0.2


def reserve_ports(config: Config) -> tuple[dict[str, int], list[socket.socket]]:
    """A concrete port for every port-0 listener (by listener key), held by a placeholder socket."""
    pins: dict[str, int] = {}
    placeholders = []
    for listener in config.listeners:
        if listener.listen.port == 0:
            family = socket.AF_INET6 if listener.listen.is_ipv6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((listener.listen.host, 0))
            placeholders.append(sock)
            pins[listener_key(listener)] = sock.getsockname()[1]
    return pins, placeholders


class Supervisor:
    """Starts, watches and stops the worker processes."""

    def __init__(
        self, config: Config, config_path: Path, log: EventLog, count: int, *, hexdump: bool, splice: bool
    ) -> None:
        self.config = config
        self.pins, self._placeholders = reserve_ports(config)
        self.config_path = config_path
        self.log = log
        self.count = count
        self.hexdump = hexdump
        self.splice = splice
        self.reactor = Reactor(log)
        log.output.attach(self.reactor)
        self.workers: dict[int, int] = {}  # pid -> worker index
        self.stopping = False
        self._delays = [RESTART_DELAY_FIRST] * count
        self._started_at = [0.0] * count

    def run(self) -> int:
        for index in range(self.count):
            self._start(index)
        self.reactor.add_signal_handler(signal.SIGTERM, lambda: self._stop(signal.SIGTERM))
        self.reactor.add_signal_handler(signal.SIGINT, lambda: self._stop(signal.SIGINT))
        self.reactor.add_signal_handler(signal.SIGHUP, self._reload)
        self.reactor.call_later(REAP_INTERVAL, self._reap)
        try:
            self.reactor.loop()
        finally:
            self.reactor.close()
            for sock in self._placeholders:
                sock.close()
        return 0

    def _start(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            self.log.output.after_fork()
            status = self._serve(index)
            self.log.output.flush()
            os._exit(status)
        self.workers[pid] = index
        self._started_at[index] = time.monotonic()
        self.log.info("worker_started", worker=index, pid=pid)

    def _serve(self, index: int) -> int:
        from proxy.server import Server  # the worker's own reactor and threads start after the fork

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        try:
            server = Server(
                self.config,
                self.log,
                hexdump=self.hexdump,
                config_path=self.config_path,
                worker=(index, self.count),
                port_pins=self.pins,
                splice=self.splice,
            )
            server.bind()
            server.serve()
        except ProxyError as exc:
            self.log.error("worker_failed", worker=index, error=str(exc))
            return exc.exit_status
        except BaseException as exc:  # a worker must end with an exit status, never unwind into the supervisor
            self.log.failure("worker_failed", exc, worker=index)
            return 1
        return 0

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            index = self.workers.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                continue
            self.log.warning("worker_exited", worker=index, pid=pid, status=code)
            self._schedule_restart(index)
        if self.stopping and not self.workers:
            self.reactor.stop()
            return
        self.reactor.call_later(REAP_INTERVAL, self._reap)

    def _schedule_restart(self, index: int) -> None:
        lived = time.monotonic() - self._started_at[index]
        delay = self._delays[index] if lived < 10 else RESTART_DELAY_FIRST
        self._delays[index] = min(delay * 2, RESTART_DELAY_MAX)
        self.reactor.call_later(delay, self._restart, index)

    def _restart(self, index: int) -> None:
        if not self.stopping:
            self._start(index)

    def _signal_all(self, signum: int) -> None:
        for pid in self.workers:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass  # it exited; the reaper will notice

    def _reload(self) -> None:
        """Workers reload themselves (and log what they found); a worker started later must
        begin with the same table, so the supervisor keeps the newest valid one too."""
        try:
            self.config = load_config(self.config_path).config
        except ConfigError:
            pass  # every worker logs the errors and keeps its table; restarts keep the old one too
        self._signal_all(signal.SIGHUP)

    def _stop(self, signum: int) -> None:
        """Pass the stop on; a second SIGINT reaches the workers as their own second one."""
        self.stopping = True
        self._signal_all(signum)
