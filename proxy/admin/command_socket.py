"""The admin socket: the commands (admin.commands) on a UNIX stream socket, served on the reactor;
and its client, `pairproxy ctl`.

One command per line; each answer is some lines and then an empty line, and a client may send
several commands on one connection. The socket is a `Listener` like any other (accepting in
batches, pausing while descriptors are short), whose clients are `CommandClient`s. An answer may
come `Later` (the supervisor's, once its workers have): a client's commands are answered in the
order sent, the next line waiting until the answer before it is in.

A client can never stall the proxy: its input line is bounded (MAX_LINE, however it arrives;
past it the client gets an error line and is closed), what is queued for it is bounded
(MAX_OUTPUT; past it, it is dropped; one answer alone is always sent, whatever its length), a
client idle for IDLE_TIMEOUT is closed, and at most MAX_CLIENTS are served at once: a new one
past them takes the place of the one idle longest, if it has been idle for SHED_AFTER, and is
otherwise told there is no room and closed. The socket is made with mode 0600,
refused when another process answers on its path, and removed at exit.
"""

from __future__ import annotations

import errno
import socket

from proxy.admin.channel import Channel
from proxy.admin.commands import MAX_LINE, Controlled, execute
from proxy.errors import StartupError, describe_os_error
from proxy.log import EventLog
from proxy.loop.listener import Listener, SocketFileError, listen_unix
from proxy.loop.reactor import Reactor, Timer

MAX_CLIENTS = 64  # clients served at once
SHED_AFTER = 1.0  # seconds a client must have been idle before a full socket closes it for a new one
MAX_OUTPUT = 1024 * 1024  # bytes of answers that may pile up for a client that does not read them
IDLE_TIMEOUT = 60.0  # seconds a client may do nothing
ANSWER_TIMEOUT = 30.0  # seconds `pairproxy ctl` waits for an answer (a reload may take a while)


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


class CommandSocket:
    """The admin socket: a Listener whose clients are CommandClients, answering for `target`."""

    def __init__(self, reactor: Reactor, path: str, target: Controlled, log: EventLog) -> None:
        """Binds at once: a StartupError says why it could not."""
        self.reactor = reactor
        self.target = target
        self.log = log
        self.clients: dict[CommandClient, None] = {}  # in the order accepted: the oldest first
        self.dispatcher = Listener(reactor, bind_admin_socket(path), "admin_socket", self.accept)

    def accept(self, sock: socket.socket, _peer: object) -> None:
        if len(self.clients) >= MAX_CLIENTS and not self._make_room():
            _refuse(sock, f"error: more than {MAX_CLIENTS} admin clients\n\n")
            return
        self.clients[CommandClient(self, sock)] = None

    def _make_room(self) -> bool:
        """Close the client idle longest (the oldest of those idle since their accept), if one has
        been idle for SHED_AFTER; whether it did."""
        idle = [client for client in self.clients if client.sheddable]
        if not idle:
            return False
        self.log.warning("admin_client_dropped", reason=f"idle while {MAX_CLIENTS} clients were connected")
        min(idle, key=lambda client: client.last_active).close()
        return True

    def close(self) -> None:
        for client in list(self.clients):
            client.close()
        self.dispatcher.close()  # and its file, if still the one this process made


class CommandClient(Channel):
    """One admin connection: reads command lines, queues their answers, bounded in both ways."""

    def __init__(self, server: CommandSocket, sock: socket.socket) -> None:
        super().__init__(server.reactor, sock, server.log, "admin_failed")
        self.server = server
        self.ending = False  # no more commands: close once what is queued is sent
        self.awaiting = False  # a command's answer is on its way: the lines after it wait
        self.last_active = self.reactor.now
        self._idle: Timer | None = self.reactor.call_later(IDLE_TIMEOUT, self._check_idle)
        self.interest_changed()

    def readable(self) -> bool:
        return not self.ending and not self.awaiting

    @property
    def sheddable(self) -> bool:
        """Whether a full socket may close it for a new client: idle for SHED_AFTER, owed nothing."""
        idle = not self.awaiting and not self.outgoing
        return idle and self.reactor.now - self.last_active > SHED_AFTER

    def received(self) -> None:
        self.last_active = self.reactor.now
        self._commands()

    def ended(self) -> None:
        self.last_active = self.reactor.now
        self._end(bytes(self.incoming))

    def _check_idle(self) -> None:
        self._idle = None
        if self.closed:
            return
        remaining = IDLE_TIMEOUT - (self.reactor.now - self.last_active)
        if remaining > 0:
            self._idle = self.reactor.call_later(remaining, self._check_idle)
        else:
            self.close()

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
        answer = execute(self.server.target, text, self.log)
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
            self.log.warning("admin_client_dropped", reason=f"more than {MAX_OUTPUT} bytes of answers unread")
            self.close()
            return
        self.outgoing += data
        self.send_now()
        self.interest_changed()

    def handle_write(self) -> None:
        super().handle_write()
        self.last_active = self.reactor.now

    def drained(self) -> None:
        self._close_when_done()

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
