"""Errors in one place: the user-facing error types and their exit statuses, and the short
reasons the access log gives for TLS failures."""

from __future__ import annotations

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


def describe_ssl_error(exc: ssl.SSLError) -> str:
    """A short reason: `certificate verify failed: hostname mismatch`, not the whole repr."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message[0].lower()}{exc.verify_message[1:]}"
    reason = getattr(exc, "reason", None)
    return (reason or str(exc)).replace("_", " ").lower()
