"""The command line: argv onto the configuration schema, then run it; exit statuses.

The only reader of sys.argv. Every error reaches the user as one line on stderr (with the
traceback only at `--log-level debug`): 2 for usage and configuration, 1 at run time.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from proxy import __version__, route_command
from proxy.admin import command_socket
from proxy.config.certificates import CertificatePair, check_ca_file, check_certificate
from proxy.config.checks import CAPTURE, HEX_DUMP, KEY_LOG, OutputFile, output_clashes, standard_output_clash
from proxy.config.dumping import parse_dump_condition
from proxy.config.faults import parse_fault
from proxy.config.loader import ConfigError, LoadedConfig, load_admin_socket, load_config
from proxy.config.schema import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_PCAP_KEEP,
    MAX_PCAP_KEEP,
    MIN_PCAP_MAX_SIZE,
    DumpOverrides,
    ListenerTlsConfig,
    PcapConfig,
    UpstreamTlsConfig,
    forward_config,
    with_overrides,
)
from proxy.config.units import parse_address, parse_duration, parse_positive_duration, parse_size
from proxy.errors import ProxyError, StartupError, UsageError, describe_os_error
from proxy.log import LEVELS, EventLog
from proxy.output import file_identity
from proxy.serve.contexts import open_keylog
from proxy.serve.echo import serve_echo
from proxy.serve.flags import add_pid_file_flag, add_socket_flags, claim_pid_file, count_parser, socket_options
from proxy.serve.flags import argument_type as _argument
from proxy.serve.pidfile import PidFile, written
from proxy.serve.server import Server
from proxy.serve.workers import Supervisor

_address = _argument(parse_address, "address")
_upstream_address = _argument(lambda text: parse_address(text, allow_port_zero=False), "address")
_duration = _argument(parse_duration, "duration")
_timeout = _argument(parse_positive_duration, "duration")


_positive = _argument(count_parser(), "count")
_pcap_keep = _argument(count_parser(MAX_PCAP_KEEP), "count")
_size = _argument(parse_size, "size")


def _parse_size_at_least(minimum: int, spelt: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        size = parse_size(text)
        if size < minimum:
            raise ValueError(f"must be at least {spelt}, got {text!r}")
        return size

    return parse


def _parse_output_path(text: str) -> str:
    """A file to write, absolute from the current directory (a reload or a worker may run elsewhere); `-` stays."""
    if not text:
        raise ValueError("expected a file name, or - for standard output")
    return text if text == "-" else os.path.abspath(text)


_snaplen = _argument(_parse_size_at_least(1, "1 byte"), "size")
_pcap_max = _argument(_parse_size_at_least(MIN_PCAP_MAX_SIZE, "64KiB"), "size")
_output_path = _argument(_parse_output_path, "file")
_dump_filter = _argument(parse_dump_condition, "filter")
_fault = _argument(parse_fault, "fault")


class _Parser(argparse.ArgumentParser):
    """argparse with the contract's errors: one line on stderr, `PROG: message`, exit status 2.

    argparse's own error() prints the whole usage block first; --help still prints it in full.
    Subparsers are made from this class too, so their errors name the subcommand (`prog` is
    `pairproxy forward`), and stray arguments are reported by the subcommand they followed.
    """

    _commands: argparse._SubParsersAction | None = None

    def add_subparsers(self, **kwargs: Any) -> argparse._SubParsersAction:
        self._commands = super().add_subparsers(**kwargs)
        return self._commands

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            owner = self._commands.choices.get(command, self) if self._commands and command else self
            owner.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {' '.join(message.splitlines())}\n")


def _add_serving_options(parser: argparse.ArgumentParser, keylog_group: argparse._ActionsContainer) -> None:
    """The flags `forward` and `run` share after their own: the key log (in `keylog_group`), what to
    dump and capture and where (beside --hexdump), toxics."""
    keylog_group.add_argument(
        "--tls-keylog",
        metavar="FILE",
        help="append TLS secrets (NSS key log format) for Wireshark; default: $SSLKEYLOGFILE",
    )
    dumps = parser.add_argument_group("dumps and captures (the same keys on every listener)")
    dumps.add_argument("--dump-file", type=_output_path, metavar="FILE", help="where the hex dump goes (- : stdout)")
    dumps.add_argument("--snaplen", type=_snaplen, metavar="SIZE", help="dump and capture at most SIZE bytes each way")
    dumps.add_argument(
        "--dump-only",
        type=_dump_filter,
        action="append",
        default=[],
        metavar="FILTER",
        help="conn=ID, listener=NAME, route=NAME, client=CIDR or server=HOST:PORT; repeatable, all must hold",
    )
    dumps.add_argument("--pcap", type=_output_path, metavar="FILE", help="capture as pcapng (- : stdout)")
    dumps.add_argument("--pcap-max", type=_pcap_max, metavar="SIZE", help="rotate the capture before it passes SIZE")
    dumps.add_argument(
        "--pcap-keep",
        type=_pcap_keep,
        metavar="N",
        help=f"rotated captures kept (default: {DEFAULT_PCAP_KEEP}, at most {MAX_PCAP_KEEP})",
    )
    parser.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="TYPE:KEY=VALUE,...",
        help="a toxic on every connection, e.g. latency:latency=100ms,stream=downstream; repeatable",
    )
    add_pid_file_flag(parser)


def _dump_overrides(args: argparse.Namespace) -> DumpOverrides:
    """What the dump flags say, or UsageError for flags that do not go together."""
    if args.pcap_max is not None and args.pcap is None:
        raise UsageError("--pcap-max needs --pcap FILE")
    if args.pcap_keep is not None and args.pcap_max is None:
        raise UsageError("--pcap-keep needs --pcap-max (captures are only rotated by size)")
    if args.pcap == "-" and args.pcap_max is not None:
        raise UsageError("--pcap-max needs a file: standard output cannot be rotated")
    if args.pcap == "-" and args.workers > 1:
        raise UsageError("--pcap - cannot be shared by workers; give a file")
    pcap = None if args.pcap is None else PcapConfig(args.pcap, args.pcap_max, args.pcap_keep or DEFAULT_PCAP_KEEP)
    return DumpOverrides(
        hexdump=args.hexdump,
        pcap=pcap,
        snaplen=args.snaplen,
        dump_only=tuple(args.dump_only),
        dump_file=args.dump_file,
        faults=tuple(args.fault),
    )


def _start_outputs(
    args: argparse.Namespace, log: EventLog, loaded: LoadedConfig, overrides: DumpOverrides
) -> str | None:
    """Refuse outputs that cannot go together, then put the key log in force and warn: the file
    decrypts traffic.

    UsageError when captures and the dump would share standard output or two outputs one file (the
    flags', the key log's and those of the table that no flag replaces). Called once per process
    before any TLS context exists; `run --workers` forks after it, so the supervisor warns once for
    all. The key log's path, for the TLS contexts to write to, or None; one that cannot be opened
    stops the start (exit status 1).
    """
    clash = standard_output_clash(with_overrides(loaded.config, overrides), args.workers)
    if clash is not None:
        raise UsageError(clash)
    outputs = []
    if overrides.dump_file not in (None, "-"):
        outputs.append(OutputFile(HEX_DUMP, overrides.dump_file, "--dump-file"))
    if overrides.pcap is not None and overrides.pcap.path != "-":
        outputs.append(OutputFile.capture(overrides.pcap, "--pcap"))
    keylog = _keylog_wanted(args)
    if keylog is not None:
        outputs.append(OutputFile(KEY_LOG, os.path.abspath(keylog[1]), keylog[0]))
    replaced = {HEX_DUMP: overrides.dump_file is not None, CAPTURE: overrides.pcap is not None}
    outputs += [output for output in loaded.outputs if not replaced.get(output.kind)]
    clashes = output_clashes(outputs, file_identity)
    if clashes:
        output, message = clashes[0]
        raise UsageError(f"{output.origin}: {message}")
    if keylog is None:
        return None
    source, path = keylog
    try:
        path = open_keylog(path)
    except OSError as exc:
        raise StartupError(f"{source} {path}: {describe_os_error(exc)}") from None
    log.warning("tls_keylog", file=path, risk="the file decrypts TLS traffic")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pairproxy", description="A forwarding TCP proxy with a YAML route table and a hex dump.")
    parser.add_argument("--version", action="version", version=f"pairproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    forward = commands.add_parser(
        "forward", help="forward one local port to one upstream", description="Forward LISTEN to UPSTREAM."
    )
    forward.add_argument(
        "listen", type=_address, metavar="LISTEN", help="HOST:PORT, [IPv6]:PORT, PORT, unix:PATH or unix:@NAME"
    )
    forward.add_argument(
        "upstream", type=_upstream_address, metavar="UPSTREAM", help="HOST:PORT, unix:PATH or unix:@NAME"
    )
    forward.add_argument("--hexdump", action="store_true", help="dump every forwarded chunk to stdout")
    forward.add_argument(
        "--connect-timeout", type=_timeout, default=DEFAULT_CONNECT_TIMEOUT, metavar="DURATION", help="default: 5s"
    )
    forward.add_argument(
        "--idle-timeout", type=_duration, default=DEFAULT_IDLE_TIMEOUT, metavar="DURATION", help="default: 15m; 0: none"
    )
    forward.add_argument(
        "--buffer-size", type=_size, default=DEFAULT_BUFFER_SIZE, metavar="SIZE", help="per direction; default: 256KiB"
    )
    tls = forward.add_argument_group("TLS (the same roles as the YAML `tls` blocks)")
    tls.add_argument("--tls-cert", metavar="FILE", help="terminate TLS from clients with this certificate (PEM)")
    tls.add_argument("--tls-key", metavar="FILE", help="the key of --tls-cert")
    tls.add_argument("--tls-client-ca", metavar="FILE", help="require client certificates signed by this CA")
    tls.add_argument("--upstream-tls", action="store_true", help="speak TLS to the upstream")
    tls.add_argument("--upstream-ca", metavar="FILE", help="trust anchors for the upstream (default: system store)")
    tls.add_argument("--upstream-server-name", metavar="NAME", help="SNI sent and name verified (default: its host)")
    tls.add_argument("--upstream-insecure", action="store_true", help="do not verify the upstream's certificate")
    tls.add_argument("--upstream-cert", metavar="FILE", help="client certificate for mutual TLS to the upstream")
    tls.add_argument("--upstream-key", metavar="FILE", help="the key of --upstream-cert")
    add_socket_flags(forward)
    _add_serving_options(forward, tls)
    forward.set_defaults(workers=1)  # one process, as the checks of the dump flags need to know

    run = commands.add_parser(
        "run", help="serve a YAML route table", description="Serve the route table in FILE until signalled."
    )
    run.add_argument("-c", "--config", default="pairproxy.yaml", metavar="FILE", help="default: pairproxy.yaml")
    run.add_argument("--hexdump", action="store_true", help="dump every forwarded chunk of every listener")
    run.add_argument(
        "--workers", type=_positive, default=1, metavar="N", help="serving processes sharing each port (default: 1)"
    )
    _add_serving_options(run, run)

    check = commands.add_parser(
        "check", help="validate a YAML route table", description="Validate FILE without binding anything."
    )
    check.add_argument("-c", "--config", default="pairproxy.yaml", metavar="FILE", help="default: pairproxy.yaml")

    route_command.add_parser(commands)
    _add_ctl_command(commands)

    echo = commands.add_parser("echo", help="run an echo server", description="Echo every byte back.")
    echo.add_argument("listen", type=_address, metavar="LISTEN", help="HOST:PORT, PORT, unix:PATH or unix:@NAME")
    for command in commands.choices.values():  # last, so that they come last in every --help
        command.add_argument("--log-level", choices=list(LEVELS), default="info", help="default: info")
        command.add_argument("--log-format", choices=["text", "json"], default="text", help="default: text")
    return parser


def _add_ctl_command(commands: argparse._SubParsersAction) -> None:
    ctl = commands.add_parser(
        "ctl",
        help="send a command to a running pairproxy",
        description="Send COMMAND to the admin socket of a running pairproxy and print the answer "
        "('pairproxy ctl help' lists the commands).",
    )
    ctl.add_argument("-s", "--socket", metavar="PATH", help="the admin socket (default: admin.socket of FILE)")
    ctl.add_argument("-c", "--config", default="pairproxy.yaml", metavar="FILE", help="default: pairproxy.yaml")
    ctl.add_argument(
        "words", nargs=argparse.REMAINDER, metavar="COMMAND", help="e.g. show conns, reload --keep-runtime"
    )


def _ctl(args: argparse.Namespace, _log: EventLog) -> int:
    try:
        command = command_socket.command_text(args.words)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    path = args.socket
    if path is None:
        if not Path(args.config).exists():
            raise UsageError(f"no admin socket given (-s PATH) and no {args.config} to find it in")
        path = load_admin_socket(args.config)
        if path is None:
            raise UsageError(f"{args.config} has no admin socket (admin: {{socket: PATH}}); give -s PATH")
    answer = command_socket.ask(path, command)
    if answer.startswith("error: "):
        raise StartupError(answer.removeprefix("error: "))
    if answer:
        print(answer)
    return 0


def _route(args: argparse.Namespace, _log: EventLog) -> int:
    return route_command.run(args, _load(args).config)


def _forward(args: argparse.Namespace, log: EventLog) -> int:
    if args.buffer_size <= 0:
        raise UsageError("--buffer-size must be at least 1 byte")
    overrides = _dump_overrides(args)
    config = forward_config(
        args.listen,
        args.upstream,
        connect_timeout=args.connect_timeout,
        idle_timeout=args.idle_timeout,
        buffer_size=args.buffer_size,
        tls=_listener_tls(args),
        upstream_tls=_upstream_tls(args),
        **socket_options(args),
    )
    pid_file = claim_pid_file(args)
    keylog = _start_outputs(args, log, LoadedConfig(config, ()), overrides)
    return _serve(Server(with_overrides(config, overrides), log, splice=_splice_wanted(), keylog=keylog), pid_file)


def _certificate(cert: str | None, key: str | None, flags: str) -> CertificatePair | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UsageError(f"{flags} go together")
    pair = CertificatePair(str(Path(cert).resolve()), str(Path(key).resolve()))
    try:
        check_certificate(pair)
    except ValueError as exc:
        raise UsageError(f"{cert}: {exc}") from None
    return pair


def _ca(path: str | None, flag: str) -> str | None:
    if path is None:
        return None
    try:
        check_ca_file(path)
    except (ValueError, OSError) as exc:
        raise UsageError(f"{flag} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return str(Path(path).resolve())


def _listener_tls(args: argparse.Namespace) -> ListenerTlsConfig | None:
    certificate = _certificate(args.tls_cert, args.tls_key, "--tls-cert and --tls-key")
    if certificate is None:
        if args.tls_client_ca:
            raise UsageError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    return ListenerTlsConfig(certificate, _ca(args.tls_client_ca, "--tls-client-ca"))


def _upstream_tls(args: argparse.Namespace) -> UpstreamTlsConfig | None:
    wanted = args.upstream_tls or args.upstream_ca or args.upstream_server_name or args.upstream_insecure
    client_cert = _certificate(args.upstream_cert, args.upstream_key, "--upstream-cert and --upstream-key")
    if not wanted and client_cert is None:
        return None
    if args.upstream.is_unix and not (args.upstream_server_name or args.upstream_insecure):
        raise UsageError("TLS to a UNIX socket needs --upstream-server-name: the name its certificate is checked for")
    return UpstreamTlsConfig(
        ca=_ca(args.upstream_ca, "--upstream-ca"),
        server_name=args.upstream_server_name,
        verify=not args.upstream_insecure,
        client_cert=client_cert,
    )


def _keylog_wanted(args: argparse.Namespace) -> tuple[str, str] | None:
    """Who asks for a key log (the flag, else SSLKEYLOGFILE) and where it goes, or None."""
    source, path = "--tls-keylog", args.tls_keylog
    if not path:
        source, path = "SSLKEYLOGFILE", os.environ.get("SSLKEYLOGFILE")
    return (source, path) if path else None


def _splice_wanted() -> bool:
    """PAIRPROXY_SPLICE=0 keeps every byte going through Python (for comparison or diagnosis)."""
    return os.environ.get("PAIRPROXY_SPLICE", "1") != "0"


def _load(args: argparse.Namespace) -> LoadedConfig:
    loaded = load_config(args.config)
    for warning in loaded.warnings:
        print(warning, file=sys.stderr)
    return loaded


def _run(args: argparse.Namespace, log: EventLog) -> int:
    overrides = _dump_overrides(args)
    loaded = _load(args)
    pid_file = claim_pid_file(args)
    keylog = _start_outputs(args, log, loaded, overrides)
    options = {"overrides": overrides, "splice": _splice_wanted(), "keylog": keylog}
    if args.workers > 1:
        return Supervisor(loaded.config, Path(args.config), log, args.workers, pid_file=pid_file, **options).run()
    return _serve(Server(loaded.config, log, config_path=Path(args.config), **options), pid_file)


def _serve(server: Server, pid_file: PidFile | None) -> int:
    server.bind()
    with written(pid_file, server.close):
        server.serve()
    return 0


def _check(args: argparse.Namespace, _log: EventLog) -> int:
    config = _load(args).config
    routes = sum(len(listener.routes) for listener in config.listeners)
    print(
        f"{args.config}: OK: {_count(len(config.listeners), 'listener')}, {_count(routes, 'route')}, "
        f"{_count(len(config.upstreams), 'upstream')}"
    )
    return 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _echo(args: argparse.Namespace, log: EventLog) -> int:
    serve_echo(args.listen, log)
    return 0


_COMMANDS = {"run": _run, "check": _check, "route": _route, "forward": _forward, "echo": _echo, "ctl": _ctl}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = EventLog(args.log_level, args.log_format)
    try:
        return _COMMANDS[args.command](args, log)
    except ConfigError as exc:
        for message in exc.messages:
            print(message, file=sys.stderr)
        return exc.exit_status
    except ProxyError as exc:
        print(f"pairproxy: {exc}", file=sys.stderr)
        return exc.exit_status
    except Exception as exc:
        if log.debugging:
            raise
        print(f"pairproxy: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        log.output.flush()  # what a stalled stderr still holds, for at most FLUSH_TIMEOUT
