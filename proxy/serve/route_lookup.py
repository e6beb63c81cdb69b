"""`pairproxy route` with the servers DNS gives now: the pools of a table that follow DNS looked
up once, on a reactor of their own, by the same client and watches a running proxy uses.

The lookup is bounded by the `resolvers:` timeouts (every nameserver, every attempt, for the name
and then for SRV targets); a name that failed is said in the plan (`DNS: ...`), its pool left as
it is before any answer.
"""

from __future__ import annotations

import io

from proxy.config.schema import Config
from proxy.log import EventLog
from proxy.loop.reactor import Reactor
from proxy.policy.upstreams import Pool

POLL = 0.01  # seconds between looks at whether every name has answered


def discovered(config: Config) -> dict[str, tuple[Pool, tuple[str, ...]]]:
    """Each pool of `config` that follows DNS, as one lookup of its names finds it, and what DNS
    said of each name."""
    pools = {name: Pool(upstream) for name, upstream in config.upstreams.items() if upstream.from_dns}
    if not pools:
        return {}
    # Imported here, as the server does: dnspython is for tables with a pool from DNS only.
    from proxy.loop.dns import DnsClient
    from proxy.serve.discovery import Discovery, nameservers

    settings = config.resolvers
    reactor = Reactor(EventLog("error", stream=io.StringIO()))
    servers = nameservers(settings)
    client = DnsClient(reactor, servers, settings.timeout, settings.attempts)
    discovery = Discovery(reactor, client, settings, pools, reactor.log)
    watches = discovery.watches

    def look() -> None:
        if all(watch.answered_at is not None or watch.failure for watch in watches):
            reactor.stop()
        else:
            reactor.call_later(POLL, look)

    # A name, then its SRV targets: two rounds of every try at most.
    reactor.call_later(2 * settings.timeout * settings.attempts * len(servers) + 1, reactor.stop)
    reactor.call_later(0, look)
    try:
        reactor.loop()
    finally:
        discovery.stop()
        client.close()
        reactor.close()
    said: dict[str, list[str]] = {name: [] for name in pools}
    for row in discovery.rows():
        found = f"{row['servers']} server{'' if row['servers'] == 1 else 's'}"
        what = f"failed: {row['reason']}" if row["reason"] else "no answer in time" if row["age"] is None else found
        said[row["upstream"]].append(f"{row['name']} ({'SRV' if row['type'] == 'srv' else 'A/AAAA'}): {what}")
    return {name: (pool, tuple(said[name])) for name, pool in pools.items()}
