"""The benchmark's smoke mode still runs: bench/run.py is not part of the suite, but it must not rot."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import REPOSITORY

BENCH = REPOSITORY / "bench" / "run.py"


def test_bench_quick_mode_measures_pairproxy_idle_memory(tmp_path):
    # idle_memory needs no peer from outside: the upstream is `pairproxy echo`.
    argv = [sys.executable, str(BENCH), "--quick", "--peers", "direct,pairproxy", "--workloads", "idle_memory"]
    result = subprocess.run(
        [*argv, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (report,) = tmp_path.glob("*.json")
    entry = json.loads(report.read_text())["summary"]["idle_memory"]["pairproxy"]
    assert 0 < entry["median"] < 32, "KiB of proxy RSS per idle connection pair"
    assert "| pairproxy |" in result.stdout
