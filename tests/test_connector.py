"""The connector on a real reactor: which servers it reports as failed, and when it gives up."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Run in a child: it lowers its own descriptor limit, which must not touch the test process.
_OUT_OF_DESCRIPTORS = textwrap.dedent(
    """
    import io, resource, socket
    from proxy.connector import Connector
    from proxy.log import EventLog
    from proxy.reactor import Reactor
    from proxy.resolver import Resolver
    from proxy.units import Address

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    reactor = Reactor(EventLog(stream=io.StringIO()))
    seen = []

    class Observer:
        def connected(self, attempt, address):
            seen.append("connected")
            attempt.close()
            reactor.stop()

        def attempt_failed(self, address, reason):
            seen.append("attempt_failed")

        def unreachable(self, reason):
            seen.append("unreachable: " + reason)
            reactor.stop()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    hoard = []
    try:
        while True:
            hoard.append(socket.socket())
    except OSError:
        pass
    address = Address("127.0.0.1", server.getsockname()[1])
    Connector(reactor, Resolver(reactor), iter([address, address]), 1.0, Observer()).start()
    reactor.call_later(5, reactor.stop)
    reactor.loop()
    print(seen)
    """
)


def test_running_out_of_descriptors_blames_no_server():
    # EMFILE is this process's trouble, not the server's: passive health must not mark it down,
    # and the other servers are not tried (they would fail the same way).
    child = subprocess.run([sys.executable, "-c", _OUT_OF_DESCRIPTORS], capture_output=True, text=True, timeout=30)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "['unreachable: too many open files']"
