"""`--pid-file PATH`: the serving process's pid in a file, for init scripts and `kill $(cat PATH)`.

Claimed at the start, before anything is bound: a file naming a live pairproxy (its
/proc/PID/cmdline runs `pairproxy` or `python -m proxy`) refuses the start (exit status 1,
one line); a file naming anything else is stale and is replaced. Written once the process listens,
atomically (a temporary file beside it, then a rename), so a reader never sees half a number.
Removed at exit by the process that wrote it, if it still holds that process's pid. Under
`run --workers` only the supervisor writes it: a forked worker never removes it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from proxy.errors import StartupError, describe_os_error

PROC = "/proc"


def _running_pairproxy(pid: int, proc: str = PROC) -> bool:
    """True when `pid` is a live process running pairproxy (not this process)."""
    if pid == os.getpid():
        return False
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as file:
            args = file.read().split(b"\0")
    except OSError:
        return False  # no such process (or not ours to see: then not one we started)
    names = [os.path.basename(arg) for arg in args]
    return b"pairproxy" in names or any(a == b"-m" and b == b"proxy" for a, b in itertools.pairwise(args))


class PidFile:
    """One pid file: `claim` at the start, `write` once listening, `remove` at exit."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.written_by: int | None = None  # the pid written, in the process that wrote it

    @classmethod
    def claim(cls, path: str) -> PidFile:
        """The pid file at `path`, unless it names a live pairproxy: StartupError then."""
        pid_file = cls(path)
        try:
            with open(pid_file.path, encoding="ascii", errors="replace") as file:
                text = file.read(32).strip()
        except FileNotFoundError:
            return pid_file
        except OSError as exc:
            raise StartupError(f"pid file {path}: {describe_os_error(exc)}") from None
        if text.isdigit() and _running_pairproxy(int(text)):
            raise StartupError(f"pid file {path}: pairproxy {text} is running")
        return pid_file

    def write(self) -> None:
        """Put this process's pid in the file, by a rename; StartupError if it cannot be."""
        pid = os.getpid()
        temporary = f"{self.path}.{pid}.tmp"
        try:
            with open(temporary, "w", encoding="ascii") as file:
                file.write(f"{pid}\n")
            os.replace(temporary, self.path)
        except OSError as exc:
            try:
                os.unlink(temporary)
            except OSError:
                pass  # never made
            raise StartupError(f"pid file {self.path}: {describe_os_error(exc)}") from None
        self.written_by = pid

    def remove(self) -> None:
        """Remove the file, from the process that wrote it and while it still names that process."""
        if self.written_by is None or self.written_by != os.getpid():
            return
        self.written_by = None
        try:
            with open(self.path, encoding="ascii") as file:
                if file.read(32).strip() != str(os.getpid()):
                    return  # someone else's by now
            os.unlink(self.path)
        except OSError:
            pass  # gone already


@contextmanager
def written(pid_file: PidFile | None, undo: Callable[[], None]) -> Iterator[None]:
    """The pid file written for the time of the block (nothing without one); `undo` runs when it
    cannot be written, before the StartupError goes on (what listens is closed, its files removed)."""
    if pid_file is None:
        yield
        return
    try:
        pid_file.write()
    except StartupError:
        undo()
        raise
    try:
        yield
    finally:
        pid_file.remove()
