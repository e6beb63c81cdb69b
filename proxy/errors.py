"""Errors in one place: the user-facing error types and their exit statuses, what an exception
raised while serving a connection means (`classify`: the peer is gone, try later, out of
descriptors, or a bug), the short reasons the access log gives for TLS failures, and the base
of every checked state machine (`StateEnum`) with the error a refused move raises."""

from __future__ import annotations

import enum
import errno
import os
import ssl


class ProxyError(Exception):
    """An error a person can act on: printed as one line, never as a traceback."""

    exit_status = 1


class UsageError(ProxyError):
    """A bad command line or configuration value (exit status 2)."""

    exit_status = 2


class StartupError(ProxyError):
    """The proxy could not start, e.g. an address already in use (exit status 1)."""

    exit_status = 1


class StateError(Exception):
    """A move a state table does not allow: a bug in the proxy, never a peer's doing."""


class StateEnum(enum.Enum):
    """A state of a checked machine. Members are singletons, so their identity is their hash: the
    move tables are then looked up in C, not through Enum's own __hash__, written in Python (two
    calls a move on the per-connection paths)."""

    __hash__ = object.__hash__


def refused_move(what: str, old: StateEnum, new: StateEnum) -> StateError:
    """The error for `what` moving from `old` to `new`, which its table does not allow."""
    return StateError(f"{what}: {type(old).__name__.lower()} cannot go from {old.value} to {new.value}")


def describe_ssl_error(exc: ssl.SSLError) -> str:
    """A short reason: `certificate verify failed: hostname mismatch`, not the whole repr."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message[0].lower()}{exc.verify_message[1:]}"
    reason = getattr(exc, "reason", None)
    return (reason or str(exc)).replace("_", " ").lower()


# -- what an OSError on a socket means ------------------------------------------------------

# The peer is gone: the connection is over, whatever we do next.
PEER_GONE = frozenset(
    {
        errno.ECONNRESET,
        errno.EPIPE,
        errno.ECONNABORTED,
        errno.ESHUTDOWN,
        errno.ETIMEDOUT,
        errno.ENOTCONN,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETRESET,
    }
)
# Nothing is wrong; the call has to be made again later.
TRY_LATER = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.EINPROGRESS})
# The process or the system is out of descriptors or buffers: back off, then retry.
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Meaning(enum.Enum):
    """What an exception raised while serving a connection means for that connection."""

    PEER_GONE = "peer_gone"  # the connection is over: end it as a reset
    TRY_LATER = "try_later"  # nothing is wrong: wait for the next event
    OUT_OF_DESCRIPTORS = "out_of_descriptors"  # this process is short: back off, then retry
    BUG = "bug"  # anything else: end exactly that connection with result=error, and log it


def classify(exc: BaseException) -> Meaning:
    """What `exc` means. Each kind of dispatcher acts on the answer in one place, its `handle_error`."""
    if isinstance(exc, OSError):
        code = exc.errno
        if code in PEER_GONE:
            return Meaning.PEER_GONE
        if code in TRY_LATER:
            return Meaning.TRY_LATER
        if code in OUT_OF_DESCRIPTORS:
            return Meaning.OUT_OF_DESCRIPTORS
    return Meaning.BUG


def describe_os_error(exc: OSError) -> str:
    """What went wrong, in the lower-case words an error line continues with: `permission denied`."""
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return (exc.strerror or str(exc)).lower()
