"""The admin socket: HAProxy-style commands on a UNIX stream socket, served on the reactor.

One command per line; each answer is some lines and then an empty line, and a client may send
several commands on one connection. The commands read a snapshot (`Server.snapshot()`, plain
data) or call a few small methods of what they control (`Controlled`), so that under
`run --workers` the supervisor answers them for all its workers (worker_admin.Workers).
`COMMANDS` maps the words of each command to its handler: adding a command is adding an entry.
`parse_command` reads a line's words into a command and its arguments, each typed as its
usage names it (`ARGUMENT_TYPES`), or a CommandError whose one line is the answer.

The Server answers at once; the supervisor answers once its workers have (or their deadline
has passed), without blocking its loop. So what a method of `Controlled` returns may be a
`Later`, and so may a handler's answer: `execute` gives a `Later` answer in every case. A client's
commands are answered in the order sent: the next line waits until the answer before it is in.

A client can never stall the proxy: its input line is bounded (MAX_LINE, however it arrives;
past it the client gets an error line and is closed), what is queued for it is bounded
(MAX_OUTPUT; past it, it is dropped; one answer alone is always sent, whatever its length), a
client idle for IDLE_TIMEOUT is closed, and at most MAX_CLIENTS are served at once: a new one
past them takes the place of the one idle longest, if it has been idle for SHED_AFTER, and is
otherwise told there is no room and closed. The socket is made with mode 0600,
refused when another process answers on its path, and removed at exit.
"""

from __future__ import annotations

import difflib
import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from proxy.config.units import whole_number
from proxy.errors import StartupError, describe_os_error
from proxy.log import EventLog, logfmt_value
from proxy.loop.dispatcher import Dispatcher
from proxy.loop.listener import SocketFileError, listen_unix
from proxy.loop.reactor import Reactor, Timer

MAX_LINE = 4096  # bytes of one command line
MAX_CLIENTS = 64  # clients served at once
SHED_AFTER = 1.0  # seconds a client must have been idle before a full socket closes it for a new one
MAX_OUTPUT = 1024 * 1024  # bytes of answers that may pile up for a client that does not read them
IDLE_TIMEOUT = 60.0  # seconds a client may do nothing
READ_SIZE = 8192
ACCEPT_BATCH = 16
ACCEPT_PAUSE = 1.0  # seconds the socket stops accepting when the process is out of descriptors
ANSWER_TIMEOUT = 30.0  # seconds `pairproxy ctl` waits for an answer (a reload may take a while)


T = TypeVar("T")
U = TypeVar("U")


class CommandError(Exception):
    """A refusal: what was asked cannot be done, and its message (for people) says why; the
    answer's one line after `error: `, or a 503's body. Only the boundaries make one: a parse
    of the operator's words, a ValueError a Controlled method raises at once (`_refused_at_once`), a
    worker's error message. Any other exception behind an answer is a bug."""


class Later(Generic[T]):
    """A value that may not be there yet: `then(step)` runs `step` on it once it is settled (at
    once if it already is) and is the Later of what `step` returns. A Later may end instead in a
    refusal (a CommandError) or a failure (any other exception: a bug), and so does one whose
    step raises; both pass the steps of `then` by, up to the `otherwise` that makes an answer of
    each (an admin endpoint's edge, which logs a failure). The last step of a chain, the one that
    sends the answer, must not raise: nobody reads what its Later ends in."""

    def __init__(self) -> None:
        self.settled = False
        self._value: Any = None
        self._error: Exception | None = None
        self._steps: list[Callable[[], None]] = []

    @staticmethod
    def of(value: T | Later[T]) -> Later[T]:
        """`value` as a Later: itself if it is one, else settled with it."""
        if isinstance(value, Later):
            return value
        later: Later[T] = Later()
        later.settle(value)
        return later

    @staticmethod
    def calling(action: Callable[[], T | Later[T]]) -> Later[T]:
        """The Later of what `action` returns, or ended in what it raises."""
        try:
            return Later.of(action())
        except Exception as exc:  # a refusal or a bug, for the edge's `otherwise` to tell apart
            later: Later[T] = Later()
            later._end(None, exc)
            return later

    def settle(self, value: T) -> None:
        self._end(value, None)

    def refuse(self, refusal: CommandError) -> None:
        self._end(None, refusal)

    def _end(self, value: Any, error: Exception | None) -> None:
        self.settled, self._value, self._error = True, value, error
        steps, self._steps = self._steps, []
        for step in steps:
            step()

    def then(self, step: Callable[[T], U]) -> Later[U]:
        return self._follow(lambda: step(self._value), pass_error=True)

    def otherwise(self, refused: Callable[[CommandError], T], failed: Callable[[Exception], T]) -> Later[T]:
        """The same value, or what `refused` makes of a refusal, or `failed` of a failure."""

        def run() -> T:
            if self._error is None:
                return self._value
            if isinstance(self._error, CommandError):
                return refused(self._error)
            return failed(self._error)

        return self._follow(run, pass_error=False)

    def _follow(self, run: Callable[[], Any], *, pass_error: bool) -> Later[Any]:
        following: Later[Any] = Later()

        def step() -> None:
            if pass_error and self._error is not None:
                following._end(None, self._error)
                return
            try:
                value = run()
            except Exception as exc:  # a refusal or a bug: ends this link only, never the settler's
                following._end(None, exc)
                return
            following.settle(value)

        if self.settled:
            step()
        else:
            self._steps.append(step)
        return following


class Controlled(Protocol):
    """What the commands act on: the Server (answers at once), or the supervisor's Workers
    (answers Later). A refusal is a ValueError raised at once (by the methods a command's
    handler passes through `_refused_at_once`) or a CommandError refusing the Later."""

    def snapshot(self) -> dict | Later[dict]: ...

    def kill_conn(self, conn: int) -> bool | Later[bool]: ...

    def set_server_maintenance(self, upstream: str, address: str, on: bool) -> bool | str | Later[bool | str]: ...

    def reload(self) -> list[str]: ...

    def set_dump(self, on: bool, filters: list[str]) -> str | Later[str]: ...

    def add_fault(self, target: str, spec: str) -> str | Later[str]: ...

    def remove_fault(self, target: str, kind: str) -> str | Later[str]: ...

    def list_faults(self) -> list[str] | Later[list[str]]: ...


Answer = str | Later[str]


# -- the commands --------------------------------------------------------------------------


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}"
    return logfmt_value("-" if value is None else value)


def _logfmt(row: dict, keys: tuple[str, ...]) -> str:
    return " ".join(f"{key}={_value(row[key])}" for key in keys)


def show_info(target: Controlled, _args: list[str]) -> Answer:
    return Later.of(target.snapshot()).then(
        lambda snapshot: "\n".join(f"{key}: {_value(value)}" for key, value in snapshot["info"].items())
    )


CONN_KEYS = ("conn", "listener", "route", "client", "server", "state", "age", "idle", "bytes_up", "bytes_down")
SERVER_KEYS = ("upstream", "server", "state", "active", "total", "failures", "last_change")


def _rows(rows: list[dict]) -> str:
    # Under `run --workers` each row also names the worker that has the connection.
    return "\n".join(_logfmt(row, CONN_KEYS + (("worker",) if "worker" in row else ())) for row in rows)


def show_conns(target: Controlled, _args: list[str]) -> Answer:
    return Later.of(target.snapshot()).then(lambda snapshot: _rows(snapshot["conns"]))


def show_servers(target: Controlled, _args: list[str]) -> Answer:
    return Later.of(target.snapshot()).then(
        lambda snapshot: "\n".join(_logfmt(row, SERVER_KEYS) for row in snapshot["servers"])
    )


def _ok_if(done: bool, otherwise: str) -> str:
    if not done:
        raise CommandError(otherwise)
    return "ok"


def kill_conn(target: Controlled, args: list[Any]) -> Answer:
    killed = Later.of(target.kill_conn(args[0]))
    return killed.then(lambda found: _ok_if(found, f"no open connection {args[0]}"))


def _maintenance(on: bool) -> Callable[[Controlled, list[str]], Answer]:
    def handler(target: Controlled, args: list[str]) -> Answer:
        upstream, address = args
        known = Later.of(target.set_server_maintenance(upstream, address, on))
        missing = f"no server {address} in upstream {upstream}"
        # True or False, or what to say instead of ok (the supervisor's "queued for ...").
        return known.then(lambda found: found if isinstance(found, str) else _ok_if(found, missing))

    return handler


def _dump(on: bool) -> Callable[[Controlled, list[str]], Answer]:
    def handler(target: Controlled, args: list[str]) -> Answer:
        return _refused_at_once(lambda: target.set_dump(on, args))

    return handler


def _refused_at_once(action: Callable[[], Answer]) -> Answer:
    """What `action` answers; a ValueError it raises at once (a bad filter or spec, told in words
    for people) as the command's refusal."""
    try:
        return action()
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def fault_add(target: Controlled, args: list[str]) -> Answer:
    return _refused_at_once(lambda: target.add_fault(args[0], args[1]))


def fault_remove(target: Controlled, args: list[str]) -> Answer:
    return _refused_at_once(lambda: target.remove_fault(args[0], args[1]))


def fault_list(target: Controlled, _args: list[str]) -> Answer:
    return Later.of(target.list_faults()).then(lambda faults: "\n".join(faults) or "no faults")


def dump_answer(on: bool, changed: int, rules: int) -> str:
    """The answer to `dump on|off`: how many open connections it changed, how many rules are on."""
    state = "dumped" if on else "no longer dumped"
    return f"{changed} open connection{'' if changed == 1 else 's'} {state}; {rules} run-time rules"


def reload(target: Controlled, _args: list[str]) -> str:
    problems = target.reload()
    if problems:
        raise CommandError("; ".join(problems))
    return "ok"


def show_help(_target: Controlled, _args: list[str]) -> str:
    width = max(len(command.usage) for command in COMMANDS.values())
    return "\n".join(f"{command.usage:<{width}}  {command.summary}" for command in COMMANDS.values())


def _connection_id(text: str) -> int:
    conn = whole_number(text)
    if conn is None or conn < 1:
        raise CommandError(f"{text!r} is not a connection id (a whole number of at least 1)")
    return conn


# How an argument the usages name is read (CommandError if it cannot be); any other stays text.
ARGUMENT_TYPES: dict[str, Callable[[str], Any]] = {"ID": _connection_id}


@dataclass(frozen=True)
class Command:
    usage: str  # the words, then the arguments in capitals; a last one ending in "..." takes the rest
    summary: str
    handler: Callable[[Controlled, list[Any]], Answer]

    @property
    def words(self) -> str:
        return " ".join(word for word in self.usage.split() if not word.isupper())

    @property
    def arguments(self) -> list[str]:
        return [word for word in self.usage.split() if word.isupper()]

    def takes(self, args: list[str]) -> bool:
        """Whether `args` are as many as the usage names."""
        named = self.arguments
        if named and named[-1].endswith("..."):
            return len(args) >= len(named)
        return len(args) == len(named)

    def read(self, args: list[str]) -> list[Any]:
        """`args` as the handler takes them, each read by its type; CommandError if one is not one."""
        if not self.takes(args):
            raise CommandError(f"usage: {self.usage}")
        named = self.arguments
        named += named[-1:] * (len(args) - len(named))  # the arguments a last NAME... takes
        try:
            return [ARGUMENT_TYPES.get(name, str)(arg) for name, arg in zip(named, args, strict=True)]
        except CommandError as exc:
            raise CommandError(f"{self.words}: {exc}") from None


# The words of each command (as one string) -> the command.
COMMANDS: dict[str, Command] = {
    command.words: command
    for command in (
        Command("help", "this list", show_help),
        Command("show info", "the process: version, pid, uptime, connections, reloads, dropped log lines", show_info),
        Command("show conns", "one line per open connection", show_conns),
        Command("show servers", "one line per server: state up, down or maint, counters", show_servers),
        Command("kill conn ID", "end connection ID (result=shutdown)", kill_conn),
        Command("disable server UPSTREAM ADDRESS", "no new connections to it, open ones finish", _maintenance(True)),
        Command("enable server UPSTREAM ADDRESS", "back in service", _maintenance(False)),
        Command("reload", "re-read the configuration file, like SIGHUP", reload),
        Command("dump on FILTER...", "hex dump (and capture, where configured) what the filters select", _dump(True)),
        Command("dump off FILTER...", "stop that, for new and open connections", _dump(False)),
        Command("fault add TARGET SPEC", "add a toxic (TYPE:KEY=VALUE,...) to a listener or route", fault_add),
        Command("fault remove TARGET TYPE", "remove a listener's or route's toxics of that type", fault_remove),
        Command("fault list", "the toxics in force, one per line", fault_list),
    )
}


def parse_command(words: list[str]) -> tuple[Command, list[Any]]:
    """The command `words` name, and its arguments as its handler takes them.

    Pure; whatever the words, CommandError (with the answer's one line) is all it raises.
    """
    for size in (2, 1):
        command = COMMANDS.get(" ".join(words[:size]))
        if command is not None:
            return command, command.read(words[size:])
    given = " ".join(words[:2])
    close = difflib.get_close_matches(given, COMMANDS, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else "; try 'help'"
    raise CommandError(f"unknown command {given!r}{hint}")


def execute(target: Controlled, line: str, log: EventLog) -> Later[str]:
    """The answer to one command line, without the final empty line; errors start with `error: `.
    A bug behind it is logged (`admin_failed`) and answered `error: internal error`."""

    def failed(exc: Exception) -> str:
        log.failure("admin_failed", exc, command=line)
        return "error: internal error"

    return Later.calling(lambda: _answer(target, line)).otherwise(lambda refusal: f"error: {refusal}", failed)


def _answer(target: Controlled, line: str) -> Answer:
    words = line.split()
    if not words:
        return ""
    command, args = parse_command(words)
    return command.handler(target, args)


# -- the socket ----------------------------------------------------------------------------


# Its own words for the two refusals, which users of the admin socket know.
_ADMIN_REFUSALS = {
    errno.EADDRINUSE: "another process is serving on it",
    errno.ENOTSOCK: "the path exists and is not a socket",
}


def bind_admin_socket(path: str) -> socket.socket:
    """A listening UNIX socket at `path`, mode 0600; StartupError if it cannot be made there.

    A socket file that nobody answers on is what an earlier process left (killed before it
    could remove it): replaced. One that answers belongs to a running process: refused. The
    file is made as a listener's is (`listen_unix`), and removed when the socket is closed.
    """
    try:
        return listen_unix(path, mode=0o600)
    except SocketFileError as exc:
        raise StartupError(f"admin socket {path}: {_ADMIN_REFUSALS.get(exc.errno, str(exc))}") from None


class AdminSocket(Dispatcher):
    """The listening admin socket; each client it accepts is an AdminClient."""

    def __init__(self, reactor: Reactor, path: str, target: Controlled, log: EventLog) -> None:
        super().__init__(reactor, bind_admin_socket(path))
        self.target = target
        self.log = log
        self.clients: dict[AdminClient, None] = {}  # in the order accepted: the oldest first
        self._paused: Timer | None = None
        self.interest_changed()

    def readable(self) -> bool:
        return self._paused is None

    def handle_read(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _peer = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: the client waits in the backlog, not spinning the loop
                self.log.warning("admin_accept_paused", error=describe_os_error(exc), retry_s=ACCEPT_PAUSE)
                self._paused = self.reactor.call_later(ACCEPT_PAUSE, self._resume)
                self.interest_changed()
                return
            sock.setblocking(False)
            if len(self.clients) >= MAX_CLIENTS and not self._make_room():
                _refuse(sock, f"error: more than {MAX_CLIENTS} admin clients\n\n")
                continue
            self.clients[AdminClient(self, sock)] = None

    def _make_room(self) -> bool:
        """Close the client idle longest (the oldest of those idle since their accept), if one has
        been idle for SHED_AFTER; whether it did."""
        idle = [client for client in self.clients if client.sheddable]
        if not idle:
            return False
        self.log.warning("admin_client_dropped", reason=f"idle while {MAX_CLIENTS} clients were connected")
        min(idle, key=lambda client: client.last_active).close()
        return True

    def _resume(self) -> None:
        self._paused = None
        self.interest_changed()

    def handle_error(self, exc: BaseException) -> None:
        self.log.failure("admin_failed", exc)  # the socket stays open for the next client

    def close(self) -> None:
        if self.closed:
            return
        if self._paused is not None:
            self._paused.cancel()
        for client in list(self.clients):
            client.close()
        super().close()  # and its file, if still the one this process made


class AdminClient(Dispatcher):
    """One admin connection: reads command lines, queues their answers, bounded in both ways."""

    def __init__(self, server: AdminSocket, sock: socket.socket) -> None:
        super().__init__(server.reactor, sock)
        self.server = server
        self.incoming = bytearray()
        self.outgoing = bytearray()
        self.ending = False  # no more commands: close once what is queued is sent
        self.awaiting = False  # a command's answer is on its way: the lines after it wait
        self.last_active = self.reactor.now
        self._idle: Timer | None = self.reactor.call_later(IDLE_TIMEOUT, self._check_idle)
        self.interest_changed()

    def readable(self) -> bool:
        return not self.ending and not self.awaiting

    def writable(self) -> bool:
        return bool(self.outgoing)

    @property
    def sheddable(self) -> bool:
        """Whether a full socket may close it for a new client: idle for SHED_AFTER, owed nothing."""
        idle = not self.awaiting and not self.outgoing
        return idle and self.reactor.now - self.last_active > SHED_AFTER

    def handle_read(self) -> None:
        try:
            data = self.socket.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        self.last_active = self.reactor.now
        if not data:
            self._end(bytes(self.incoming))
            return
        self.incoming += data
        self._commands()

    def _commands(self) -> None:
        """Answer the whole lines received, in order, until one's answer is to come later."""
        while not self.ending and not self.awaiting and not self.closed:
            end = self.incoming.find(b"\n")
            if end > MAX_LINE or (end < 0 and len(self.incoming) > MAX_LINE):
                self._too_long()  # however the line came: whole in one read, or in pieces
                return
            if end < 0:
                break
            line = bytes(self.incoming[:end])
            del self.incoming[: end + 1]
            self._command(line)

    def _too_long(self) -> None:
        self.incoming.clear()
        self._answer(f"error: line longer than {MAX_LINE} bytes")
        self._end(b"")

    def _end(self, last: bytes) -> None:
        """The client has said all it will: answer a last line without its newline, then close
        once every answer is sent."""
        self.ending = True
        self.interest_changed()
        if last.strip():
            self._command(last)
        self._close_when_done()

    def _close_when_done(self) -> None:
        if self.ending and not self.awaiting and not self.outgoing:
            self.close()

    def _command(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").strip()
        if not text:
            return
        answer = execute(self.server.target, text, self.server.log)
        if answer.settled:
            answer.then(self._answer)
        else:
            self.awaiting = True
            self.interest_changed()
            answer.then(self._answered_later)

    def _answered_later(self, answer: str) -> None:
        self.awaiting = False
        self._answer(answer)
        if not self.closed:
            self.interest_changed()
            self._commands()
            self._close_when_done()

    def _answer(self, answer: str) -> None:
        if self.closed:  # the command ended this client (it was its own connection's handler)
            return
        data = (answer + "\n\n" if answer else "\n").encode("utf-8", "backslashreplace")
        # One answer is always taken, however long (`show conns` of many connections): what is
        # bounded is answers piling up behind earlier ones the client has not read.
        if self.outgoing and len(self.outgoing) + len(data) > MAX_OUTPUT:
            self.server.log.warning("admin_client_dropped", reason=f"more than {MAX_OUTPUT} bytes of answers unread")
            self.close()
            return
        self.outgoing += data
        self.handle_write()
        self.interest_changed()

    def handle_write(self) -> None:
        try:
            sent = self.socket.send(self.outgoing)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        del self.outgoing[:sent]
        self.last_active = self.reactor.now
        if not self.outgoing:
            self.interest_changed()
            self._close_when_done()

    def _check_idle(self) -> None:
        self._idle = None
        if self.closed:
            return
        remaining = IDLE_TIMEOUT - (self.reactor.now - self.last_active)
        if remaining > 0:
            self._idle = self.reactor.call_later(remaining, self._check_idle)
        else:
            self.close()

    def handle_error(self, exc: BaseException) -> None:
        self.server.log.failure("admin_failed", exc)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.server.clients.pop(self, None)
        super().close()


def _refuse(sock: socket.socket, answer: str) -> None:
    """Tell a client accepted past the bound why, if its socket takes the line at once, and close it."""
    try:
        sock.send(answer.encode())
    except OSError:
        pass  # gone already, or not reading: closed all the same
    sock.close()


# -- the client side (`pairproxy ctl`) -------------------------------------------------------


def command_text(words: list[str]) -> str:
    """The one command line `pairproxy ctl WORDS` sends; ValueError for words that cannot be one.

    The socket would not answer a blank line, would take a line break for the start of another
    command (done, its answer never read), and cuts off a line past MAX_LINE.
    """
    text = " ".join(words)
    if not text.strip():
        raise ValueError("no command given ('pairproxy ctl help' lists them)")
    if "\n" in text:
        raise ValueError("a command is one line: the words hold a line break")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # bytes in argv that are not UTF-8 (Python holds them as surrogates)
        raise ValueError("the command is not UTF-8 text") from None
    if size > MAX_LINE:
        raise ValueError(f"the command is longer than {MAX_LINE} bytes")
    return text


def ask(path: str, command: str, timeout: float = ANSWER_TIMEOUT) -> str:
    """Send one command to the admin socket at `path`; its answer without the final empty line.

    StartupError (exit status 1) when the socket is missing, refuses, or does not answer in time.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(command.encode("utf-8") + b"\n")
        answer = bytearray()
        while not (answer.endswith(b"\n\n") or answer == b"\n"):
            data = sock.recv(65536)
            if not data:
                raise StartupError(f"admin socket {path}: closed before the end of the answer")
            answer += data
    except TimeoutError:
        raise StartupError(f"admin socket {path}: no answer in {timeout:g}s") from None
    except OSError as exc:
        raise StartupError(f"admin socket {path}: {describe_os_error(exc)}") from None
    finally:
        sock.close()
    return answer.decode("utf-8", "replace")[:-1].removesuffix("\n")
