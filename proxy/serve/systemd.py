"""Running under systemd: the notify protocol, the watchdog, and sockets passed by socket activation.

Both protocols are a few lines and need no library. The manager names a datagram socket in
NOTIFY_SOCKET (a path, or `@name` in the abstract namespace) and reads `KEY=VALUE` lines from it:
READY=1 once serving, RELOADING=1 with MONOTONIC_USEC around a reload, STOPPING=1 at the drain,
WATCHDOG=1 at half of WATCHDOG_USEC. Sending never blocks and never fails the proxy: the first
error is logged once, later ones are dropped. With socket activation the manager passes
listening sockets as descriptors 3.. (LISTEN_FDS of them, named by LISTEN_FDNAMES) to the
process whose pid is LISTEN_PID; each is matched to a listener by that name, else by the address
it is bound to, and used instead of a bind.

Every variable is taken out of the environment once read, as sd_notify's `unset_environment`
does: a worker process (which `run --workers` forks after reading them) finds none, so only the
supervisor speaks to the manager. The parsing and matching are pure functions; `Systemd` is the
thin part that holds the sockets and sends.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from proxy.config.schema import ListenerConfig, listener_key
from proxy.config.units import Address, format_sockaddr, whole_number
from proxy.errors import StartupError, describe_os_error
from proxy.loop.reactor import Reactor, Timer

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: the first passed descriptor
_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


# -- pure: what the environment says ---------------------------------------------------------


def notify_address(value: str | None) -> str | None:
    """The address to send notifications to: a path, or an abstract name (`@x` becomes `\\0x`).

    None when unset or of a kind this program does not speak (such as `vsock:`).
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked of `pid`.

    ValueError names a value that is not a positive whole number.
    """
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and owner != str(pid):
        return None
    microseconds = whole_number(usec)
    if not microseconds:
        raise ValueError(f"WATCHDOG_USEC={usec}: expected a positive whole number of microseconds")
    return microseconds / 2e6


def passed_descriptors(environ: Mapping[str, str], pid: int) -> list[tuple[int, str | None]]:
    """The (descriptor, name) pairs socket activation passed to `pid`; none when LISTEN_PID is another's.

    A name is None when the manager gave none. ValueError names a malformed variable.
    """
    if environ.get("LISTEN_PID") != str(pid):
        return []
    count = environ.get("LISTEN_FDS", "")
    descriptors = whole_number(count)
    if descriptors is None:
        raise ValueError(f"LISTEN_FDS={count}: expected a whole number of descriptors")
    names: list[str | None] = [None] * descriptors
    if "LISTEN_FDNAMES" in environ:
        given = environ["LISTEN_FDNAMES"].split(":")
        if len(given) != len(names):
            raise ValueError(f"LISTEN_FDNAMES has {len(given)} names for LISTEN_FDS={count} descriptors")
        names = [name or None for name in given]
    return [(LISTEN_FDS_START + index, name) for index, name in enumerate(names)]


def same_address(address: Address, sockaddr: tuple) -> bool:
    """Whether a socket bound to `sockaddr` is bound where `address` says (an IP literal, a port).

    A host name or port 0 matches nothing: such a listener takes a passed socket by its name.
    """
    if not address.port or not address.is_literal or address.port != sockaddr[1]:
        return False
    try:
        return ipaddress.ip_address(address.host) == ipaddress.ip_address(sockaddr[0].partition("%")[0])
    except ValueError:
        return False


@dataclass(frozen=True)
class Passed:
    """One passed socket as matching sees it: its descriptor, its name, where it is bound."""

    fd: int
    name: str | None
    sockaddr: tuple


def match_passed(listeners: Sequence[ListenerConfig], passed: Sequence[Passed]) -> dict[str, int]:
    """Which passed descriptor each listener (by `listener_key`) takes: by name first, then by address.

    Each descriptor goes to one listener at most; a listener with none binds its own socket.
    """
    taken: dict[str, int] = {}
    free = list(passed)
    for by_name in (True, False):
        for listener in listeners:
            key = listener_key(listener)
            if key in taken:
                continue
            for candidate in free:
                if _belongs(candidate, listener, by_name=by_name):
                    taken[key] = candidate.fd
                    free.remove(candidate)
                    break
    return taken


def _belongs(candidate: Passed, listener: ListenerConfig, *, by_name: bool) -> bool:
    if by_name:
        return listener.name is not None and candidate.name == listener.name
    return same_address(listener.listen, candidate.sockaddr)


def status_message(**fields: str | int) -> bytes:
    """One notification: `KEY=VALUE` lines (`ready=1` becomes `READY=1`; newlines in values become spaces)."""
    return "\n".join(f"{key.upper()}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()).encode()


def _serving(listeners: int) -> str:
    return f"serving {listeners} listener{'' if listeners == 1 else 's'}"


# -- thin: the sockets ------------------------------------------------------------------------


def _take_passed(fd: int, name: str | None) -> socket.socket:
    """Descriptor `fd` as a listening TCP socket, made ours (non-blocking, closed on exec); else StartupError."""
    label = f"socket activation: descriptor {fd}" + (f" ({name})" if name else "")
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise StartupError(f"{label}: {describe_os_error(exc)}") from None
    if (
        sock.family not in (socket.AF_INET, socket.AF_INET6)
        or sock.type != socket.SOCK_STREAM
        or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    ):
        sock.detach()  # not ours to close: the error stops the start anyway
        raise StartupError(f"{label}: not a listening TCP socket (ListenStream= with an IP address and port)")
    sock.set_inheritable(False)
    sock.setblocking(False)
    # As bind_listening_socket does: accepted sockets inherit it.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Systemd:
    """This process's link to its service manager; every method does nothing outside systemd.

    The passed sockets are kept open for the life of the process and never bound again: a
    listener gets a copy (`dup`) of its socket, so a listener removed by a reload and added back,
    or a failed reload, leaves the socket the manager passed as it was.
    """

    def __init__(
        self,
        reactor: Reactor,
        notify_to: str | None,
        watchdog: float | None,
        passed: list[tuple[socket.socket, str | None]],
    ) -> None:
        self.reactor = reactor
        self.notify_to = notify_to
        self.watchdog = watchdog
        self.passed = {sock.fileno(): (sock, name) for sock, name in passed}
        self._notify_socket: socket.socket | None = None
        self._notify_failed = False
        self._watchdog_timer: Timer | None = None
        self._used: set[int] = set()
        self._served = False

    @classmethod
    def from_environment(cls, reactor: Reactor) -> Systemd:
        """Read and remove the manager's variables; StartupError for a malformed one or a bad passed socket."""
        seen = {name: os.environ.pop(name) for name in _VARIABLES if name in os.environ}
        pid = os.getpid()
        try:
            watchdog = watchdog_interval(seen, pid)
            descriptors = passed_descriptors(seen, pid)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        notify_to = notify_address(seen.get("NOTIFY_SOCKET"))
        if seen.get("NOTIFY_SOCKET") and notify_to is None:
            reactor.log.warning("notify_unsupported", socket=seen["NOTIFY_SOCKET"])
        passed = [(_take_passed(fd, name), name) for fd, name in descriptors]
        for sock, name in passed:
            reactor.log.info("socket_passed", fd=sock.fileno(), name=name, address=format_sockaddr(sock.getsockname()))
        return cls(reactor, notify_to, watchdog if notify_to else None, passed)

    # -- socket activation ---------------------------------------------------------------

    def assign(self, listeners: Sequence[ListenerConfig]) -> dict[str, socket.socket]:
        """The passed socket each listener of `listeners` is to use, by `listener_key`: use a `dup()`."""
        if not self.passed:
            return {}
        candidates = [Passed(fd, name, sock.getsockname()) for fd, (sock, name) in self.passed.items()]
        assigned = match_passed(listeners, candidates)
        self._used.update(assigned.values())
        return {key: self.passed[fd][0] for key, fd in assigned.items()}

    # -- notifications -------------------------------------------------------------------

    def serving(self, listeners: int) -> None:
        """The start is complete: READY=1, the watchdog, and a warning for each passed socket left over."""
        if self._served:
            return
        self._served = True
        for fd, (sock, name) in self.passed.items():
            if fd not in self._used:
                self.reactor.log.warning(
                    "socket_unused", fd=fd, name=name, address=format_sockaddr(sock.getsockname()), reason="no listener"
                )
        self._send(status_message(ready=1, status=_serving(listeners)))
        if self.watchdog is not None:
            self._watchdog_timer = self.reactor.call_later(self.watchdog, self._ping)

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(status_message(reloading=1, monotonic_usec=usec, status="reloading"))

    def reloaded(self, listeners: int, problem: str | None = None) -> None:
        """READY=1 after a reload; `problem` says why it failed (the old table serves on)."""
        status = _serving(listeners) + ("" if problem is None else f"; reload failed: {problem}")
        self._send(status_message(ready=1, status=status))

    def stopping(self) -> None:
        self._send(status_message(stopping=1, status="draining"))

    def _ping(self) -> None:
        # From a timer on the loop: a loop that is stuck stops pinging, and the manager notices.
        self._send(b"WATCHDOG=1")
        self._watchdog_timer = self.reactor.call_later(self.watchdog, self._ping)

    def _send(self, message: bytes) -> None:
        if self.notify_to is None:
            return
        try:
            if self._notify_socket is None:
                self._notify_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._notify_socket.setblocking(False)
            self._notify_socket.sendto(message, self.notify_to)
        except OSError as exc:
            if not self._notify_failed:
                self._notify_failed = True
                target = self.notify_to.replace("\0", "@")
                self.reactor.log.warning("notify_failed", socket=target, error=describe_os_error(exc))

    def close(self) -> None:
        """Let go of everything (a forked worker: the manager's sockets are the supervisor's)."""
        if self._watchdog_timer is not None:
            self._watchdog_timer.cancel()
        if self._notify_socket is not None:
            self._notify_socket.close()
        for sock, _name in self.passed.values():
            sock.close()
        self.passed.clear()
        self.notify_to = None
