"""The listener on a real reactor and real sockets: accept batches, the pause when descriptors run
out, UNIX socket files (stale takeover, mode, removal), a supervisor's shared UNIX sockets and the
sockets it hands a worker."""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import sys
import textwrap

import pytest

from proxy.config.units import Address, UnixAddress
from proxy.errors import StartupError
from proxy.log import EventLog
from proxy.loop.listener import (
    ACCEPT_BATCH,
    HandedSockets,
    Listener,
    SocketFileError,
    SocketFiles,
    bind_listening_socket,
    bind_reuseport_group,
    listen_unix,
)
from proxy.loop.reactor import Reactor

SAFETY = 5.0


@pytest.fixture
def reactor():
    reactor = Reactor(EventLog(stream=io.StringIO()))
    reactor.call_later(SAFETY, reactor.stop)
    yield reactor
    reactor.close()


def run_one_pass(reactor: Reactor) -> None:
    reactor.call_soon(reactor.stop)
    reactor.loop()


def test_one_readiness_event_accepts_at_most_a_batch(reactor):
    # One busy listener must not starve the others: the rest of its backlog waits for the next pass.
    accepted: list[socket.socket] = []
    listener = Listener(
        reactor, bind_listening_socket(Address("127.0.0.1", 0)), "edge", lambda c, _p: accepted.append(c)
    )
    clients = [socket.create_connection(listener.socket.getsockname(), timeout=SAFETY) for _ in range(ACCEPT_BATCH + 6)]
    try:
        run_one_pass(reactor)
        assert len(accepted) == ACCEPT_BATCH
        run_one_pass(reactor)
        assert len(accepted) == ACCEPT_BATCH + 6
        assert all(not client.getblocking() for client in accepted)
    finally:
        for sock in clients + accepted:
            sock.close()


# Run in a child: it lowers its own descriptor limit, which must not touch the test process.
_OUT_OF_DESCRIPTORS = textwrap.dedent(
    """
    import io, socket
    from tests.support.processes import exhaust_descriptors
    from proxy.config.units import Address
    from proxy.log import EventLog
    from proxy.loop.listener import Listener, bind_listening_socket
    from proxy.loop.reactor import Reactor

    log = io.StringIO()
    reactor = Reactor(EventLog(stream=log))
    accepted = []

    def accept(client, _peer):
        accepted.append(client)
        if len(accepted) == 2:
            reactor.stop()

    listener = Listener(reactor, bind_listening_socket(Address("127.0.0.1", 0)), "edge", accept)
    clients = [socket.create_connection(listener.socket.getsockname()) for _ in range(2)]
    hoard = exhaust_descriptors()
    reactor.call_soon(reactor.stop)
    reactor.loop()
    print(listener.accepting.value, len(accepted), listener.readable())
    for sock in hoard:
        sock.close()
    reactor.call_later(5, reactor.stop)
    reactor.loop()
    print(listener.accepting.value, len(accepted), listener.readable())
    print(log.getvalue())
    """
)


def test_running_out_of_descriptors_pauses_accepting_then_resumes():
    child = subprocess.run([sys.executable, "-c", _OUT_OF_DESCRIPTORS], capture_output=True, text=True, timeout=30)
    assert child.returncode == 0, child.stderr
    paused, resumed, log = child.stdout.split("\n", 2)
    assert paused == "paused 0 False"  # the clients wait in the backlog; the loop does not spin
    assert resumed == "accepting 2 True"
    assert "accept_paused" in log and 'error="too many open files"' in log and "retry_s=0.05" in log


def test_a_socket_file_left_by_a_dead_process_is_taken_over(tmp_path):
    path = str(tmp_path / "s")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # its file stays, and nothing accepts on it
    with listen_unix(path, mode=0o640) as sock:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            sock.accept()[0].close()


def test_a_live_socket_or_another_file_is_never_replaced(tmp_path):
    path = str(tmp_path / "s")
    with listen_unix(path):
        with pytest.raises(SocketFileError) as refused:
            listen_unix(path)
        assert refused.value.errno == 98  # EADDRINUSE
    (tmp_path / "f").write_text("somebody's")
    with pytest.raises(SocketFileError, match="the file exists and is not a socket"):
        listen_unix(str(tmp_path / "f"))
    assert (tmp_path / "f").read_text() == "somebody's"


def test_the_socket_that_made_the_file_removes_it_and_its_copies_do_not(tmp_path):
    path = tmp_path / "s"
    sock = listen_unix(str(path))
    sock.dup().close()
    assert path.exists()
    sock.close()
    assert not path.exists()


def test_a_unix_group_is_copies_of_one_socket_kept_until_closed(tmp_path):
    # A UNIX socket has no SO_REUSEPORT: every worker, a restarted one too, shares the one kept.
    kept = SocketFiles()
    address = UnixAddress(str(tmp_path / "s"))
    first = bind_reuseport_group(address, 2, kept)
    later = bind_reuseport_group(address, 1, kept)
    inode = os.stat(address.path).st_ino
    for sock in first + later:
        sock.close()
    assert os.stat(address.path).st_ino == inode, "the kept socket still listens on its file"
    kept.close(keep={str(address)})
    assert os.path.exists(address.path)
    kept.close()
    assert not os.path.exists(address.path)


def test_a_worker_listens_on_what_was_handed_to_it_and_nothing_else(tmp_path):
    handed = HandedSockets()
    given = socket.socket()
    address = Address("127.0.0.1", 8080)
    handed.hand_over(str(address), given)
    handed.hand_over("127.0.0.1:8081", "cannot listen on 127.0.0.1:8081: address in use")
    assert handed.take(address) is given
    given.close()
    with pytest.raises(StartupError, match="the supervisor bound no socket for it"):
        handed.take(address)
    with pytest.raises(StartupError) as refused:
        handed.take(Address("127.0.0.1", 8081))
    assert str(refused.value) == "cannot listen on 127.0.0.1:8081: address in use"
    untaken = socket.socket()
    handed.hand_over("127.0.0.1:8082", untaken)
    handed.discard()
    assert untaken.fileno() == -1
