"""What one load of a configuration builds before anything changes: the pools (with how their
connects are prepared), the TLS contexts toward upstreams, the listening sockets not open yet
(with their backlog and keepalive set) and each listener's `Table`.

Building starts nothing and changes nothing that serves: every problem becomes one line in
`problems`, and the server then either puts the whole build in force or discards it (closing
the sockets it opened), so a start or a reload is all or nothing.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from proxy.config.schema import Config, listener_key
from proxy.config.units import SocketAddress, format_any_sockaddr
from proxy.errors import ProxyError, StartupError, describe_os_error, describe_ssl_error
from proxy.loop.sockopts import Dialing, configure_listening
from proxy.policy.upstreams import Pool
from proxy.serve.contexts import client_context
from proxy.serve.frontend import DumpOutputs, Frontend, Table


def _tls_failure(exc: ssl.SSLError | OSError) -> str:
    """Why a TLS context could not be built, in one line (the files were fine when checked)."""
    if isinstance(exc, ssl.SSLError):
        return describe_ssl_error(exc)
    reason = describe_os_error(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


@dataclass
class Build:
    """What one (re)load builds before anything changes: pools, TLS contexts, new sockets, tables."""

    config: Config
    pools: dict[str, Pool]
    upstream_tls: dict[str, tuple[ssl.SSLContext, str | None]]
    new_sockets: dict[str, socket.socket]
    tables: dict[str, Table]
    problems: list[str]

    def discard(self) -> None:
        for sock in self.new_sockets.values():
            sock.close()
        self.new_sockets.clear()

    @classmethod
    def of(
        cls,
        config: Config,
        running: Mapping[str, Frontend],
        passed: Mapping[str, socket.socket],
        *,
        bind: Callable[[SocketAddress], socket.socket],
        splice: bool,
        dump_outputs: DumpOutputs,
        keylog: str | None,
    ) -> Build:
        """Everything `config` needs, with nothing running yet; `problems` says what failed.

        A listener in `running` (by `listener_key`) keeps its socket; one in `passed` (socket
        activation) gets a copy of the socket it was passed, never one bound here; the others get
        theirs from `bind`. Every TLS context writes its secrets to `keylog`, if there is one.
        """
        built = cls(config, {}, {}, {}, {}, [])
        for name, upstream in config.upstreams.items():
            built.pools[name] = Pool(upstream, prepare=Dialing.of(upstream))
            tls = upstream.tls
            if tls is None:
                continue
            try:
                context = client_context(tls.ca, tls.verify, tls.client_cert, keylog=keylog)
                built.upstream_tls[name] = (context, tls.server_name)
            except (ssl.SSLError, OSError) as exc:
                built.problems.append(f"upstream {name}: cannot set up TLS: {_tls_failure(exc)}")
        for listener in config.listeners:
            key = listener_key(listener)
            frontend = running.get(key)
            try:
                if frontend is not None:
                    sock = frontend.dispatcher.socket
                elif key in passed:
                    sock = built.new_sockets[key] = passed[key].dup()
                else:
                    sock = built.new_sockets[key] = bind(listener.listen)
            except ProxyError as exc:
                built.problems.append(str(exc))
                continue
            name = listener.name or format_any_sockaddr(sock.getsockname())
            if frontend is None:  # a running one's options change when the build is put in force
                try:
                    configure_listening(sock, listener, None)
                except OSError as exc:
                    built.problems.append(f"listener {name}: cannot set its socket options: {describe_os_error(exc)}")
                    continue
            try:
                built.tables[key] = Table.build(
                    listener,
                    name,
                    built.pools,
                    built.upstream_tls,
                    splice=splice,
                    dump_outputs=dump_outputs,
                    keylog=keylog,
                )
            except StartupError as exc:
                built.problems.append(str(exc))
            except (ssl.SSLError, OSError) as exc:
                built.problems.append(f"listener {name}: cannot set up TLS: {_tls_failure(exc)}")
        return built
