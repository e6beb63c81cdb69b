"""Fixtures that start real processes and servers and always stop them."""

from __future__ import annotations

import pytest

from tests.support import ProxyProcess, Upstream


@pytest.fixture(params=["splice", "copy"])
def data_path(request):
    """Run a test both ways bytes can move: spliced in the kernel, and copied through Python."""
    return request.param


@pytest.fixture
def proxy_env():
    """Environment for the proxies a test starts; test modules may override this fixture."""
    return {}


@pytest.fixture
def start_proxy(tmp_path, proxy_env):
    """start_proxy(*args, **kw) -> ProxyProcess; every process is killed at teardown."""
    started: list[ProxyProcess] = []

    def start(*args: str, **kwargs) -> ProxyProcess:
        kwargs.setdefault("env", proxy_env)
        proc = ProxyProcess(args, tmp_path, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def start_upstream():
    """start_upstream(handler, host=...) -> Upstream; closed at teardown."""
    started: list[Upstream] = []

    def start(handler, host: str = "127.0.0.1") -> Upstream:
        server = Upstream(handler, host)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()
