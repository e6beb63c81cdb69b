"""What an exception means is decided in one place (errors.classify)."""

from __future__ import annotations

import errno

import pytest

from proxy.errors import Meaning, StateError, classify
from proxy.protocol.tls import TlsError


@pytest.mark.parametrize(
    ("exc", "meaning"),
    [
        (ConnectionResetError(errno.ECONNRESET, "reset"), Meaning.PEER_GONE),
        (BrokenPipeError(errno.EPIPE, "pipe"), Meaning.PEER_GONE),
        (BlockingIOError(errno.EAGAIN, "again"), Meaning.TRY_LATER),
        (InterruptedError(errno.EINTR, "interrupted"), Meaning.TRY_LATER),
        (OSError(errno.EMFILE, "too many open files"), Meaning.OUT_OF_DESCRIPTORS),
        (OSError(errno.EBADF, "bad descriptor"), Meaning.BUG),
        (StateError("a bad move"), Meaning.BUG),
        (TlsError("not an OSError"), Meaning.BUG),
        (ValueError("anything else"), Meaning.BUG),
    ],
)
def test_what_an_exception_means(exc, meaning):
    assert classify(exc) is meaning
