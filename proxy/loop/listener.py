"""The listening dispatcher: bind, accept in bounded batches, back off when out of descriptors.

Each accepted client is made non-blocking and handed to the `on_accept` callback; what happens
to it then (limits, routing, the pair) is the server's business, not the listener's. A listener
is ACCEPTING, or PAUSED while descriptors are short (the clients wait in the kernel's backlog
until a backing-off timer resumes it); any other move is a StateError.

Under `run --workers` a worker binds nothing itself: the supervisor binds a SO_REUSEPORT group
per address (`bind_reuseport_group`) and hands each worker its socket, which the worker keeps in
its `HandedSockets` until its server takes it. A worker binding on its own could join another
instance's group unnoticed, since the kernel lets any socket of the same user with SO_REUSEPORT in.

A UNIX socket has no SO_REUSEPORT: the workers share one listening socket, which the supervisor
keeps in its `SocketFiles` for later workers (`bind_reuseport_group` hands out copies) until it
closes them. Binding a path takes over a socket file left by a process that died (nothing
answers on it), never a live one; the file gets the listener's mode, owner and group before
anyone can connect, set through a descriptor of the file the bind made (never by name, which a
symlink may have taken over by then; without /proc the mode comes from the bind's umask and an
owner or group is refused), and the process that created it removes it when it closes
the socket. The admin socket's file is made the same way (`listen_unix`).
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import stat
from collections.abc import Callable, Collection
from dataclasses import replace

from proxy.config.schema import DEFAULT_BACKLOG
from proxy.config.units import SocketAddress, UnixAddress, format_any_sockaddr
from proxy.errors import OUT_OF_DESCRIPTORS, StartupError, StateEnum, StateError, describe_os_error
from proxy.loop.dispatcher import Dispatcher
from proxy.loop.reactor import Reactor

ACCEPT_BATCH = 64  # accepts per readiness event, so one busy listener cannot starve the rest
BACKLOG = DEFAULT_BACKLOG  # a listener's `backlog:` is set once it listens (proxy/loop/sockopts.py)
EMFILE_BACKOFF_FIRST = 0.05
EMFILE_BACKOFF_MAX = 1.0
# A client that gave up while queued, or a transient network error: accept the next one.
_ACCEPT_SKIP = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.EHOSTUNREACH})

AcceptCallback = Callable[[socket.socket, tuple], None]


def bind_listening_socket(address: SocketAddress) -> socket.socket:
    """A non-blocking socket listening on `address`; StartupError with the reason if not."""
    return _listen(address, reuse_port=False)


def bind_reuseport_group(
    address: SocketAddress, count: int, kept: SocketFiles, *, join: bool = False
) -> list[socket.socket]:
    """`count` sockets listening on `address` with SO_REUSEPORT, each with its own accept queue.

    Unless it `join`s a group this process already has there, the first socket binds without
    SO_REUSEPORT: that bind fails if anyone listens on the address, another pairproxy with
    workers included. It gets the option only once it listens, so that the address is never
    free between that check and the group. A port 0 becomes one port for the whole group.

    On a UNIX address: `count` copies of the one socket `kept` holds listening there.
    """
    if address.is_unix:
        return kept.copies(address, count)
    first = _listen(address, reuse_port=join)
    first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    group = [first]
    bound = replace(address, port=first.getsockname()[1])
    try:
        for _ in range(count - 1):
            group.append(_listen(bound, reuse_port=True))
    except BaseException:
        for sock in group:
            sock.close()
        raise
    return group


def _listen(address: SocketAddress, *, reuse_port: bool) -> socket.socket:
    if address.is_unix:
        return _listen_unix(address)
    family = socket.AF_INET6 if address.is_ipv6 else socket.AF_INET
    try:
        infos = socket.getaddrinfo(address.host, address.port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {address}: {exc.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it: one system call per listener instead of one per client.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reason = describe_os_error(exc)
        raise StartupError(f"cannot listen on {address}: {reason}") from None
    return sock


class _UnixListeningSocket(socket.socket):
    """A UNIX socket this process bound: closing it removes its file, if that is still the same one.

    Only in the process that bound it (a forked child closes its inherited copy and leaves the
    file), and not through copies made by dup() or sent to a worker.
    """

    path = ""  # its file (copies have none)
    created: tuple[int, int, int] | None = None  # (pid, st_dev, st_ino) once it has a file

    def close(self) -> None:
        created, self.created = self.created, None
        if created is not None and created[0] == os.getpid():
            try:
                found = os.lstat(self.path)
                if (found.st_dev, found.st_ino) == created[1:]:
                    os.unlink(self.path)
            except OSError:
                pass  # gone, or not ours to remove
        super().close()


def _listen_unix(address: UnixAddress) -> socket.socket:
    try:
        return listen_unix(address.sockaddr, mode=address.mode, owner=address.owner, group=address.group)
    except SocketFileError as exc:
        raise StartupError(f"cannot listen on {address}: {exc}") from None


class SocketFiles:
    """The UNIX sockets a supervisor keeps listening for its workers, one per address text.

    Workers, restarted ones too, get copies; the file goes when the kept socket is closed here
    (by the process that bound it: a forked worker closing its inherited copies leaves the files).
    """

    def __init__(self) -> None:
        self._kept: dict[str, socket.socket] = {}

    def copies(self, address: UnixAddress, count: int) -> list[socket.socket]:
        """`count` copies of the socket kept on `address`, bound now if none is; StartupError if it cannot be."""
        kept = self._kept.get(str(address))
        if kept is None:
            kept = self._kept[str(address)] = _listen_unix(address)
        return [kept.dup() for _ in range(count)]

    def close(self, keep: Collection[str] = ()) -> None:
        """Close the sockets kept, but those on the addresses in `keep`."""
        for key in [key for key in self._kept if key not in keep]:
            self._kept.pop(key).close()


class SocketFileError(Exception):
    """Why a UNIX socket could not listen, in words that follow its address in an error line.

    `errno` tells the refusals apart: EADDRINUSE, something answers there; ENOTSOCK, a file
    that is not a socket is there; None, what the bind made was replaced.
    """

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.errno = code


_REPLACED = "the socket file was replaced as it was being made"


PROC_FDS = "/proc/self/fd"  # names the file behind each descriptor of this process


def listen_unix(
    sockaddr: str | bytes,
    *,
    mode: int | None = None,
    owner: int | None = None,
    group: int | None = None,
    proc_fds: str = PROC_FDS,
) -> socket.socket:
    """A non-blocking UNIX stream socket listening on `sockaddr` (a path, or an abstract name:
    bytes after a NUL); SocketFileError if not.

    A socket file nobody accepts on (what a process that died leaves) is replaced, a live one
    or any other file never. The file gets `mode`, `owner` and `group` before the socket
    listens, so nobody connects before it has them; closing the socket in the process that bound
    it removes the file, if that is still the same file.

    They are set through `proc_fds`, by the descriptor of the file the bind made. Without it (no
    /proc mounted) the bind itself makes the file with `mode`, under a umask set for the bind
    alone; an owner or group, which only a call by name could set then, is refused.
    """
    sock = _UnixListeningSocket(socket.AF_UNIX, socket.SOCK_STREAM)
    doing = ""  # what failed, when it is not the bind or the listen
    by_descriptor = isinstance(sockaddr, str) and os.path.isdir(proc_fds)
    by_umask = isinstance(sockaddr, str) and not by_descriptor and mode is not None
    try:
        if isinstance(sockaddr, str) and not by_descriptor and (owner is not None or group is not None):
            raise SocketFileError(
                f"cannot set the socket file's owner and group: {proc_fds} is not there (is /proc mounted?),"
                " and by its name they could go to a file swapped in after the bind"
            )
        umask = os.umask(0o777 & ~mode) if by_umask and mode is not None else None
        try:
            _bind_or_take_over(sock, sockaddr)
        finally:
            if umask is not None:
                os.umask(umask)
        if isinstance(sockaddr, str):
            made, found = _open_made_file(sockaddr)
            try:
                sock.path, sock.created = sockaddr, (os.getpid(), found.st_dev, found.st_ino)
                if by_umask and stat.S_IMODE(found.st_mode) != mode:  # a default ACL, or bits no umask gives
                    raise SocketFileError(
                        f"cannot set the socket file's mode: without {proc_fds} it is made under a umask,"
                        f" which gave it {stat.S_IMODE(found.st_mode):04o}, not {mode:04o}"
                    )
                # Through the descriptor, never by name: whoever may write in the folder could
                # have put a symlink there since the bind, and have its target made writable
                # and given away. This names the file the descriptor holds, whatever its name.
                made_file = f"{proc_fds}/{made}"
                doing = "cannot set the socket file's mode: "
                if mode is not None and by_descriptor:
                    os.chmod(made_file, mode)
                doing = "cannot set the socket file's owner and group: "
                if owner is not None or group is not None:
                    os.chown(made_file, -1 if owner is None else owner, -1 if group is None else group)
            finally:
                os.close(made)
        doing = ""
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except SocketFileError:
        sock.close()  # removes the file it made
        raise
    except OSError as exc:
        sock.close()
        raise SocketFileError(doing + describe_os_error(exc), exc.errno) from None
    return sock


def _bind_or_take_over(sock: socket.socket, sockaddr: str | bytes) -> None:
    """Bind `sock`, in the place of a socket file a dead process left if there is one."""
    try:
        sock.bind(sockaddr)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or isinstance(sockaddr, bytes) or not _left_by_the_dead(sockaddr):
            raise
        os.unlink(sockaddr)
        sock.bind(sockaddr)


def _open_made_file(path: str) -> tuple[int, os.stat_result]:
    """An O_PATH descriptor of the socket file a bind has just made at `path`, and its stat;
    SocketFileError if something else is there by now."""
    try:
        made = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise SocketFileError(_REPLACED) from None
    found = os.fstat(made)
    # A bind makes a socket file with one link, owned by the process's effective user: not a
    # symlink, nor a hard link to somebody's file, nor a socket someone else bound.
    if not (stat.S_ISSOCK(found.st_mode) and found.st_nlink == 1 and found.st_uid == os.geteuid()):
        os.close(made)
        raise SocketFileError(_REPLACED)
    return made, found


def _left_by_the_dead(path: str) -> bool:
    """True when `path` is a socket file nobody accepts on: what a process that died leaves behind.

    SocketFileError when it is no socket at all: that file is somebody's, not ours to replace.
    """
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise SocketFileError("the file exists and is not a socket", errno.ENOTSOCK)
    except FileNotFoundError:
        return False  # gone meanwhile: the bind's error stands
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False  # someone is there, busy (a full backlog), or we may not look: in use
    finally:
        probe.close()
    return False


class HandedSockets:
    """What the supervisor handed a worker, by address text: a listening socket, or why there is none."""

    def __init__(self) -> None:
        self._handed: dict[str, socket.socket | str] = {}

    def hand_over(self, address: str, sock_or_error: socket.socket | str) -> None:
        """Keep a socket (or the error binding it gave) for the next `take` of `address`."""
        stale = self._handed.pop(address, None)
        if isinstance(stale, socket.socket):
            stale.close()
        self._handed[address] = sock_or_error

    def take(self, address: SocketAddress) -> socket.socket:
        """The non-blocking socket handed over for `address`; StartupError with the reason if none was."""
        handed = self._handed.pop(str(address), None)
        if handed is None:
            raise StartupError(f"cannot listen on {address}: the supervisor bound no socket for it (send it SIGHUP)")
        if isinstance(handed, str):
            raise StartupError(handed)
        handed.setblocking(False)
        return handed

    def discard(self) -> None:
        """Close what was handed over but not taken (the worker's table no longer has that address)."""
        for handed in self._handed.values():
            if isinstance(handed, socket.socket):
                handed.close()
        self._handed.clear()


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one; returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # keep the soft limit; accepts back off when it is reached
    return soft


class Accepting(StateEnum):
    ACCEPTING = "accepting"
    PAUSED = "paused"  # out of descriptors: the clients wait in the backlog until a timer resumes it


_MOVES: dict[Accepting, frozenset[Accepting]] = {
    Accepting.ACCEPTING: frozenset({Accepting.PAUSED}),
    Accepting.PAUSED: frozenset({Accepting.ACCEPTING}),
}


class Listener(Dispatcher):
    """Accepts clients and passes each to `on_accept(sock, peer_address)`."""

    def __init__(self, reactor: Reactor, sock: socket.socket, name: str, on_accept: AcceptCallback) -> None:
        super().__init__(reactor, sock)
        self.name = name
        self.on_accept = on_accept
        self.address = format_any_sockaddr(sock.getsockname())
        # What each accepted socket is made with, as plain ints: socket.accept() would read the
        # listener's family and type through properties that build enum members, per client.
        self._family, self._proto = int(sock.family), sock.proto
        self.accepting = Accepting.ACCEPTING
        self._backoff = EMFILE_BACKOFF_FIRST
        self._resume_timer = None
        self.interest_changed()

    def _accepting_to(self, new: Accepting) -> None:
        if new not in _MOVES[self.accepting]:
            raise StateError(f"listener {self.name}: cannot go from {self.accepting.value} to {new.value}")
        self.accepting = new
        self.interest_changed()

    def readable(self) -> bool:
        return self.accepting is Accepting.ACCEPTING

    def handle_read(self) -> None:
        accept = self.socket._accept  # the descriptor alone; socket.accept() wraps it at a higher cost
        family, proto = self._family, self._proto
        for _ in range(ACCEPT_BATCH):
            try:
                fd, peer = accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in OUT_OF_DESCRIPTORS:
                    self._pause_for_descriptors(exc)
                    return
                if exc.errno in _ACCEPT_SKIP:
                    continue
                raise
            self._backoff = EMFILE_BACKOFF_FIRST
            # socket.SocketType, the C type under socket.socket: the same methods, but making
            # and closing one are not Python functions (a connection has two sockets).
            client = socket.SocketType(family, socket.SOCK_STREAM, proto, fd)
            client.setblocking(False)
            self.on_accept(client, peer)

    def _pause_for_descriptors(self, exc: OSError) -> None:
        # The client stays in the kernel's backlog; retrying at once would spin the CPU on a
        # listener that keeps reporting readable.
        self.reactor.log.warning(
            "accept_paused", listener=self.name, error=describe_os_error(exc), retry_s=self._backoff
        )
        self._accepting_to(Accepting.PAUSED)
        self._resume_timer = self.reactor.call_later(self._backoff, self._resume)
        self._backoff = min(self._backoff * 2, EMFILE_BACKOFF_MAX)

    def _resume(self) -> None:
        self._resume_timer = None
        if not self.closed:
            self._accepting_to(Accepting.ACCEPTING)

    def handle_error(self, exc: BaseException) -> None:
        # One bad accept must never close the listener that serves everybody else.
        self.reactor.log.failure("accept_failed", exc, listener=self.name)

    def close(self) -> None:
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        super().close()
