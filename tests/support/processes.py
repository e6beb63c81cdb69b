"""The real `pairproxy` command in a subprocess: one that serves (ProxyProcess), one that runs to
completion (run_cli), and what a test reads of a process (RSS, descriptors, installed tools).

Every wait here has a deadline; every process started is killed by its handle.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.support.logs import logfmt
from tests.support.waits import WAIT, wait_until


class ProxyProcess:
    """`python -m proxy ARGS` with stderr collected line by line and stdout to a file."""

    def __init__(
        self,
        args: Sequence[str],
        workdir: Path,
        *,
        preexec_fn: Callable[[], None] | None = None,
        wait_listening: int = 1,
        env: dict[str, str] | None = None,
        wrapper: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
    ) -> None:
        """`wrapper` is a command line the proxy's is appended to (it execs it); `pass_fds` stay open in it."""
        self.args = list(args)
        self.stdout_path = workdir / f"stdout-{id(self)}.txt"
        self._stdout = open(self.stdout_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "proxy", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=subprocess.PIPE,
            cwd=workdir,
            preexec_fn=preexec_fn,
            pass_fds=pass_fds,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self.addresses: list[str] = []
        if wait_listening:
            self.wait_for(lambda _line: len(self._listening()) >= wait_listening)
            self.addresses = [re.search(r"address=(\S+)", line).group(1) for line in self._listening()]

    def _listening(self) -> list[str]:
        return [line for line in self.lines if " listening " in line]

    def _read_stderr(self) -> None:
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.addresses[0].rsplit(":", 1)[1])

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.addresses[0].rpartition(":")
        return host.strip("[]"), int(port)

    def wait_for(self, predicate: Callable[[str], bool] | str, timeout: float = WAIT) -> str:
        """The first stderr line matching; AssertionError with the log if none by the deadline."""
        test = (lambda line: predicate in line) if isinstance(predicate, str) else predicate
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if test(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no matching log line in {timeout}s; stderr was:\n" + self.log_text())
                self._cond.wait(min(remaining, 0.1))

    def access_lines(self) -> list[dict[str, str]]:
        return [logfmt(line) for line in list(self.lines) if " access " in line]

    def wait_access(self, count: int = 1, timeout: float = WAIT) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.access_lines()
            if len(lines) >= count:
                return lines
            time.sleep(0.02)
        raise AssertionError(f"expected {count} access lines; stderr was:\n" + self.log_text())

    def listener_address(self, name: str) -> tuple[str, int]:
        """The address the listener called `name` is bound to, from its `listening` line."""
        for line in self._listening():
            fields = logfmt(line)
            if fields.get("listener") == name:
                host, _, port = fields["address"].rpartition(":")
                return host.strip("[]"), int(port)
        raise KeyError(f"no listener {name!r} in:\n" + self.log_text())

    def log_text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def stdout(self) -> str:
        self._stdout.flush()
        return self.stdout_path.read_text()

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = WAIT) -> int:
        """Signal, wait, and kill if it did not exit in time; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._close_pipes()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        self._close_pipes()

    def _close_pipes(self) -> None:
        self._reader.join(WAIT)
        self.proc.stderr.close()
        self._stdout.close()

    def rss_kib(self) -> int:
        return proc_status(self.pid, "VmRSS")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def pipe_count(self) -> int:
        fds = f"/proc/{self.pid}/fd"
        count = 0
        for fd in os.listdir(fds):
            try:
                count += os.readlink(f"{fds}/{fd}").startswith("pipe:")
            except FileNotFoundError:
                pass  # closed between the listing and the look: not a pipe any more
        return count


class PeakRss:
    """The highest RSS (KiB) a process reaches while the block runs, sampled every 20 ms.

    `start` is the RSS when the block began; `growth` the peak above it.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def growth(self) -> int:
        return self.peak - self.start

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, proc_status(self.pid, "VmRSS"))

    def __enter__(self) -> PeakRss:
        self.start = self.peak = proc_status(self.pid, "VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self.peak = max(self.peak, proc_status(self.pid, "VmRSS"))


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def run_cli(
    args: Sequence[str], cwd: Path | None = None, timeout: float = WAIT, **kwargs
) -> subprocess.CompletedProcess:
    """Run `python -m proxy ARGS` to completion (for commands that exit by themselves)."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def reload(proxy: ProxyProcess, count: int) -> None:
    """SIGHUP, then wait for the `count`-th outcome (`reloaded` or `reload_failed`) to be logged."""
    proxy.send_signal(signal.SIGHUP)
    assert wait_until(
        lambda: proxy.log_text().count(" reloaded ") + proxy.log_text().count(" reload_failed ") >= count
    ), proxy.log_text()


def exhaust_descriptors(limit: int = 64) -> list[socket.socket]:
    """In a child process made for it: lower the open-file limit to `limit` and take every
    descriptor left, so that the next socket() fails with EMFILE. Keep the list alive."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    hoard = []
    try:
        while True:
            hoard.append(socket.socket())
    except OSError:
        pass
    return hoard


def required_tool(*names: str) -> str:
    """The path of the first of `names` installed. A tool a user would run (tshark, strace,
    chromium) is installed by .ci/run: under CI=true its absence fails the test, elsewhere the
    test is skipped."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"{names[0]} is not installed (.ci/run installs it)")
    pytest.skip(f"{names[0]} is not installed")


def splicing(data_path: str) -> dict[str, str]:
    """The environment of a proxy that moves bytes the `data_path` way: spliced, or copied."""
    return {"PAIRPROXY_SPLICE": "1" if data_path == "splice" else "0"}


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have exited and been waited for: what a
    command cost, however busy the machine was while it ran."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
