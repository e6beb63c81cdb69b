"""What a Server holds of DNS: each load's Discovery (proxy/serve/discovery.py), the last one
handing its answers and its DNS client over to the next, at no cost for tables that follow no
name: dnspython (a tenth of a second to import) is imported once a pool follows DNS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.config.schema import ResolversConfig
from proxy.log import EventLog
from proxy.loop.reactor import Reactor
from proxy.policy.upstreams import Pool

if TYPE_CHECKING:
    from proxy.serve.discovery import Discovery


class DnsFollowing:
    """The Discovery in force, if a pool follows DNS."""

    def __init__(self, reactor: Reactor, log: EventLog) -> None:
        self.reactor = reactor
        self.log = log
        self.discovery: Discovery | None = None

    def follow(self, settings: ResolversConfig, pools: dict[str, Pool]) -> None:
        """Watch the names of a load's `pools`, taking over from the last load's watches. The DNS
        client is made when a first pool needs it and again when `resolvers:` changes."""
        wanted = any(pool.config.from_dns for pool in pools.values())
        previous, self.discovery = self.discovery, None
        if previous is None and not wanted:
            return
        from proxy.loop.dns import DnsClient
        from proxy.serve.discovery import Discovery, nameservers

        client = None
        if previous is not None:
            previous.stop()
            if previous.settings == settings and wanted:
                client = previous.client
            else:
                previous.client.close()
        if not wanted:
            return
        if client is None:
            client = DnsClient(self.reactor, nameservers(settings), settings.timeout, settings.attempts)
        self.discovery = Discovery(self.reactor, client, settings, pools, self.log, previous)

    def rows(self) -> list[dict]:
        """The snapshot's `dns`: a row per name followed."""
        return [] if self.discovery is None else self.discovery.rows()

    def queries(self) -> dict[str, int]:
        """The snapshot's `dns_queries`: tries by outcome."""
        return {} if self.discovery is None else dict(self.discovery.client.results)

    def close(self) -> None:
        if self.discovery is not None:
            self.discovery.close()
