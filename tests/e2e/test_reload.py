"""End to end: what SIGHUP keeps (server health, open connections' table) and that it is all or nothing."""

from __future__ import annotations

import socket
import time

from proxy.policy.upstreams import PASSIVE_DOWN_FIRST
from tests.support import ask, connect, echo_handler, free_port, pool, recv_exactly, reload, tagged, write


def test_reload_keeps_least_conn_counts_of_unchanged_servers(tmp_path, start_proxy, start_upstream):
    one, two = start_upstream(tagged(b"one:")), start_upstream(tagged(b"two:"))
    text = f"""\
        upstreams:
          app: {{balance: least_conn, servers: ["{one.address}", "{two.address}"]}}
        listeners:
          - {{listen: "127.0.0.1:0", upstream: app}}
        """
    path = write(tmp_path, text)
    proxy = start_proxy("run", "-c", str(path))
    with connect(proxy.address) as first:
        assert recv_exactly(first, 4) == b"one:"
        reload(proxy, 1)
        with connect(proxy.address) as second:
            # The open connection to `one` still counts: the next client goes to `two`.
            assert recv_exactly(second, 4) == b"two:"
            first.close()
            proxy.wait_access(1)
            # The connection opened before the reload ended on the server it counted on.
            assert ask(proxy.address)[:4] == b"one:"


def test_reload_keeps_a_dead_server_down(tmp_path, start_proxy, start_upstream):
    alive = start_upstream(tagged(b"alive:"))
    dead = free_port()
    path = write(
        tmp_path,
        f"""\
        upstreams:
          app:
            balance: first
            servers: ["127.0.0.1:{dead}", "{alive.address}"]
            health_check: {{interval: 60s, fall: 1, rise: 1}}
        listeners:
          - {{listen: "127.0.0.1:0", upstream: app}}
        """,
    )
    proxy = start_proxy("run", "-c", str(path))
    proxy.wait_for("server_down")
    reload(proxy, 1)
    assert ask(proxy.address)[:6] == b"alive:"
    time.sleep(0.3)  # a new health checker checks at once: it must find the server already down
    log = proxy.log_text()
    assert log.count(" server_down ") == 1, log
    assert " connect_failed " not in log


def test_a_reload_that_cannot_bind_changes_nothing(tmp_path, start_proxy, start_upstream):
    old, new = start_upstream(tagged(b"old:")), start_upstream(tagged(b"new:"))
    kept_port, removed_port = free_port(), free_port()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    before = f"""\
        listeners:
          - {{name: kept, listen: "127.0.0.1:{kept_port}", upstream: "{old.address}"}}
          - {{name: removed, listen: "127.0.0.1:{removed_port}", upstream: "{old.address}"}}
        """
    after = f"""\
        listeners:
          - {{name: kept, listen: "127.0.0.1:{kept_port}", upstream: "{new.address}"}}
          - {{name: busy, listen: "127.0.0.1:{busy_port}", upstream: "{new.address}"}}
        """
    path = write(tmp_path, before)
    proxy = start_proxy("run", "-c", str(path), wait_listening=2)
    with busy:
        write(tmp_path, after)
        reload(proxy, 1)
        line = proxy.wait_for("reload_failed")
        assert f'error="cannot listen on 127.0.0.1:{busy_port}: address already in use"' in line
        assert ask(("127.0.0.1", kept_port), b"k") == b"old:k"
        assert ask(("127.0.0.1", removed_port), b"r") == b"old:r"
        assert " reloaded " not in proxy.log_text()
    # The address is free again: the same file now loads whole.
    reload(proxy, 2)
    proxy.wait_for("reloaded")
    assert ask(("127.0.0.1", busy_port), b"b") == b"new:b"
    assert ask(("127.0.0.1", kept_port), b"k") == b"new:k"


def test_a_connection_waiting_for_its_proxy_header_keeps_the_table_it_was_accepted_under(
    tmp_path, start_proxy, start_upstream
):
    upstream = start_upstream(echo_handler)
    port = free_port()
    before = f"""\
        listeners:
          - listen: "127.0.0.1:{port}"
            accept_proxy_protocol: true
            routes:
              - {{match: {{source: [10.0.0.0/8]}}, upstream: "{upstream.address}"}}
              - {{upstream: "127.0.0.1:{free_port()}"}}
        """
    path = write(tmp_path, before)
    proxy = start_proxy("run", "-c", str(path))
    after = f"""\
        listeners:
          - {{listen: "127.0.0.1:{port}", upstream: "127.0.0.1:{free_port()}"}}
        """
    with connect(proxy.address) as client:
        client.sendall(b"PROXY TCP4 10.1.2.3 127.0.0.1 5000 ")
        time.sleep(0.1)  # the proxy has read the start of the header
        write(tmp_path, after)
        reload(proxy, 1)
        client.sendall(b"80\r\nhello")
        assert recv_exactly(client, 5) == b"hello"
    (access,) = proxy.wait_access(1)
    assert access["result"] == "closed", proxy.log_text()
    assert access["route"] == "0"
    assert access["client"] == "10.1.2.3:5000"


def test_a_reloaded_pool_takes_over_the_state_of_servers_at_unchanged_addresses():
    old = pool(9001, 9002, (9003, 2), balance="least_conn")
    kept, gone, reweighted = old.servers
    old.connect_failed(kept, now=0.0)
    old.connect_failed(kept, now=2.0)  # a second failure in a row: the back-off has doubled
    old.check_result(reweighted, False)  # one failed check of the `fall` needed
    old.connection_started(reweighted)
    old.candidates("10.0.0.1", now=10.0)  # moves the smooth round robin weights
    weights = (kept.current_weight, reweighted.current_weight)

    new = pool((9003, 5), 9001, 9004, balance="least_conn")
    new.take_over(old)
    assert [server.address.port for server in new.servers] == [9003, 9001, 9004]
    assert new.servers[1] is kept and new.servers[0] is reweighted
    assert (kept.backoff, kept.down_until) == (2 * PASSIVE_DOWN_FIRST, 2.0 + 2 * PASSIVE_DOWN_FIRST)
    assert (reweighted.check_streak, reweighted.active, reweighted.weight) == (1, 1, 5)
    assert (kept.current_weight, reweighted.current_weight) == weights
    assert (kept.index, reweighted.index) == (1, 0)
    assert new.servers[2].active == 0 and new.servers[2] not in old.servers
    # A connection opened before the reload ends on the counter the new pool balances by.
    old.connection_ended(reweighted)
    assert new.servers[0].active == 0
    assert gone not in new.servers
