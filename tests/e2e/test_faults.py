"""End to end: toxics (`--fault`, `faults:` in YAML) between real loopback clients and servers."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time

import pytest

from proxy.config.loader import load_config
from tests.support import (
    WAIT,
    PeakRss,
    client_context,
    connect,
    echo_handler,
    echo_through,
    listener_address,
    pattern,
    recv_all,
    recv_digest,
    recv_exactly,
    run_cli,
    server_context,
    serving,
    sink_handler,
    source_handler,
    tls_connect,
    tls_upstream,
    wait_until,
    write,
)

KiB = 1024
MiB = 1024 * KiB


def _round_trip(address: tuple[str, int], data: bytes) -> tuple[bytes, float]:
    """Send `data`, half-close, read to the end: (what came back, seconds it took)."""
    with connect(address) as client:
        started = time.monotonic()
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        reply = recv_all(client)
        return reply, time.monotonic() - started


def test_latency_delays_each_answer_and_keeps_the_bytes(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--fault", "latency:latency=300ms,jitter=50ms")
    with connect(proxy.address) as client:
        for round_ in range(3):
            started = time.monotonic()
            client.sendall(b"ping %d" % round_)
            assert client.recv(100) == b"ping %d" % round_
            assert 0.2 <= time.monotonic() - started < 2.0
    line = proxy.wait_access()[0]
    assert line["faults"] == "latency"
    assert line["result"] == "closed"


def test_latency_on_the_upstream_stream_and_order_kept(start_proxy, start_upstream):
    upstream = start_upstream(sink_handler)
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address, "--fault", "latency:latency=20ms,jitter=20ms,stream=upstream"
    )
    data = pattern(2 * MiB, seed=3)
    reply, _ = _round_trip(proxy.address, data)
    assert reply.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}\n"


def test_bandwidth_paces_the_download(start_proxy, start_upstream):
    size = 256 * KiB
    upstream = start_upstream(source_handler(size))
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--fault", "bandwidth:rate=256KiB")
    with connect(proxy.address) as client:
        started = time.monotonic()
        total, digest = recv_digest(client)
        took = time.monotonic() - started
    assert (total, digest) == (size, hashlib.sha256(pattern(size)).hexdigest())
    assert 0.7 <= took < 3.0, took  # about 1 s at 256 KiB/s
    assert proxy.wait_access()[0]["faults"] == "bandwidth"


def test_bandwidth_holds_memory_whatever_the_producer_pushes(start_proxy, start_upstream):
    size = 64 * MiB
    upstream = start_upstream(source_handler(size))
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address, "--buffer-size", "256KiB", "--fault", "bandwidth:rate=64KiB"
    )
    with connect(proxy.address) as client, PeakRss(proxy.pid) as rss:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        received = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            received += len(client.recv(65536))
        assert received < 2 * MiB  # paced: nowhere near what the server pushes
    assert rss.growth < 16 * 1024, f"RSS grew by {rss.growth} KiB"


def test_slicer_cuts_chunks_into_small_writes(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address, "--fault", "slicer:average_size=4,size_variation=2,delay=20ms"
    )
    with connect(proxy.address) as client:
        client.sendall(b"0123456789abcdefghijklmnopqrstuv")
        reads = []
        got = b""
        while len(got) < 32:
            piece = client.recv(100)
            assert piece
            reads.append(piece)
            got += piece
    assert got == b"0123456789abcdefghijklmnopqrstuv"
    assert len(reads) >= 5  # 32 bytes in slices of 2..6, 20 ms apart
    assert proxy.wait_access()[0]["faults"] == "slicer"


def test_slow_close_delays_the_end(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--fault", "slow_close:delay=600ms")
    reply, took = _round_trip(proxy.address, b"bye")
    assert reply == b"bye"
    assert 0.5 <= took < 3.0


def test_timeout_stops_data_and_closes_after_it(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--fault", "timeout:timeout=500ms")
    with connect(proxy.address) as client:
        started = time.monotonic()
        client.sendall(b"hello")
        assert recv_all(client) == b""  # nothing came back; then the close
        assert 0.4 <= time.monotonic() - started < 3.0
    line = proxy.wait_access()[0]
    assert (line["result"], line["reason"], line["faults"]) == ("timeout", "fault: timeout", "timeout")
    assert (line["bytes_up"], line["bytes_down"]) == ("5", "0")  # the echo was read, and held: never delivered


def test_reset_peer_resets_both_sides(start_proxy, start_upstream):
    seen = []

    def server(conn: socket.socket) -> None:
        try:
            conn.recv(100)
            conn.recv(100)
        except ConnectionResetError as exc:
            seen.append(exc)

    upstream = start_upstream(server)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--fault", "reset_peer:timeout=300ms")
    with connect(proxy.address) as client:
        client.sendall(b"x")
        with pytest.raises(ConnectionResetError):
            client.recv(100)
    assert wait_until(lambda: seen)
    line = proxy.wait_access()[0]
    assert (line["result"], line["reason"]) == ("reset", "fault: reset_peer")


def test_limit_data_closes_after_exactly_that_many_bytes(start_proxy, start_upstream):
    upstream = start_upstream(source_handler(MiB))
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--fault", "limit_data:bytes=10KiB")
    with connect(proxy.address) as client:
        data = recv_all(client)
    assert data == pattern(MiB)[: 10 * KiB]
    line = proxy.wait_access()[0]
    assert (line["result"], line["reason"], line["bytes_down"]) == ("limit", "fault: limit_data", str(10 * KiB))


def test_toxicity_applies_to_about_that_share(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--fault", "latency:latency=0,toxicity=0.5")
    for _ in range(200):
        reply, _ = _round_trip(proxy.address, b"x")
        assert reply == b"x"
    lines = proxy.wait_access(200)
    faulted = sum(line.get("faults") == "latency" for line in lines)
    assert 50 <= faulted <= 150


def test_no_fault_no_field(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address)
    assert _round_trip(proxy.address, b"x")[0] == b"x"
    assert "faults" not in proxy.wait_access()[0]


def test_hexdump_shows_the_slices_as_delivered(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(
        "forward",
        "127.0.0.1:0",
        upstream.address,
        "--hexdump",
        "--fault",
        "slicer:average_size=4,size_variation=0,delay=1ms",
    )
    assert _round_trip(proxy.address, b"0123456789ab")[0] == b"0123456789ab"
    proxy.wait_access()
    assert wait_until(lambda: "close result=closed" in proxy.stdout())
    chunks = re.findall(r" upstream->client offset=(\d+) len=(\d+) ", proxy.stdout())
    assert chunks == [("0", "4"), ("4", "4"), ("8", "4")]


def test_route_faults_add_to_the_listener_s(start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    config = tmp_path / "faults.yaml"
    config.write_text(
        f"""
listeners:
  - listen: 127.0.0.1:0
    faults:
      - {{type: latency, latency: 10ms}}
    routes:
      - upstream: {upstream.address}
        faults:
          - {{type: slicer, average_size: 2, delay: 1ms}}
"""
    )
    proxy = start_proxy("run", "-c", str(config))
    assert _round_trip(proxy.address, b"abcdef")[0] == b"abcdef"
    assert proxy.wait_access()[0]["faults"] == "latency,slicer"


def test_bad_faults_in_yaml_are_located(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        """listeners:
  - listen: 127.0.0.1:0
    upstream: 127.0.0.1:9
    faults:
      - {type: latncy, latency: 1s}
      - {type: bandwidth, rat: 1KiB}
      - {type: latency, toxicity: 1.5}
"""
    )
    result = run_cli(["check", "-c", str(config)])
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{config}:5:16: type: unknown fault type 'latncy' (did you mean 'latency'?)")
    assert lines[1].startswith(f"{config}:6:27: unknown key 'rat' for a bandwidth fault (did you mean 'rate'?)")
    assert lines[2] == f"{config}:7:35: toxicity: must be a chance from 0 to 1, got 1.5"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("latncy:latency=1s", "unknown fault type 'latncy' (did you mean 'latency'?)"),
        ("latency:latency", "'latency' is not KEY=VALUE"),
        ("bandwidth:stream=upstream", "a bandwidth fault needs 'rate'"),
        ("latency:stream=sideways", "'sideways' is not upstream or downstream"),
    ],
)
def test_bad_fault_flags_are_usage_errors(spec, message):
    result = run_cli(["forward", "127.0.0.1:0", "127.0.0.1:9", "--fault", spec])
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_upload_through_many_toxics_arrives_whole(start_proxy, start_upstream):
    upstream = start_upstream(sink_handler)
    proxy = start_proxy(
        "forward",
        "127.0.0.1:0",
        upstream.address,
        "--fault",
        "bandwidth:rate=4MiB,stream=upstream",
        "--fault",
        "latency:latency=5ms,stream=upstream",
        "--fault",
        "slicer:average_size=16KiB,size_variation=1KiB,stream=upstream",
    )
    data = pattern(MiB, seed=5)
    reply, _ = _round_trip(proxy.address, data)
    assert reply.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}\n"
    assert proxy.wait_access()[0]["faults"] == "bandwidth,latency,slicer"


def _on_loop(server, call, *args):
    """`call(*args)` run on the server's loop thread, as the admin socket would: its result or its exception."""
    done = threading.Event()
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(("ok", call(*args)))
        except ValueError as exc:
            outcome.append(("error", str(exc)))
        done.set()

    server.reactor.call_soon_threadsafe(run)
    assert done.wait(WAIT)
    return outcome[0]


def test_faults_added_and_removed_at_run_time_apply_to_new_connections(tmp_path, start_upstream):
    upstream = start_upstream(echo_handler)
    path = write(
        tmp_path,
        f"""\
        listeners:
          - name: web
            listen: 127.0.0.1:0
            routes:
              - {{name: api, upstream: "{upstream.address}"}}
        """,
    )
    with serving(load_config(path).config) as (server, lines):
        address = listener_address(server)
        assert _round_trip(address, b"a")[0] == b"a"
        assert _on_loop(server, server.add_fault, "api", "latency:latency=200ms") == (
            "ok",
            "api: added latency:latency=200ms,jitter=0ms,stream=downstream",
        )
        assert _on_loop(server, server.add_fault, "web", "slicer:average_size=1") == (
            "ok",
            "web: added slicer:average_size=1,size_variation=0,delay=0ms,stream=downstream",
        )
        assert _on_loop(server, server.list_faults) == (
            "ok",
            [
                "web: slicer:average_size=1,size_variation=0,delay=0ms,stream=downstream",
                "api: latency:latency=200ms,jitter=0ms,stream=downstream",
            ],
        )
        reply, took = _round_trip(address, b"b")
        assert reply == b"b" and took >= 0.15
        assert _on_loop(server, server.remove_fault, "api", "latency") == ("ok", "api: removed 1 latency fault")
        assert _round_trip(address, b"c")[0] == b"c"
        assert wait_until(lambda: len(lines.events("access")) == 3)
        assert [line.get("faults") for line in lines.events("access")] == [None, "slicer,latency", "slicer"]
        assert _on_loop(server, server.add_fault, "ap", "latency:latency=1s") == (
            "error",
            "no listener or route named 'ap' (did you mean 'api'?)",
        )
        assert _on_loop(server, server.add_fault, "api", "latncy:latency=1s")[0] == "error"
        assert _on_loop(server, server.remove_fault, "api", "latency") == ("error", "api has no latency fault")


def test_run_fault_applies_to_every_listener(start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    path = write(
        tmp_path,
        f"""\
        listeners:
          - {{name: a, listen: "127.0.0.1:0", upstream: "{upstream.address}"}}
          - {{name: b, listen: "127.0.0.1:0", upstream: "{upstream.address}"}}
        """,
    )
    proxy = start_proxy("run", "-c", str(path), "--fault", "latency:latency=200ms", wait_listening=2)
    for name in ("a", "b"):
        reply, took = _round_trip(proxy.listener_address(name), b"x")
        assert reply == b"x" and took >= 0.15
    assert [line["faults"] for line in proxy.wait_access(2)] == ["latency", "latency"]


def test_toxics_both_ways_between_tls_sides(pki, start_proxy, start_upstream):
    upstream = start_upstream(tls_upstream(server_context(pki, "upstream"), b"hi:"))
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address,
        "--tls-cert", pki["proxy.pem"], "--tls-key", pki["proxy.key"],
        "--upstream-tls", "--upstream-ca", pki["ca"], "--upstream-server-name", "upstream.test",
        "--fault", "slicer:average_size=1000,size_variation=500,stream=upstream",
        "--fault", "bandwidth:rate=1MiB",
    )  # fmt: skip
    data = pattern(256 * KiB, seed=9)
    with tls_connect(proxy.address, client_context(pki), "proxy.test") as client:
        assert recv_exactly(client, 3) == b"hi:"
        started = time.monotonic()
        assert echo_through(client, data, step=64 * KiB) == data
        assert time.monotonic() - started >= 0.15  # 256 KiB at 1 MiB/s
    assert proxy.wait_access()[0]["faults"] == "slicer,bandwidth"


def _push(client: socket.socket, data: bytes) -> int:
    """Send what the connection takes without blocking: the byte count."""
    client.setblocking(False)
    sent = 0
    try:
        while sent < len(data):
            sent += client.send(data[sent:])
    except BlockingIOError:
        pass
    return sent


@pytest.mark.parametrize(
    "toxic",
    [
        "type: slicer, average_size: 1, delay: 1s",  # a byte a second
        "type: bandwidth, rate: 4",  # a byte every 250 ms
        "type: slicer, average_size: 1",  # a chunk in one-byte pieces, all due at once
    ],
)
def test_a_slow_toxic_holds_its_bytes_at_their_cost_and_never_stalls_the_loop(
    toxic, start_upstream, start_proxy, tmp_path
):  # the proxy, which holds the sink's connections open, is stopped before the servers
    path = write(
        tmp_path,
        f"""\
        listeners:
          - name: slow
            listen: 127.0.0.1:0
            upstream: "{start_upstream(sink_handler).address}"
            faults: [{{{toxic}, stream: upstream}}]
          - {{name: plain, listen: "127.0.0.1:0", upstream: "{start_upstream(echo_handler).address}"}}
        """,
    )
    proxy = start_proxy("run", "-c", str(path), wait_listening=2)
    data = pattern(256 * KiB, seed=11)
    echoes = []
    with PeakRss(proxy.pid) as rss, connect(proxy.listener_address("plain")) as plain:
        clients = [connect(proxy.listener_address("slow")) for _ in range(3)]
        try:
            for client in clients:
                assert _push(client, data) > 0
            for round_ in range(5):  # while the toxic holds what the three clients pushed
                started = time.monotonic()
                plain.sendall(b"%d" % round_)
                assert plain.recv(1) == b"%d" % round_
                echoes.append(time.monotonic() - started)
                time.sleep(0.1)
        finally:
            for client in clients:
                client.close()
    assert rss.growth < 16 * 1024, f"RSS grew by {rss.growth} KiB"
    assert max(echoes) < 0.5, f"one-byte echoes took {', '.join(f'{took:.2f}' for took in echoes)} s"
