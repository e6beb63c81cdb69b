"""The user-facing error types and the exit status each one maps to."""


class ProxyError(Exception):
    """An error a person can act on: printed as one line, never as a traceback."""

    exit_status = 1


class UsageError(ProxyError):
    """A bad command line or configuration value (exit status 2)."""

    exit_status = 2


class StartupError(ProxyError):
    """The proxy could not start, e.g. an address already in use (exit status 1)."""

    exit_status = 1
