"""Active health checks on a real reactor: what marks a server down, and what must not."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import textwrap
import threading

from proxy.config.schema import HealthCheckConfig, ServerConfig, UpstreamConfig
from proxy.config.units import Address
from proxy.log import EventLog
from proxy.loop.reactor import Reactor
from proxy.loop.resolver import Resolver
from proxy.policy.upstreams import Pool
from proxy.serve.health import HealthChecker
from tests.support import free_port

CHECK = HealthCheckConfig(interval=0.05, timeout=0.5, rise=1, fall=1)


def check_for(seconds: float, host: str, port: int, resolver_options: dict | None = None, stall=None) -> str:
    """Run a HealthChecker on one server for `seconds`; returns the event log."""
    stream = io.StringIO()
    reactor = Reactor(EventLog(stream=stream))
    resolver = Resolver(reactor, **(resolver_options or {}))
    if stall is not None:
        stall(resolver)
    pool = Pool(UpstreamConfig("db", (ServerConfig(Address(host, port)),), health_check=CHECK))
    checker = HealthChecker(reactor, resolver, pool, EventLog(stream=stream))
    reactor.call_later(seconds, reactor.stop)
    reactor.loop()
    checker.stop()
    resolver.close()
    reactor.close()
    return stream.getvalue()


def test_a_refused_server_is_marked_down():
    log = check_for(0.3, "127.0.0.1", free_port())
    assert "server_down" in log
    assert 'reason="connection refused"' in log


# Run in a child: it lowers its own descriptor limit, which must not touch the test process.
_OUT_OF_DESCRIPTORS = textwrap.dedent(
    """
    import io, socket, sys
    from tests.support.processes import exhaust_descriptors
    from proxy.config.schema import HealthCheckConfig, ServerConfig, UpstreamConfig
    from proxy.serve.health import HealthChecker
    from proxy.log import EventLog
    from proxy.loop.reactor import Reactor
    from proxy.loop.resolver import Resolver
    from proxy.config.units import Address
    from proxy.policy.upstreams import Pool

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    reactor = Reactor(EventLog(stream=io.StringIO()))
    log = EventLog(level="debug", stream=sys.stdout)
    check = HealthCheckConfig(interval=0.05, timeout=0.5, rise=1, fall=1)
    address = Address("127.0.0.1", server.getsockname()[1])
    pool = Pool(UpstreamConfig("db", (ServerConfig(address),), health_check=check))
    hoard = exhaust_descriptors()
    checker = HealthChecker(reactor, Resolver(reactor), pool, log)
    reactor.call_later(0.5, reactor.stop)
    reactor.loop()
    print("checked_up", pool.servers[0].checked_up)
    """
)


def test_running_out_of_descriptors_marks_no_server_down():
    # EMFILE is the proxy's own shortage: the probe gives no verdict, and says so at most in debug.
    child = subprocess.run([sys.executable, "-c", _OUT_OF_DESCRIPTORS], capture_output=True, text=True, timeout=30)
    assert child.returncode == 0, child.stderr
    lines = child.stdout.splitlines()
    assert lines[-1] == "checked_up True"
    assert not any("server_down" in line for line in lines)
    assert all(" DEBUG " in line for line in lines[:-1])
    assert len(lines) > 2  # the checks did run: about ten of them in 0.5 s


def test_health_checks_of_named_servers_go_on_while_client_lookups_stall():
    released = threading.Event()

    def lookup(host, port, *, type=0):
        if host.startswith("client"):
            released.wait(5.0)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port or 0))]

    def stall(resolver):
        for i in range(8):
            resolver.resolve(Address(f"client{i}.example", 80), lambda result: None)

    try:
        log = check_for(0.3, "db.example", free_port(), {"threads": 2, "lookup": lookup}, stall)
    finally:
        released.set()
    # The verdict of a check that connected, not of a lookup that timed out.
    assert 'reason="connection refused"' in log
