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
from tests.support import ProxyProcess, UnixUpstream, Upstream, stopped_at_teardown, write_pki


def pytest_configure(config):
    """Every process the run starts (xdist workers, proxies, `ctl`) keeps its compiled bytecode
    in pytest's cache folder, even where PYTHONDONTWRITEBYTECODE keeps it out of the source tree:
    a proxy compiles the whole package at each start otherwise, about half of its start-up,
    and the run starts hundreds."""
    cache = getattr(config, "cache", None)
    if cache is None:  # -p no:cacheprovider: no folder of our own to write in
        return
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(cache.mkdir("pycache"))


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


@pytest.fixture
def start_upstream():
    """start_upstream(handler, host="127.0.0.1") -> Upstream; closed at teardown."""
    yield from stopped_at_teardown(Upstream)


@pytest.fixture
def start_unix_upstream():
    """start_unix_upstream(handler, path) -> UnixUpstream (a path, or an abstract name as
    b"\\0name"); closed at teardown."""
    yield from stopped_at_teardown(UnixUpstream)


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
# the end, any child still alive is named, killed, and fails the run. Under pytest-xdist each
# worker checks its own children and hands what it killed to the controller, which reports it;
# the controller checks its own children after its workers have exited (so they are not
# counted), which catches what a worker that died left behind.

PR_SET_CHILD_SUBREAPER = 36
OUTLIVED = pytest.StashKey[list]()


def pytest_sessionstart(session):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    session.config.stash[OUTLIVED] = []


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


def _kill_leftovers() -> list[str]:
    """Kill this process's children still alive after a grace period; one line for each."""
    deadline = time.monotonic() + 5  # a process killed at the last teardown may still be exiting
    while (left := _live_children()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return [f"pid {pid}: {command}" for pid, command in left.items()]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """xdist, in the controller: a worker is done; keep what it killed for the report."""
    node.config.stash[OUTLIVED].extend(getattr(node, "workeroutput", {}).get("outlived", []))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    outlived = _kill_leftovers()
    worker_output = getattr(session.config, "workeroutput", None)
    if worker_output is not None:  # an xdist worker: sent to the controller after this hook
        worker_output["outlived"] = outlived
        return
    outlived += session.config.stash[OUTLIVED]
    if not outlived:
        return
    report = "\n".join(f"  {line}" for line in outlived)
    session.config.get_terminal_writer().line(
        f"\nFAILED: processes started by tests outlived them (killed now):\n{report}", red=True
    )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
