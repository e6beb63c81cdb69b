"""The command-line flags for socket and process options, and the argparse types every flag
is read with (proxy/cli.py defines the rest).

`forward` takes `--keepalive` (toward the client and the server), `--source` and `--backlog`,
the YAML keys of its one listener and upstream; `run` and `forward` take `--pid-file`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from proxy.config.sockets import MAX_BACKLOG, parse_keepalive_flag, parse_source
from proxy.config.units import whole_number
from proxy.errors import UsageError
from proxy.serve.pidfile import PidFile


def argument_type(parse: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """An argparse `type` that reports the parser's own message rather than argparse's."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = what
    return convert


def count_parser(maximum: int | None = None) -> Callable[[str], int]:
    """A whole number from 1 to `maximum`, as a flag's text."""

    def parse(text: str) -> int:
        number = whole_number(text)
        if number is None or number < 1:
            raise ValueError(f"expected a whole number of at least 1, got {text!r}")
        if maximum is not None and number > maximum:
            raise ValueError(f"must be at most {maximum}, got {text!r}")
        return number

    return parse


def add_socket_flags(forward: argparse.ArgumentParser) -> None:
    """`forward`'s socket options, a group of their own in its --help."""
    group = forward.add_argument_group("socket options (the YAML keys of the same names)")
    group.add_argument(
        "--keepalive",
        type=argument_type(parse_keepalive_flag, "keepalive"),
        metavar="on|IDLE:INTERVAL:COUNT",
        help="TCP keepalive toward the client and the server (HAProxy clitcpka/srvtcpka, nginx so_keepalive)",
    )
    group.add_argument(
        "--source",
        type=argument_type(parse_source, "source"),
        metavar="ADDRESS[:FIRST-LAST]",
        help="connect to the upstream from this IP address (HAProxy source, nginx proxy_bind)",
    )
    group.add_argument(
        "--backlog",
        type=argument_type(count_parser(MAX_BACKLOG), "backlog"),
        metavar="N",
        help="listen backlog, at most net.core.somaxconn (HAProxy backlog, nginx listen backlog=); default: 1024",
    )


def add_pid_file_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pid-file",
        metavar="PATH",
        help="write the pid here once listening, remove it at exit (HAProxy -p, nginx pid)",
    )


def claim_pid_file(args: argparse.Namespace) -> PidFile | None:
    """The `--pid-file` asked for, claimed (StartupError when a live pairproxy holds it); None if none."""
    return None if args.pid_file is None else PidFile.claim(args.pid_file)


def socket_options(args: argparse.Namespace) -> dict[str, Any]:
    """What `forward`'s socket flags set, as the keyword arguments of `forward_config`; UsageError
    for a source that cannot reach the upstream (a UNIX socket, an address of the other family)."""
    source, upstream = args.source, args.upstream
    if source is not None and (upstream.is_unix or (upstream.is_literal and upstream.is_ipv6 != (":" in source.host))):
        what = "a UNIX socket" if upstream.is_unix else "of the other IP family"
        raise UsageError(f"--source {source.host}: the upstream {upstream} is {what}")
    return {"keepalive": args.keepalive, "source": source, "backlog": args.backlog}
