"""The run's own promise (tests/conftest.py): a process a test leaves behind fails the run, is
named and is killed, in one process and under pytest-xdist alike, where the controller does not
count its own workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPOSITORY, WAIT, wait_until

LEAKY = """\
import subprocess


def test_leaves_a_process_behind():
    subprocess.run(["sh", "-c", "sleep 60 & exit 0"], check=True)


def test_leaves_nothing():
    pass
"""


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_process_that_outlives_its_test_fails_the_run_and_is_killed(tmp_path, workers):
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "pytest", "-c", os.devnull, "--rootdir", str(tmp_path), "-n", workers, "-q"]
    run = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 passed" in run.stdout
    (pid,) = re.findall(
        r"processes started by tests outlived them \(killed now\):\n  pid (\d+): sleep 60\n", run.stdout
    )
    assert wait_until(lambda: not alive(int(pid)), timeout=WAIT)


def alive(pid: int) -> bool:
    """Running still: a killed process waits as a zombie for the subreaper above it to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
