"""End to end: `pairproxy forward` in a subprocess between real loopback clients and servers."""

from __future__ import annotations

import contextlib
import hashlib
import re
import resource
import socket
import struct
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from proxy.protocol.hexdump import parse_dump_line
from tests.support import (
    WAIT,
    connect,
    echo_handler,
    free_port,
    logfmt,
    pattern,
    recv_all,
    recv_digest,
    recv_exactly,
    sink_handler,
    source_handler,
    splicing,
    wait_until,
)


@pytest.fixture
def proxy_env(data_path):
    """Every test here runs with splicing on and with it off."""
    return splicing(data_path)


MiB = 1024 * 1024


def _rst_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("size", [1, 64 * 1024, 200 * MiB], ids=["1B", "64KiB", "200MiB"])
def test_upload_arrives_whole(start_proxy, start_upstream, size):
    upstream = start_upstream(sink_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address)
    data = pattern(size, seed=size)
    with connect(proxy.address, timeout=60) as client:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        reply = recv_all(client).decode()
    assert reply == f"{size} {hashlib.sha256(data).hexdigest()}\n"
    (access,) = proxy.wait_access(1)
    assert access["result"] == "closed"
    assert access["bytes_up"] == str(size)


@pytest.mark.parametrize("size", [1, 64 * 1024, 200 * MiB], ids=["1B", "64KiB", "200MiB"])
def test_download_arrives_whole(start_proxy, start_upstream, size):
    upstream = start_upstream(source_handler(size))
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address)
    with connect(proxy.address, timeout=60) as client:
        received = recv_digest(client)
    assert received == (size, hashlib.sha256(pattern(size)).hexdigest())
    (access,) = proxy.wait_access(1)
    assert access["bytes_down"] == str(size)


def test_five_hundred_concurrent_connections_each_get_their_own_bytes(start_proxy):
    echo = start_proxy("echo", "127.0.0.1:0")
    proxy = start_proxy("forward", "127.0.0.1:0", echo.addresses[0])
    clients = [connect(proxy.address) for _ in range(500)]
    try:
        payloads = [pattern(8192, seed=i) for i in range(len(clients))]
        for client, payload in zip(clients, payloads, strict=True):
            client.sendall(payload)
        for client, payload in zip(clients, payloads, strict=True):
            assert recv_exactly(client, len(payload)) == payload
    finally:
        for client in clients:
            client.close()
    lines = proxy.wait_access(500, timeout=30)
    assert {line["result"] for line in lines} == {"closed"}


def test_client_half_close_still_gets_the_reply(start_proxy, start_upstream):
    upstream = start_upstream(sink_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address)
    with connect(proxy.address) as client:
        client.sendall(b"question")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == f"8 {hashlib.sha256(b'question').hexdigest()}\n".encode()


def test_upstream_half_close_lets_the_client_keep_sending(start_proxy, start_upstream):
    received = []

    def greet_then_listen(conn):
        conn.sendall(b"hello")
        conn.shutdown(socket.SHUT_WR)
        received.append(recv_all(conn))

    upstream = start_upstream(greet_then_listen)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address)
    with connect(proxy.address) as client:
        assert recv_all(client) == b"hello"  # EOF from the upstream reached the client
        client.sendall(b"still talking")
        client.shutdown(socket.SHUT_WR)
        assert client.recv(1) == b""
    assert wait_until(lambda: received == [b"still talking"])
    assert proxy.wait_access(1)[0]["result"] == "closed"


def test_client_reset_resets_the_upstream(start_proxy, start_upstream):
    seen = []

    def record(conn):
        try:
            seen.append(recv_all(conn))
        except ConnectionResetError:
            seen.append("reset")

    upstream = start_upstream(record)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address)
    client = connect(proxy.address)
    client.sendall(b"x")
    assert wait_until(lambda: upstream.accepted == 1)
    time.sleep(0.1)
    _rst_close(client)
    assert wait_until(lambda: seen == ["reset"])
    access = proxy.wait_access(1)[0]
    assert access["result"] == "reset"
    assert access["reason"].startswith("client:")


def test_upstream_reset_resets_the_client(start_proxy, start_upstream):
    def reset_after_greeting(conn):
        conn.sendall(b"bye")
        time.sleep(0.2)
        _rst_close(conn)

    upstream = start_upstream(reset_after_greeting)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address)
    with connect(proxy.address) as client:
        assert recv_exactly(client, 3) == b"bye"
        with pytest.raises(ConnectionResetError):
            client.recv(1)
    assert proxy.wait_access(1)[0]["result"] == "reset"


def test_an_answer_the_upstream_sent_before_its_reset_reaches_the_client(start_proxy, start_upstream):
    """An upstream answers and closes with the request unread: its kernel sends the answer, then a
    reset, and the proxy may see both in one wake-up. The client gets the answer, then the reset."""

    def answer_then_reset(conn):
        conn.recv(1)  # the rest of the request stays unread: closing now sends a reset
        conn.sendall(b"413 too large")
        conn.close()

    upstream = start_upstream(answer_then_reset)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address)
    for _ in range(20):
        with connect(proxy.address) as client:
            client.sendall(b"x" * 1000)
            received = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := client.recv(100):
                    received += chunk
            assert received == b"413 too large"


def test_slow_reader_keeps_proxy_memory_bounded(start_proxy, start_upstream):
    """A fast upstream and a stalled client: the proxy holds at most ~2x buffer_size per direction.

    Bound asserted: RSS grows by less than 8 MiB with buffer_size 256KiB while the upstream
    offers 256 MiB; every byte still arrives once the client reads.
    """
    size = 256 * MiB
    upstream = start_upstream(source_handler(size))
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--buffer-size", "256KiB")
    with connect(proxy.address, timeout=60) as warmup:
        warmup.sendall(b"")
    before = proxy.rss_kib()
    with connect(proxy.address, timeout=60) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        time.sleep(1.5)  # the client reads nothing: the upstream pushes as fast as it can
        stalled = proxy.rss_kib()
        received = recv_digest(client)
    assert received == (size, hashlib.sha256(pattern(size)).hexdigest())
    assert stalled - before < 8 * 1024, f"RSS grew from {before} KiB to {stalled} KiB"


def test_refused_upstream_closes_the_client_within_a_second(start_proxy):
    refused = f"127.0.0.1:{free_port()}"
    proxy = start_proxy("forward", "127.0.0.1:0", refused)
    with connect(proxy.address) as client:
        client_address = "{}:{}".format(*client.getsockname())
        started = time.monotonic()
        try:
            assert client.recv(1) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 1.0
    access = proxy.wait_access(1)[0]
    assert access["result"] == "upstream_unreachable"
    assert "refused" in access["reason"]
    assert access["client"] == client_address
    assert (access["bytes_up"], access["bytes_down"]) == ("0", "0")
    assert access.get("server", refused) == refused  # no server was used; if one is named, it is that one
    failed = logfmt(proxy.wait_for("connect_failed"))
    assert (failed["conn"], failed["server"], failed["reason"]) == (access["conn"], refused, "connection refused")


def test_the_first_client_after_the_primary_goes_away_reaches_the_backup(tmp_path, start_proxy, start_upstream):
    backup = start_upstream(source_handler(5))
    primary = f"127.0.0.1:{free_port()}"
    path = tmp_path / "backup.yaml"
    path.write_text(
        f"""\
upstreams:
  pool:
    servers: ["{primary}", {{address: "{backup.address}", backup: true}}]
    retries: 2
listeners:
  - {{listen: "127.0.0.1:0", upstream: pool}}
"""
    )
    proxy = start_proxy("run", "-c", str(path))
    with connect(proxy.address) as client:
        assert recv_all(client) == pattern(5)
    access = proxy.wait_access(1)[0]
    assert (access["result"], access["server"]) == ("closed", backup.address)
    failed = logfmt(proxy.wait_for("connect_failed"))
    assert (failed["conn"], failed["server"]) == (access["conn"], primary)


def test_connect_timeout_gives_up_on_a_silent_server(start_proxy):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    filler = socket.create_connection(silent.getsockname(), timeout=WAIT)  # fills the accept queue
    try:
        upstream = f"127.0.0.1:{silent.getsockname()[1]}"
        proxy = start_proxy("forward", "127.0.0.1:0", upstream, "--connect-timeout", "300ms")
        with connect(proxy.address) as client:
            started = time.monotonic()
            assert client.recv(1) == b""
            assert 0.25 < time.monotonic() - started < 3
        access = proxy.wait_access(1)[0]
        assert access["result"] == "upstream_unreachable"
        assert access["reason"] == "connect timed out"
    finally:
        filler.close()
        silent.close()


def test_idle_connection_is_closed_after_idle_timeout(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--idle-timeout", "300ms")
    with connect(proxy.address) as client:
        started = time.monotonic()
        assert client.recv(1) == b""
        assert 0.25 < time.monotonic() - started < 3
    access = proxy.wait_access(1)[0]
    assert access["result"] == "timeout"


def test_traffic_keeps_a_connection_from_idling_out(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--idle-timeout", "500ms")
    with connect(proxy.address) as client:
        for _ in range(8):  # 1.6 s in all, three times the idle timeout
            client.sendall(b"ping")
            assert recv_exactly(client, 4) == b"ping"
            time.sleep(0.2)
    assert proxy.wait_access(1)[0]["result"] == "closed"


def test_ipv6_loopback(start_proxy, start_upstream):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        upstream = start_upstream(echo_handler, host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    proxy = start_proxy("forward", "[::1]:0", upstream.address)
    assert proxy.addresses[0].startswith("[::1]:")
    with connect(proxy.address) as client:
        client.sendall(b"six")
        assert recv_exactly(client, 3) == b"six"


def test_host_name_upstream_is_resolved(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", f"localhost:{upstream.port}")
    with connect(proxy.address) as client:
        client.sendall(b"named")
        assert recv_exactly(client, 5) == b"named"
    assert proxy.wait_access(1)[0]["server"] == upstream.address


def _limit_fds(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def test_running_out_of_descriptors_pauses_accepts_and_recovers(start_proxy, start_upstream):
    """Two limits of different parity, so that one of them runs out exactly at accept()."""
    upstream = start_upstream(echo_handler)
    logs = []
    for limit in (24, 25):
        proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, preexec_fn=_limit_fds(limit))
        clients = []
        try:
            for _ in range(40):
                clients.append(connect(proxy.address))
            proxy.wait_for(lambda line: "accept_paused" in line or "too many open files" in line)
            time.sleep(0.3)
        finally:
            for client in clients:
                client.close()
        assert proxy.proc.poll() is None
        assert wait_until(lambda proxy=proxy: len(proxy.access_lines()) >= 40, timeout=20)
        with connect(proxy.address) as client:
            client.sendall(b"alive")
            assert recv_exactly(client, 5) == b"alive"
        logs.append(proxy.log_text())
        proxy.stop()
    assert any("accept_paused" in text for text in logs)


def test_hexdump_shows_exactly_the_bytes_sent(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--hexdump")
    chunks = [pattern(n, seed=n) for n in (1, 15, 16, 17, 300, 5000)]
    with connect(proxy.address) as client:
        for chunk in chunks:
            client.sendall(chunk)
            assert recv_exactly(client, len(chunk)) == chunk
        client.shutdown(socket.SHUT_WR)
        assert client.recv(1) == b""
    proxy.wait_access(1)
    assert wait_until(lambda: " close result=closed" in proxy.stdout())
    dumped = _parse_hexdump(proxy.stdout())
    sent = b"".join(chunks)
    assert dumped[("1", "client->upstream")] == sent
    assert dumped[("1", "upstream->client")] == sent


_STAMP = r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00)"
_OPEN = re.compile(_STAMP + r" conn=(\d+) open (\S+) -> (\S+)")
_HEADER = re.compile(_STAMP + r" conn=(\d+) (client->upstream|upstream->client) offset=(\d+) len=(\d+) (\S+) -> (\S+)")
_CLOSE = re.compile(_STAMP + r" conn=(\d+) close result=(\w+)")


def test_hexdump_header_and_event_lines_name_the_real_endpoints(start_proxy, start_upstream):
    """Every line the dump writes, matched whole: events, headers with the real addresses, dumps."""
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--hexdump")
    started = datetime.now(UTC)
    with connect(proxy.address) as client:
        client_address = "{}:{}".format(*client.getsockname())
        for chunk in (b"first", b"second chunk, longer than sixteen bytes"):
            client.sendall(chunk)
            assert recv_exactly(client, len(chunk)) == chunk
        client.shutdown(socket.SHUT_WR)
        assert client.recv(1) == b""
    (access,) = proxy.wait_access(1)
    conn, server = access["conn"], access["server"]
    assert server == upstream.address
    assert wait_until(lambda: " close result=closed" in proxy.stdout())
    ended = datetime.now(UTC)
    lines = proxy.stdout().splitlines()
    stamps = []
    opened = _OPEN.fullmatch(lines[0])
    assert opened, lines[0]
    assert opened.groups()[1:] == (conn, client_address, server)
    stamps.append(opened.group(1))
    closed = _CLOSE.fullmatch(lines[-1])
    assert closed, lines[-1]
    assert closed.groups()[1:] == (conn, "closed")
    offsets = {"client->upstream": 0, "upstream->client": 0}
    ends = {"client->upstream": (client_address, server), "upstream->client": (server, client_address)}
    headers = 0
    for line in lines[1:-1]:
        if re.fullmatch(r"[0-9a-f]{8}  .*\|", line):
            continue
        header = _HEADER.fullmatch(line)
        assert header, f"neither a header nor a dump line: {line!r}"
        stamp, header_conn, direction, offset, length, source, destination = header.groups()
        assert header_conn == conn
        assert int(offset) == offsets[direction]
        offsets[direction] += int(length)
        assert (source, destination) == ends[direction]
        stamps.append(stamp)
        headers += 1
    stamps.append(closed.group(1))
    assert headers >= 4
    assert offsets == {"client->upstream": 44, "upstream->client": 44}
    times = [datetime.fromisoformat(stamp) for stamp in stamps]
    assert times == sorted(times)
    assert started - timedelta(seconds=1) <= times[0] and times[-1] <= ended + timedelta(seconds=1)


def _parse_hexdump(text: str) -> dict[tuple[str, str], bytes]:
    """Reassemble the dump per connection and direction, checking offsets and lengths."""
    streams: dict[tuple[str, str], bytearray] = {}
    events: dict[str, list[str]] = {}
    chunks: list[tuple[tuple[str, str], int, bytearray]] = []  # (stream, len=, bytes dumped)
    for line in text.splitlines():
        if re.match(r"[0-9a-f]{8}  ", line):
            offset, data = parse_dump_line(line)
            chunk = chunks[-1][2]
            assert offset == len(chunk), "the first column is the offset within the chunk"
            chunk.extend(data)
            continue
        fields = line.split()
        conn = fields[1].removeprefix("conn=")
        if fields[2] in ("open", "close"):
            events.setdefault(conn, []).append(fields[2])
            continue
        key = (conn, fields[2])
        streams.setdefault(key, bytearray())
        assert fields[3] == f"offset={sum(len(c) for k, _, c in chunks if k == key)}"
        chunks.append((key, int(fields[4].removeprefix("len=")), bytearray()))
    for key, length, data in chunks:
        assert len(data) == length
        streams[key].extend(data)
    for conn, seen in events.items():
        assert seen == ["open", "close"], f"conn={conn} events {seen}"
    return {key: bytes(value) for key, value in streams.items()}


def test_plain_pairs_splice_unless_told_not_to(start_proxy, start_upstream, data_path):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address)
    before = proxy.pipe_count()
    with connect(proxy.address) as client:
        client.sendall(b"request")
        assert recv_exactly(client, 7) == b"request"
        assert proxy.pipe_count() == before, "small exchanges are copied: no pipe for them"
        bulk = pattern(4 * MiB, seed=4)  # past the 1 MiB after which a direction splices
        for start in range(0, len(bulk), MiB):
            client.sendall(bulk[start : start + MiB])
            assert recv_exactly(client, MiB) == bulk[start : start + MiB]
        during = proxy.pipe_count()
    proxy.wait_access(1)
    assert during - before == (4 if data_path == "splice" else 0)  # a pipe per direction, two ends each
    assert wait_until(lambda: proxy.pipe_count() == before)


def test_garbage_and_resets_leak_no_descriptors(start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address)
    with connect(proxy.address) as client:
        client.sendall(b"warm")
        assert recv_exactly(client, 4) == b"warm"
    proxy.wait_access(1)
    baseline = proxy.fd_count()

    def abuse(count: int, seed: int) -> None:
        for i in range(count):
            sock = connect(proxy.address)
            if i % 2:
                sock.sendall(pattern(1 + i % 3000, seed=seed + i))
            if i % 3 == 0:
                sock.close()
            else:
                _rst_close(sock)

    threads = [threading.Thread(target=abuse, args=(250, n * 1000)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    proxy.wait_access(1001, timeout=30)
    assert proxy.proc.poll() is None
    assert wait_until(lambda: proxy.fd_count() == baseline), f"{proxy.fd_count()} fds, was {baseline}"
    with connect(proxy.address) as client:
        client.sendall(b"still here")
        assert recv_exactly(client, 10) == b"still here"
