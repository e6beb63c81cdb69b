"""Fixtures that start real processes and servers and always stop them."""

from __future__ import annotations

import ctypes
import io
import os
import signal
import time
from pathlib import Path

import pytest
import trustme

from proxy.log import EventLog
from proxy.loop.reactor import Reactor
from tests.support import ProxyProcess, UnixUpstream, Upstream, write_pki


@pytest.fixture(params=["splice", "copy"])
def data_path(request):
    """Run a test both ways bytes can move: spliced in the kernel, and copied through Python."""
    return request.param


@pytest.fixture
def proxy_env():
    """Environment for the proxies a test starts; test modules may override this fixture. No TLS
    key log from the environment the tests were started in, unless a test asks for one."""
    return {"SSLKEYLOGFILE": ""}


@pytest.fixture
def start_proxy(tmp_path, proxy_env):
    """start_proxy(*args, **kw) -> ProxyProcess; every process is killed at teardown."""
    started: list[ProxyProcess] = []

    def start(*args: str, **kwargs) -> ProxyProcess:
        kwargs.setdefault("env", proxy_env)
        proc = ProxyProcess(args, tmp_path, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def _stopped_at_teardown(server_class):
    """A fixture body: start(...) -> server_class(...), each closed when the test ends."""
    started = []

    def start(*args, **kwargs):
        server = server_class(*args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def start_upstream():
    """start_upstream(handler, host="127.0.0.1") -> Upstream; closed at teardown."""
    yield from _stopped_at_teardown(Upstream)


@pytest.fixture
def start_unix_upstream():
    """start_unix_upstream(handler, path) -> UnixUpstream (a path, or an abstract name as
    b"\\0name"); closed at teardown."""
    yield from _stopped_at_teardown(UnixUpstream)


@pytest.fixture
def reactor():
    """A reactor whose log goes nowhere, closed at teardown."""
    reactor = Reactor(EventLog(stream=io.StringIO()))
    yield reactor
    reactor.close()


@pytest.fixture(scope="session")
def ca():
    return trustme.CA()


@pytest.fixture(scope="session")
def pki(ca, tmp_path_factory):
    """PEM files on disk (tests.support.tls.write_pki): the CA, a proxy certificate, upstream
    certificates, client certificates, another CA."""
    return write_pki(ca, tmp_path_factory.mktemp("pki"))


# -- nothing a test starts outlives the run ---------------------------------------------------
# pytest becomes a child subreaper, so a process a test started stays its descendant even when
# the process between them dies (strace killed before its tracee, a shell that exec'd away); at
# the end, any child still alive is named, killed, and fails the run.

PR_SET_CHILD_SUBREAPER = 36


def pytest_sessionstart(session):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _live_children() -> dict[int, str]:
    """This process's children that are not zombies (reaped here), by pid, with their command lines."""
    pids = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            pids.update(int(pid) for pid in (task / "children").read_text().split())
        except OSError:
            continue
    alive = {}
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            continue
        alive[pid] = command.strip()
    return alive


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    deadline = time.monotonic() + 5  # a process killed at the last teardown may still be exiting
    while (left := _live_children()) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not left:
        return
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    report = "\n".join(f"  pid {pid}: {command}" for pid, command in left.items())
    session.config.get_terminal_writer().line(
        f"\nFAILED: processes started by tests outlived them (killed now):\n{report}", red=True
    )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
