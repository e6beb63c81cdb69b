"""The socket options a listener or an upstream asks for, made setsockopt calls once per load.

A connection that asks for none pays nothing: a listener's options are set on the listening
socket, whose clients inherit them (Linux copies SO_KEEPALIVE, the TCP_KEEP* times and
TCP_USER_TIMEOUT into each accepted socket, as it does TCP_NODELAY), and a connect prepares its
socket only when its upstream has a `Dialing` (`Dialing.of` is None otherwise).

Toward a server, its source (its own: a listed server's, which the addresses its name gives
inherit; else its upstream's) is bound before the connect with IP_BIND_ADDRESS_NO_PORT, so the port
is chosen at the connect, per destination: many connections from one source address do not use
up its ports as bind() alone would. A port range is IP_LOCAL_PORT_RANGE (Linux 6.3), which the
kernel narrows to net.ipv4.ip_local_port_range.
"""

from __future__ import annotations

import socket
import struct
from typing import Protocol

from proxy.config.schema import (
    DEFAULT_BACKLOG,
    KeepaliveConfig,
    ListenerConfig,
    ServerConfig,
    SourceConfig,
    UpstreamConfig,
)
from proxy.errors import describe_os_error

Option = tuple[int, int, int]  # level, name, value
IP_LOCAL_PORT_RANGE = getattr(socket, "IP_LOCAL_PORT_RANGE", 51)  # linux/in.h; Python 3.11 lacks the name
KEEPALIVE_FILES = {  # where the kernel's times come from when a listener goes back to them
    socket.TCP_KEEPIDLE: "/proc/sys/net/ipv4/tcp_keepalive_time",
    socket.TCP_KEEPINTVL: "/proc/sys/net/ipv4/tcp_keepalive_intvl",
    socket.TCP_KEEPCNT: "/proc/sys/net/ipv4/tcp_keepalive_probes",
}


def tcp_options(keepalive: KeepaliveConfig | None, user_timeout: float | None) -> tuple[Option, ...]:
    """The setsockopt calls that make `keepalive` and `user_timeout`; a time not given is left alone."""
    options: list[Option] = []
    if keepalive is not None:
        options.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
        times = {socket.TCP_KEEPIDLE: keepalive.idle, socket.TCP_KEEPINTVL: keepalive.interval}
        times[socket.TCP_KEEPCNT] = keepalive.count
        options += [(socket.IPPROTO_TCP, name, value) for name, value in times.items() if value is not None]
    if user_timeout is not None:
        options.append((socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, round(user_timeout * 1000)))
    return tuple(options)


def configure_listening(sock: socket.socket, listener: ListenerConfig, before: ListenerConfig | None) -> None:
    """Set what `listener` asks for on its listening socket, which `before` (the last load's, None
    for a socket just bound) had set; OSError if the kernel refuses.

    Nothing is called when nothing changed. What a reload takes away goes back to the kernel's
    defaults: keepalive off, TCP_USER_TIMEOUT 0, the keepalive times of net.ipv4.
    """
    asked = (listener.keepalive, listener.user_timeout)
    had = (None, None) if before is None else (before.keepalive, before.user_timeout)
    if asked != had:
        options = tcp_options(*asked)
        if had != (None, None):
            options = (*_kernel_defaults(), *options)
        for level, name, value in options:
            sock.setsockopt(level, name, value)
    backlog = listener.backlog or DEFAULT_BACKLOG
    if backlog != ((before.backlog if before is not None else None) or DEFAULT_BACKLOG):
        sock.listen(backlog)  # a second listen() changes the backlog of a listening socket


def _kernel_defaults() -> tuple[Option, ...]:
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0), (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 0)]
    for name, path in KEEPALIVE_FILES.items():
        try:
            with open(path, encoding="ascii") as file:
                options.append((socket.IPPROTO_TCP, name, int(file.read())))
        except (OSError, ValueError):
            pass  # no sysctl to read: the time stays what it was, unused while keepalive is off
    return tuple(options)


class Server(Protocol):
    """A server as the connector walks it: its config says its own source, if it has one."""

    @property
    def config(self) -> ServerConfig: ...


class Dialing:
    """How a socket toward the servers of one upstream is made ready before its connect: its
    options, then the bind to its server's source. A Connector calls it with each new socket."""

    def __init__(self, upstream: UpstreamConfig) -> None:
        self.options = tcp_options(upstream.keepalive, upstream.user_timeout)
        self.source = upstream.source

    @classmethod
    def of(cls, upstream: UpstreamConfig) -> Dialing | None:
        """None when the upstream asks for nothing: its connects are not prepared at all."""
        wanted = upstream.keepalive or upstream.user_timeout or upstream.source
        return cls(upstream) if wanted or any(server.source for server in upstream.servers) else None

    def __call__(self, sock: socket.socket, server: Server) -> str | None:
        """Prepare `sock` to connect to `server`; None, or why it cannot be (a failed connect)."""
        # On the server, not looked up by its address: a server DNS gave, or an operator added,
        # is in no list of the file.
        source = server.config.source or self.source
        try:
            for level, name, value in self.options:
                sock.setsockopt(level, name, value)
        except OSError as exc:
            return f"cannot set the socket's options: {describe_os_error(exc)}"
        if source is None:
            return None
        try:
            _bind(sock, source)
        except OSError as exc:
            return f"cannot bind to source {_source_text(source)}: {describe_os_error(exc)}"
        return None


def _bind(sock: socket.socket, source: SourceConfig) -> None:
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
    if source.ports is not None:
        first, last = source.ports
        # A u32 (the last port in the high half): past an int's range, so packed, not passed as one.
        sock.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, struct.pack("=I", last << 16 | first))
    sock.bind((source.host, 0))


def _source_text(source: SourceConfig) -> str:
    host = f"[{source.host}]" if ":" in source.host and source.ports else source.host
    return host if source.ports is None else f"{host}:{source.ports[0]}-{source.ports[1]}"
