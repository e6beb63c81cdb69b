"""Deadlines: every wait in the tests is bounded by one."""

from __future__ import annotations

import time
from collections.abc import Callable

WAIT = 10.0  # seconds: the default deadline for anything the tests wait on


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
