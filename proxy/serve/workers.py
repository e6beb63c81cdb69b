"""`run --workers N`: N serving processes sharing each listening port, and their supervisor.

The supervisor binds every listening socket itself, before it forks: per address a SO_REUSEPORT
group of N sockets, one per worker, so the kernel still spreads new connections over the
workers' own accept queues. The group's first socket binds without SO_REUSEPORT and gets it only
once it listens: that bind is the check that nobody (another pairproxy with workers included)
serves the address, and leaves no moment in which the address is free between the check and the
group. A worker binding for itself could not tell its siblings' group from a stranger's, hence
the hand-over; it costs a socketpair per worker. A port 0 becomes one port for every worker and
restart.

Each worker gets its sockets over its link, an AF_UNIX socketpair whose other end only the
supervisor holds: the worker reports `ready` (bound) or why it failed on it, takes reloads from
it (the sockets of new addresses, or why they could not be bound, then `reload`), and drains
like on SIGTERM when it reads end of file: a worker never outlives its supervisor.

With `admin:` in the file the supervisor serves the admin socket and the HTTP admin for the
whole tree (bound before the forks; a worker closes them): each worker has a second pair, an
admin pair, on which the supervisor asks it for its snapshot or passes a command on, never
waiting for the answers on its loop (proxy/admin/workers.py). Its /ready says 503 while it
stops, and while no worker answers.

The supervisor serves no traffic. It takes over SIGTERM/SIGINT/SIGHUP before it forks (blocked
around each fork, back to their defaults in the child until the worker's server installs its
own) and passes stops on. A worker that fails (exits non-zero, not killed by a signal) before its
place has ever served stops the whole start with exit status 1; one that dies later is
restarted (with a growing delay if it keeps dying). The supervisor exits once every worker has
exited after a stop signal.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.admin.command_socket import CommandSocket
from proxy.admin.web import AdminHttp
from proxy.admin.worker_pair import WorkerAdminPair
from proxy.admin.workers import Workers
from proxy.config.loader import ConfigError, load_config
from proxy.config.schema import Config, DumpOverrides, ListenerConfig, listener_key
from proxy.config.units import SocketAddress
from proxy.errors import ProxyError, StartupError, describe_os_error
from proxy.log import EventLog
from proxy.loop.dispatcher import Dispatcher
from proxy.loop.drain import attach_output
from proxy.loop.listener import HandedSockets, SocketFiles, bind_reuseport_group
from proxy.loop.reactor import Reactor
from proxy.serve.pidfile import PidFile
from proxy.serve.systemd import Systemd

if TYPE_CHECKING:
    from proxy.serve.server import Server

RESTART_DELAY_FIRST = 0.1
RESTART_DELAY_MAX = 5.0
REAP_INTERVAL = 0.2
SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
RECORD_MAX = 4096

# Records on a link. Supervisor to worker: a socket, or why an address has none; then `serve`
# (start) or `reload`. Worker to supervisor: `ready` once bound, or `failed` with the reason.
LISTEN, REFUSE, SERVE, RELOAD, READY, FAILED = b"listen", b"refuse", b"serve", b"reload", b"ready", b"failed"
KEEP_RUNTIME = "keep-runtime"  # the text of a `reload` record whose servers changed at run time stay


def _send(link: socket.socket, kind: bytes, text: str = "", sock: socket.socket | None = None) -> None:
    record = kind + b" " + text.encode()
    if sock is None:
        link.send(record)
    else:
        socket.send_fds(link, [record], [sock.fileno()])


def _receive(link: socket.socket) -> tuple[bytes, str, socket.socket | None] | None:
    """The next record (kind, text, socket), or None once the other end is closed."""
    try:
        record, fds, _flags, _address = socket.recv_fds(link, RECORD_MAX, 1)
    except ConnectionResetError:  # closed with our records unread
        return None
    if not record:
        return None
    kind, _, text = record.partition(b" ")
    return kind, text.decode(), socket.socket(fileno=fds[0]) if fds else None


def _take_handed_records(link: socket.socket, until: bytes, handed: HandedSockets) -> str | None:
    """Keep the sockets and refusals the supervisor sent in `handed`, up to the record `until`: its
    text; None at end of file."""
    while True:
        received = _receive(link)
        if received is None:
            return None
        kind, text, sock = received
        if kind == until:
            return text
        if kind == LISTEN and sock is not None:
            handed.hand_over(text, sock)
        elif kind == REFUSE:
            address, _, error = text.partition(" ")
            handed.hand_over(address, error)


def _group(
    listener: ListenerConfig, passed: dict[str, socket.socket], count: int, kept: SocketFiles
) -> list[socket.socket]:
    """`count` sockets listening for `listener`, one per worker: copies of the one socket activation
    passed for it (the workers share its accept queue), else a new SO_REUSEPORT group (copies of
    the UNIX socket `kept` holds)."""
    sock = passed.get(listener_key(listener))
    if sock is None:
        return bind_reuseport_group(listener.listen, count, kept)
    return [sock.dup() for _ in range(count)]


class SupervisorLink(Dispatcher):
    """A worker's end of its link: reloads come over it, and end of file means the supervisor died."""

    def __init__(self, server: Server, link: socket.socket, handed: HandedSockets) -> None:
        super().__init__(server.reactor, link)
        self.server = server
        self.handed = handed  # the server's: what its reloads take their sockets from
        self.interest_changed()

    def readable(self) -> bool:
        return True

    def handle_read(self) -> None:
        # A reload's records are sent at once, so the rest follows the first without waiting.
        reload = _take_handed_records(self.socket, RELOAD, self.handed)
        if reload is not None:
            self.server.reload(keep_runtime=reload == KEEP_RUNTIME)
            self.handed.discard()
            return
        self.close()
        self.server.log.warning("supervisor_gone", pid=os.getpid())
        self.server.drain()


class Supervisor:
    """Binds the listeners, starts, watches and stops the worker processes."""

    def __init__(
        self,
        config: Config,
        config_path: Path,
        log: EventLog,
        count: int,
        *,
        overrides: DumpOverrides,
        splice: bool,
        keylog: str | None = None,
        pid_file: PidFile | None = None,
    ) -> None:
        self.config = config
        self.pid_file = pid_file  # written once every listener is bound; the workers never touch it
        self.pins: dict[str, int] = {}
        self.config_path = config_path
        self.log = log
        self.count = count
        self.overrides = overrides  # the dump flags: each worker's Server applies them to every load
        self.splice = splice
        self.keylog = keylog  # for every worker's TLS contexts
        self.reactor = Reactor(log)
        attach_output(self.reactor, log.output)
        self.systemd = Systemd.from_environment(self.reactor)  # before the forks: workers find no variables
        self.workers: dict[int, int] = {}  # pid -> worker index
        self.links: dict[int, socket.socket] = {}  # worker index -> the supervisor's end of its link
        # What the admin endpoints control: it holds the admin pairs.
        self.target = Workers(self.reactor, count, log, self._reload, lambda: self.stopping, lambda: self.config)
        self.admin: CommandSocket | None = None
        self.admin_http: AdminHttp | None = None
        self.stopping = False
        self.failure: str | None = None
        self.socket_files = SocketFiles()  # the UNIX listening sockets, kept for restarted workers
        self._groups: dict[str, list[socket.socket]] = {}  # listener key -> the first start's sockets
        self._served: set[str] = set()  # listener keys the workers have sockets for
        self._ever_ready = [False] * count
        self._all_ready = False  # every worker has served: systemd was told READY=1
        self._delays = [RESTART_DELAY_FIRST] * count
        self._started_at = [0.0] * count

    def run(self) -> int:
        # Handlers before the first fork: a signal from now on is passed on, never fatal.
        self.reactor.add_signal_handler(signal.SIGTERM, lambda: self._stop(signal.SIGTERM))
        self.reactor.add_signal_handler(signal.SIGINT, lambda: self._stop(signal.SIGINT))
        # SIGHUP is `reload` without --keep-runtime: the run-time server changes go for good,
        # so a worker restarted later is not told them either.
        self.reactor.add_signal_handler(signal.SIGHUP, self.target.reload)
        try:
            self._bind_admin()
            passed = self.systemd.assign(self.config.listeners)
            for listener in self.config.listeners:
                group = _group(listener, passed, self.count, self.socket_files)
                self._groups[listener_key(listener)] = group
                if listener.listen.port == 0:
                    self.pins[listener_key(listener)] = group[0].getsockname()[1]
            self._served = set(self._groups)
            if self.pid_file is not None:
                self.pid_file.write()
            for index in range(self.count):
                self._start(index)
            self._groups.clear()  # all handed over: a restart binds its own socket
            self.reactor.call_later(REAP_INTERVAL, self._reap)
            self.reactor.loop()
        finally:
            if self.pid_file is not None:
                self.pid_file.remove()  # by the supervisor alone: it is the pid written
            if self.admin is not None:
                self.admin.close()  # and its file
            if self.admin_http is not None:
                self.admin_http.close()
            self.reactor.close()
            for sock in self._supervisor_sockets():
                sock.close()
            self.socket_files.close()  # and their files go
        if self.failure is not None:
            raise StartupError(self.failure)
        return 0

    def _bind_admin(self) -> None:
        """Serve the admin endpoints for every worker, before any fork (a worker closes them)."""
        admin = self.config.admin
        if admin is not None and admin.socket is not None:
            self.admin = CommandSocket(self.reactor, admin.socket, self.target, self.log)
        if admin is not None and admin.http is not None:
            try:
                target = self.target
                self.admin_http = AdminHttp(self.reactor, self.log, admin.http, target.snapshot, target.unready)
            except StartupError as exc:
                raise StartupError(f"admin http: {exc}") from None

    def _supervisor_sockets(self) -> list[socket.socket]:
        """The sockets only the supervisor may hold: links, admin pairs, admin endpoints and their clients."""
        sockets = [*self.links.values(), *(channel.socket for channel in self.target.channels.values())]
        sockets += [sock for group in self._groups.values() for sock in group]
        if self.admin is not None:
            sockets += [self.admin.dispatcher.socket, *(client.socket for client in self.admin.clients)]
        if self.admin_http is not None:
            sockets += [self.admin_http.dispatcher.socket, *(client.socket for client in self.admin_http.clients)]
        return sockets

    def _address(self, listener: ListenerConfig) -> SocketAddress:
        port = self.pins.get(listener_key(listener))
        return listener.listen if port is None else replace(listener.listen, port=port)

    def _start(self, index: int) -> None:
        link, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        admin_pair, worker_admin_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        passed = self.systemd.assign(self.config.listeners)
        for listener in self.config.listeners:
            address = self._address(listener)
            key = listener_key(listener)
            group = self._groups.get(key)
            try:
                if group:
                    sock = group[index]
                elif key in passed:
                    sock = passed[key].dup()
                else:  # a restart joins its siblings' group; alone, it checks the address is still free
                    sock = bind_reuseport_group(address, 1, self.socket_files, join=bool(self.workers))[0]
            except ProxyError as exc:
                _send(link, REFUSE, f"{address} {exc}")
                continue
            _send(link, LISTEN, str(address), sock)
            sock.close()
        _send(link, SERVE)
        # Before the fork: what the operator changed is then waiting in the pair when the worker
        # starts, and it answers that before it accepts a client (a restart must not undo it).
        self.target.add(index, admin_pair)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:  # the worker
                link.close()
                admin_pair.close()
                self.log.output.after_fork()
                status = self._serve(index, worker_end, worker_admin_end)
                self.log.output.flush()
                os._exit(status)
        except BaseException:
            self.target.remove(index)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        worker_end.close()
        worker_admin_end.close()
        link.setblocking(False)
        self.links[index] = link
        self.workers[pid] = index
        self._started_at[index] = time.monotonic()
        self.log.info("worker_started", worker=index, pid=pid)

    def _serve(self, index: int, link: socket.socket, admin_pair: socket.socket) -> int:
        from proxy.serve.server import Server  # the worker's own reactor and threads start after the fork

        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        # Only the supervisor may hold the other ends of the links, and only their workers their sockets.
        # The admin socket is closed, not removed: its file is the supervisor's.
        self.systemd.close()
        for sock in self._supervisor_sockets():
            sock.close()
        self.socket_files.close()  # the supervisor's own: their files stay
        handed = HandedSockets()
        ready = False
        try:
            if _take_handed_records(link, SERVE, handed) is None:
                return 1
            server = Server(
                self.config,
                self.log,
                overrides=self.overrides,
                config_path=self.config_path,
                worker=(index, self.count),
                port_pins=self.pins,
                splice=self.splice,
                handed=handed,
                keylog=self.keylog,
            )
            server.bind()
            handed.discard()
            SupervisorLink(server, link, handed)
            WorkerAdminPair(server, admin_pair).answer_waiting()
            _send(link, READY)
            ready = True
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            server.serve()
        except ProxyError as exc:
            if ready:
                self.log.error("worker_failed", worker=index, error=str(exc))
            else:
                _send(link, FAILED, str(exc))  # the supervisor says it, once
            return exc.exit_status
        except BaseException as exc:  # a worker must end with an exit status, never unwind into the supervisor
            self.log.failure("worker_failed", exc, worker=index)
            return 1
        return 0

    def _report(self, index: int) -> str | None:
        """What a worker said on its link before it exited (readiness is remembered); its error."""
        link = self.links.pop(index)
        self.target.remove(index)
        error = None
        try:
            while (received := _receive(link)) is not None:
                kind, text, _sock = received
                if kind == READY:
                    self._ever_ready[index] = True
                elif kind == FAILED:
                    error = text
        except OSError:
            pass  # nothing more was said
        link.close()
        return error

    def _tell_when_all_ready(self) -> None:
        """READY=1 to systemd once every worker serves: its `ready` is the first record on its link
        (peeked, so that `_report` still finds it)."""
        for index in range(self.count):
            link = self.links.get(index)
            try:
                if link is None or not link.recv(RECORD_MAX, socket.MSG_PEEK).startswith(READY):
                    return
            except OSError:  # nothing said yet
                return
        self._all_ready = True
        self.systemd.serving(len(self.config.listeners))

    def _reap(self) -> None:
        if not self._all_ready and not self.stopping:
            self._tell_when_all_ready()
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
            error = self._report(index)
            if self.stopping:
                continue
            if not self._ever_ready[index] and code > 0:  # failed by itself, not killed
                self.failure = error or f"worker {index} exited with status {code} before serving"
                self._stop(signal.SIGTERM)
                continue
            self.log.warning("worker_exited", worker=index, pid=pid, status=code, **({"error": error} if error else {}))
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

    def _reload(self, keep_runtime: bool = False) -> list[str]:
        """Bind the new addresses for the workers, then have them reload (each logs what it found,
        and keeps the servers an operator changed if `keep_runtime`); the problems the supervisor
        found (a file that does not load, an address it cannot bind).

        A worker started later must begin with the same table, so the supervisor keeps the newest
        valid one too. An address it cannot bind reaches the workers as that error.
        """
        self.systemd.reloading()
        problems: list[str] = []
        try:
            config = load_config(self.config_path).config
        except ConfigError as exc:
            config = None  # every worker logs the errors and keeps its table; restarts keep the old one too
            problems = exc.messages
        records: list[list[tuple[bytes, str, socket.socket | None]]] = [[] for _ in range(self.count)]
        if config is not None:
            keys = {listener_key(listener) for listener in config.listeners}
            passed = self.systemd.assign(config.listeners)
            served, pins, refused = self._served & keys, dict(self.pins), False
            for listener in config.listeners:
                key = listener_key(listener)
                if key in served:
                    continue
                try:
                    group = _group(listener, passed, self.count, self.socket_files)
                except ProxyError as exc:
                    refused = True
                    problems.append(str(exc))
                    for pending in records:
                        pending.append((REFUSE, f"{listener.listen} {exc}", None))
                    continue
                served.add(key)
                if listener.listen.port == 0:
                    pins[key] = group[0].getsockname()[1]
                for pending, sock in zip(records, group, strict=True):
                    pending.append((LISTEN, str(listener.listen), sock))
            # A reload is all or nothing: the workers refuse a table with an address taken, so a
            # worker started later must begin with the table they kept, not the refused one.
            if not refused:
                self.config, self._served, self.pins = config, served, pins
            self.socket_files.close(keep={str(listener.listen) for listener in self.config.listeners})
        for index, pending in enumerate(records):
            link = self.links.get(index)
            try:
                if link is not None:
                    for kind, text, sock in pending:
                        _send(link, kind, text, sock)
                    _send(link, RELOAD, KEEP_RUNTIME if keep_runtime else "")
            except OSError as exc:  # a dead or stuck worker: the reaper or the next reload deals with it
                self.log.warning("reload_not_sent", worker=index, error=describe_os_error(exc))
            finally:
                for _kind, _text, sock in pending:
                    if sock is not None:
                        sock.close()
        # Handed on, not yet done: each worker logs how its own reload went.
        self.systemd.reloaded(len(self.config.listeners), problems[0] if problems else None)
        return problems

    def _stop(self, signum: int) -> None:
        """Pass the stop on; a second SIGINT reaches the workers as their own second one."""
        self.stopping = True
        self.systemd.stopping()
        self._signal_all(signum)
