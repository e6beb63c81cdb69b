"""`pairproxy route`: its arguments, and the explanation of one described client printed.

The client is described by its address, and by what it sends first: in words (`--protocol`,
`--alpn`, `--host`, `--sni`) or as the bytes themselves (`--first-bytes HEX`, read by the same
detectors a listener runs). The decision and its reasons come from proxy/policy/explain.py.
"""

from __future__ import annotations

import argparse
import json

from proxy.config.schema import MATCH_PROTOCOLS, Config
from proxy.errors import UsageError
from proxy.policy import explain
from proxy.protocol.detect import FirstBytes
from proxy.serve.route_lookup import discovered


def add_parser(commands: argparse._SubParsersAction) -> None:
    route = commands.add_parser(
        "route",
        help="explain where a client would go",
        description="Explain what the table in FILE decides for a client of LISTENER, and why.",
    )
    route.add_argument("-c", "--config", default="pairproxy.yaml", metavar="FILE", help="default: pairproxy.yaml")
    route.add_argument(
        "--listener", required=True, metavar="NAME", help="a listener's name (its address when it has none)"
    )
    route.add_argument("--client", metavar="IP[:PORT]", help="the client's address (default: left undecided)")
    route.add_argument("--sni", metavar="NAME", help="the server name the client sends")
    route.add_argument("--protocol", choices=MATCH_PROTOCOLS, help="the protocol the client speaks")
    route.add_argument("--alpn", action="append", metavar="NAME", help="an ALPN protocol the client offers; repeatable")
    route.add_argument("--host", metavar="NAME", help="the Host of the client's plain HTTP request")
    route.add_argument(
        "--first-bytes", metavar="HEX", help="what the client sends first, in hex (instead of describing it)"
    )
    route.add_argument("--json", action="store_true", help="one JSON object instead of text")


def run(args: argparse.Namespace, config: Config) -> int:
    listeners = {explain.listener_name(listener): listener for listener in config.listeners}
    listener = listeners.get(args.listener)
    if listener is None:
        raise UsageError(f"no listener {args.listener!r} in {args.config}; listeners: {', '.join(listeners)}")
    client, port = None, None
    if args.client is not None:
        try:
            client, port = explain.parse_client(args.client)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    first = _first_bytes(args)
    # with the servers DNS gives now
    result = explain.explain(listener, config.upstreams, client, port, first=first, discovered=discovered(config))
    print(json.dumps(result.to_json()) if args.json else explain.render_text(result))
    return 0


def _first_bytes(args: argparse.Namespace) -> explain.ClientBytes:
    """The client's first bytes, from --first-bytes, else as described by the other options."""
    described = [f"--{key}" for key in ("protocol", "alpn", "host", "sni") if getattr(args, key) is not None]
    if args.first_bytes is None:
        host = None if args.host is None else args.host.lower().rpartition(":")[0] or args.host.lower()
        return explain.Described(args.protocol, tuple(args.alpn or ()), host, args.sni)
    if described:
        raise UsageError(f"--first-bytes says what the client sends: give it or {', '.join(described)}, not both")
    try:
        data = bytes.fromhex(args.first_bytes)
    except ValueError:
        raise UsageError(f"--first-bytes: {args.first_bytes[:40]!r} is not hex (pairs of hex digits)") from None
    return FirstBytes(data, final=True)
