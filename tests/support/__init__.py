"""Helpers the test files share, each defined once: `from tests.support import NAME`.

- waits: WAIT, the default deadline, and wait_until
- net: a client's side of loopback (connect, recv_*, ask, free_port, pattern)
- servers: real upstream servers (TCP and UNIX) and their handlers
- processes: the real `pairproxy` command (ProxyProcess, run_cli, reload) and what a test reads
  of a process
- logs: logfmt, one log line's key=value pairs
- config: a YAML file in the test's folder, a pool of servers
- tls: certificate files, contexts, a TLS upstream and client, ClientHellos built by hand
- admin: ctl, one HTTP request to the admin listener, /metrics, a worker's snapshot
- inprocess: a Server on a thread of the test's own process
- pcapng, wireshark: reading captures back, by hand and with tshark
- firstbytes: what a client of each protocol sends first (a multiplexed listener detects it)

Fixtures built on these are in tests/conftest.py.
"""

from tests.support.admin import admin_address, ctl, histogram, http, labels, metrics, ok, samples, snapshot
from tests.support.config import REPOSITORY, pool, ports, write
from tests.support.firstbytes import FIRST_BYTES, client_hello
from tests.support.inprocess import Lines, listener_address, serving
from tests.support.logs import logfmt
from tests.support.net import accepts, ask, connect, free_port, listens, pattern, recv_all, recv_digest, recv_exactly
from tests.support.pcapng import EPB, IDB, SHB, parse_blocks
from tests.support.processes import (
    PeakRss,
    ProxyProcess,
    children_cpu_seconds,
    exhaust_descriptors,
    proc_status,
    reload,
    required_tool,
    run_cli,
    splicing,
)
from tests.support.servers import (
    UnixUpstream,
    Upstream,
    echo_handler,
    peer_reporter,
    sink_handler,
    source_handler,
    stopped_at_teardown,
    tagged,
)
from tests.support.tls import (
    client_context,
    echo_through,
    in_records,
    server_context,
    synthetic_client_hello,
    tls_connect,
    tls_upstream,
    write_pki,
)
from tests.support.waits import WAIT, wait_until

__all__ = [
    "EPB",
    "FIRST_BYTES",
    "IDB",
    "REPOSITORY",
    "SHB",
    "WAIT",
    "Lines",
    "PeakRss",
    "ProxyProcess",
    "UnixUpstream",
    "Upstream",
    "accepts",
    "admin_address",
    "ask",
    "children_cpu_seconds",
    "client_context",
    "client_hello",
    "connect",
    "ctl",
    "echo_handler",
    "echo_through",
    "exhaust_descriptors",
    "free_port",
    "histogram",
    "http",
    "in_records",
    "labels",
    "listener_address",
    "listens",
    "logfmt",
    "metrics",
    "ok",
    "parse_blocks",
    "pattern",
    "peer_reporter",
    "pool",
    "ports",
    "proc_status",
    "recv_all",
    "recv_digest",
    "recv_exactly",
    "reload",
    "required_tool",
    "run_cli",
    "samples",
    "server_context",
    "serving",
    "sink_handler",
    "snapshot",
    "source_handler",
    "splicing",
    "stopped_at_teardown",
    "synthetic_client_hello",
    "tagged",
    "tls_connect",
    "tls_upstream",
    "wait_until",
    "write",
    "write_pki",
]
