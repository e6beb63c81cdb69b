"""Whether a connection is to be dumped: its `dump_only` conditions against what is known of it.

Pure. A connection's facts arrive one by one (its listener and id at accept, its route and
client once routed, its servers once connected), so the verdict is three-valued: False as soon
as a condition about a known fact fails, None while one about a fact not yet known is left,
True when all hold.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.config.dumping import canonical_server
from proxy.config.schema import DumpCondition
from proxy.config.units import Address, IPAddress, IPNetwork


class Unknown:
    """The type of UNKNOWN: a fact of the connection not known yet."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = Unknown()


def holds(
    conditions: Sequence[DumpCondition],
    *,
    conn: int,
    listener: str,
    route: str | int | Unknown | None = UNKNOWN,
    client: IPAddress | Unknown | None = UNKNOWN,
    servers: tuple[Address, ...] | Unknown = UNKNOWN,
) -> bool | None:
    """True when every condition holds, False when one fails, else None (one needs an unknown fact).

    `route` is the route's name, its index when it has none, or None when the connection was not
    routed; `client` None means it has no address (the condition fails); `servers` are the
    addresses that name the server used (as configured, and as connected to), none if none was.
    """
    verdict: bool | None = True
    for condition in conditions:
        if condition.key == "conn":
            held: bool | None = conn == condition.value
        elif condition.key == "listener":
            held = listener == condition.value
        elif condition.key == "route":
            held = None if isinstance(route, Unknown) else route is not None and str(route) == condition.value
        elif condition.key == "client":
            held = None if isinstance(client, Unknown) else _client_in(client, condition.value)
        else:
            held = None if isinstance(servers, Unknown) else _server_among(servers, condition.value)
        if held is False:
            return False
        if held is None:
            verdict = None
    return verdict


def _client_in(client: IPAddress | None, network: IPNetwork) -> bool:
    if client is None:
        return False
    if client.version == 6 and client.ipv4_mapped is not None:
        client = client.ipv4_mapped
    return client.version == network.version and client in network


def _server_among(servers: tuple[Address, ...], wanted: Address) -> bool:
    return any(canonical_server(server) == wanted for server in servers)
