"""Configuration as a test writes it: a YAML file in the test's folder, a pool of servers."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

from proxy.config.schema import ServerConfig, UpstreamConfig
from proxy.config.units import Address
from proxy.policy.upstreams import Pool

REPOSITORY = Path(__file__).resolve().parents[2]  # the checkout: bench/, config/ beside tests/


def write(tmp_path: Path, text: str, name: str = "pairproxy.yaml") -> Path:
    """`text`, dedented, as the file `name` in `tmp_path`."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def pool(*servers: int | tuple[int, int] | tuple[int, int, bool], balance="round_robin", retries=2, **kwargs) -> Pool:
    """Servers as a port, (port, weight) or (port, weight, backup)."""
    configs = []
    for server in servers:
        port, weight, backup = (*server, 1, False)[:3] if isinstance(server, tuple) else (server, 1, False)
        configs.append(ServerConfig(Address("127.0.0.1", port), weight, backup))
    config = UpstreamConfig("p", tuple(configs), balance=balance, retries=retries, **kwargs)
    return Pool(config, random.Random(7))


def ports(servers) -> list[int]:
    return [server.address.port for server in servers]
