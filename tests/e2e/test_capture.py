"""Capturing and dumping proxied traffic, end to end: `--pcap` read back by tshark as a Wireshark
user would (each leg followed byte for byte, handshakes, FIN and RST, IPv6, TLS decrypted with
the key log), `--dump-only` filters, `--snaplen`, `--dump-file`, rotation, YAML per route, and
connections that are not captured keeping the fast path."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import ssl
import stat
import struct
import textwrap
import threading
import time

import pytest
import trustme

from tests.support import (
    WAIT,
    connect,
    echo_handler,
    pattern,
    recv_all,
    recv_exactly,
    wait_until,
)
from tests.support.wireshark import fields, find_tshark, follow, run_tshark

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def tshark():
    return find_tshark()


def answer_after_eof(response: bytes):
    """An upstream that reads the client's whole stream, then answers `response` and closes."""

    def handler(conn: socket.socket) -> None:
        recv_all(conn)
        conn.sendall(response)
        conn.shutdown(socket.SHUT_WR)

    return handler


def exchange(address: tuple[str, int], request: bytes, family: int = socket.AF_INET) -> bytes:
    """Send `request`, half-close, and read the answer to its end."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(WAIT)
        client.connect(address)
        client.sendall(request)
        client.shutdown(socket.SHUT_WR)
        return recv_all(client)


def comments(tshark: str, path: str) -> list[tuple[int, str]]:
    return [(int(row[0]), row[1]) for row in fields(tshark, path, "tcp.stream", "frame.comment") if row[1]]


def flagged(tshark: str, path: str) -> str:
    """What tshark's TCP analysis and checksum checks complain about (nothing, in a clean capture)."""
    checks = ["-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE"]
    bad = "tcp.analysis.flags and not tcp.analysis.reused_ports or tcp.checksum.status == 0 or ip.checksum.status == 0"
    return run_tshark(tshark, "-r", path, *checks, "-Y", bad)


# -- both legs, byte for byte ---------------------------------------------------------------


def test_each_leg_follows_back_byte_for_byte_and_tshark_flags_nothing(tshark, start_proxy, start_upstream, tmp_path):
    rng = random.Random(10)
    request, response = rng.randbytes(300_001), rng.randbytes(200_003)
    upstream = start_upstream(answer_after_eof(response))
    capture = tmp_path / "capture.pcapng"
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--pcap", str(capture))
    assert exchange(proxy.address, request) == response
    access = proxy.wait_access(1)[0]
    assert proxy.stop() == 0
    path = str(capture)
    # stream 0: the client's leg (the client sent the SYN); stream 1: the proxy's leg to the upstream
    assert follow(tshark, path, 0) == (request, response)
    assert follow(tshark, path, 1) == (request, response)
    assert flagged(tshark, path) == ""
    listener = proxy.addresses[0]
    base = f"conn={access['conn']} listener={listener} route=0"
    assert comments(tshark, path) == [(0, f"{base} leg=client"), (1, f"{base} leg=upstream")]
    names = ("tcp.stream", "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport")
    syns = {row[0]: row[1:] for row in fields(tshark, path, *names, display_filter="tcp.flags == 0x002")}
    client_port = int(access["client"].rsplit(":", 1)[1])
    assert syns["0"] == ["127.0.0.1", str(client_port), "127.0.0.1", str(proxy.port)], "the client's real leg"
    assert syns["1"][2:] == ["127.0.0.1", upstream.address.rsplit(":", 1)[1]], "the upstream's real address"
    interfaces = {row[0] for row in fields(tshark, path, "frame.interface_name")}
    assert interfaces == {listener}


def test_half_closes_are_fins_in_the_order_they_happened(tshark, start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(answer_after_eof(b"answer after your FIN"))
    capture = tmp_path / "capture.pcapng"
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--pcap", str(capture))
    assert exchange(proxy.address, b"question") == b"answer after your FIN"
    proxy.wait_access(1)
    assert proxy.stop() == 0
    rows = fields(tshark, str(capture), "tcp.stream", "ip.src", "tcp.srcport", display_filter="tcp.flags.fin == 1")
    # client FIN (leg 0), proxy FIN to the upstream (leg 1), upstream FIN (leg 1), proxy FIN to the client (leg 0)
    assert [row[0] for row in rows] == ["0", "1", "1", "0"]
    assert rows[3][2] == str(proxy.port), "the proxy's FIN to the client comes from the listener's port"
    assert fields(tshark, str(capture), "frame.number", display_filter="tcp.flags.reset == 1") == []
    assert flagged(tshark, str(capture)) == ""


def reset_after_reading(size: int):
    def handler(conn: socket.socket) -> None:
        recv_exactly(conn, size)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    return handler


def test_a_reset_is_an_rst_on_both_legs(tshark, start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(reset_after_reading(5))
    capture = tmp_path / "capture.pcapng"
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--pcap", str(capture))
    with connect(proxy.address) as client:
        client.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            while client.recv(1024):
                pass
    assert proxy.wait_access(1)[0]["result"] == "reset"
    assert proxy.stop() == 0
    upstream_port = upstream.address.rsplit(":", 1)[1]
    rows = fields(tshark, str(capture), "tcp.stream", "tcp.srcport", display_filter="tcp.flags.reset == 1")
    assert sorted(rows) == [["0", str(proxy.port)], ["1", upstream_port]]


def test_ipv6_legs_are_ipv6(tshark, start_proxy, start_upstream, tmp_path):
    rng = random.Random(6)
    request, response = rng.randbytes(70_000), rng.randbytes(140_000)  # past one IPv6 segment's 65,515
    upstream = start_upstream(answer_after_eof(response), host="::1")
    capture = tmp_path / "capture.pcapng"
    proxy = start_proxy("forward", "[::1]:0", upstream.address, "--pcap", str(capture))
    assert exchange(proxy.address, request, socket.AF_INET6) == response
    proxy.wait_access(1)
    assert proxy.stop() == 0
    path = str(capture)
    assert follow(tshark, path, 0) == (request, response)
    assert follow(tshark, path, 1) == (request, response)
    assert {row[0] for row in fields(tshark, path, "ipv6.src")} == {"::1"}
    assert flagged(tshark, path) == ""


# -- TLS: ciphertext on the wire, decrypted with the key log --------------------------------


def test_a_terminated_tls_session_is_captured_as_ciphertext_and_decrypts_with_the_key_log(
    tshark, start_proxy, start_upstream, tmp_path
):
    ca = trustme.CA()
    cert = ca.issue_cert("proxy.test")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    upstream = start_upstream(echo_handler)
    capture, keylog = tmp_path / "capture.pcapng", tmp_path / "keys.log"
    proxy = start_proxy(
        "forward",
        "127.0.0.1:0",
        upstream.address,
        "--tls-cert",
        str(tmp_path / "cert.pem"),
        "--tls-key",
        str(tmp_path / "key.pem"),
        "--tls-keylog",
        str(keylog),
        "--pcap",
        str(capture),
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    secret = b"GET /secret HTTP/1.1\r\nHost: proxy.test\r\n\r\n"
    with connect(proxy.address) as raw, context.wrap_socket(raw, server_hostname="proxy.test") as client:
        client.sendall(secret)
        assert recv_exactly(client, len(secret)) == secret
    proxy.wait_access(1)
    assert proxy.stop() == 0
    path = str(capture)
    client_leg = follow(tshark, path, 0)
    assert secret not in client_leg[0], "the client's leg carries ciphertext"
    assert follow(tshark, path, 1) == (secret, secret), "the upstream's leg is plain"
    decrypted = follow(tshark, path, 0, "tls", "-o", f"tls.keylog_file:{keylog}")
    assert decrypted == (secret, secret)


# -- what is dumped and captured ------------------------------------------------------------


def test_dump_only_a_connection_number_dumps_and_captures_only_it(tshark, start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    capture, dump = tmp_path / "capture.pcapng", tmp_path / "dump.txt"
    proxy = start_proxy(
        "forward",
        "127.0.0.1:0",
        upstream.address,
        "--hexdump",
        "--dump-file",
        str(dump),
        "--pcap",
        str(capture),
        "--dump-only",
        "conn=2",
    )
    for index in range(3):
        with connect(proxy.address) as client:
            client.sendall(b"request %d" % index)
            assert recv_exactly(client, 9) == b"request %d" % index
        proxy.wait_access(index + 1)
    assert proxy.stop() == 0
    assert proxy.stdout_path.read_text() == "", "the dump went to its file"
    assert set(re.findall(r" conn=(\d+) ", dump.read_text())) == {"2"}
    assert "|request 1|" in dump.read_text()
    assert [text.split()[0] for _, text in comments(tshark, str(capture))] == ["conn=2", "conn=2"]


@pytest.mark.parametrize(
    ("condition", "captured"),
    [
        ("client=127.0.0.0/8", True),
        ("client=10.0.0.0/8", False),
        ("server=UPSTREAM", True),
        ("server=127.0.0.1:1", False),
    ],
)
def test_dump_only_by_client_and_server(condition, captured, tshark, start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    capture = tmp_path / "capture.pcapng"
    condition = condition.replace("UPSTREAM", upstream.address)
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--pcap", str(capture), "--dump-only", condition)
    with connect(proxy.address) as client:
        client.sendall(b"ping")
        assert recv_exactly(client, 4) == b"ping"
    proxy.wait_access(1)
    assert proxy.stop() == 0
    assert len(comments(tshark, str(capture))) == (2 if captured else 0)


def test_connections_not_captured_keep_splicing(start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(
        "forward",
        "127.0.0.1:0",
        upstream.address,
        "--pcap",
        str(tmp_path / "capture.pcapng"),
        "--dump-only",
        "conn=2",
        env={"PAIRPROXY_SPLICE": "1", "SSLKEYLOGFILE": ""},
    )
    bulk = pattern(4 * MiB, seed=9)  # past the 1 MiB after which a direction splices
    pipes = []
    for _ in range(2):
        before = proxy.pipe_count()
        with connect(proxy.address) as client:
            for start in range(0, len(bulk), MiB):
                client.sendall(bulk[start : start + MiB])
                assert recv_exactly(client, MiB) == bulk[start : start + MiB]
            pipes.append(proxy.pipe_count() - before)
        assert wait_until(lambda before=before: proxy.pipe_count() == before)
    assert pipes == [4, 0], "conn 1 spliced both ways; conn 2, captured, copied"


def test_snaplen_cuts_the_dump_and_the_capture_per_direction(tshark, start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    capture = tmp_path / "capture.pcapng"
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address, "--hexdump", "--snaplen", "100", "--pcap", str(capture)
    )
    payload = pattern(1000, seed=3)
    with connect(proxy.address) as client:
        for start in range(0, 1000, 250):
            client.sendall(payload[start : start + 250])
            assert recv_exactly(client, 250) == payload[start : start + 250]
    proxy.wait_access(1)
    assert proxy.stop() == 0
    lines = proxy.stdout_path.read_text().splitlines()
    truncated = [line.split(" ", 1)[1] for line in lines if " truncated " in line]
    assert truncated == ["conn=1 client->upstream truncated offset=100", "conn=1 upstream->client truncated offset=100"]
    dumped = [line for line in lines if re.match(r"[0-9a-f]{8}  ", line)]
    assert sum(len(line[10:58].split()) for line in dumped) == 200, "100 bytes each way"
    rows = fields(
        tshark, str(capture), "tcp.stream", "tcp.len", "frame.cap_len", "frame.len", display_filter="tcp.len > 0"
    )
    for stream in ("0", "1"):
        kept = sum(int(row[2]) - (int(row[3]) - int(row[1])) for row in rows if row[0] == stream)
        assert kept == 200, f"stream {stream}: 100 bytes of payload kept each way"
        assert sum(int(row[1]) for row in rows if row[0] == stream) == 2000, "the lengths are the real ones"


def test_rotation_keeps_the_newest_files_each_one_readable(tshark, start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    capture = tmp_path / "capture.pcapng"
    proxy = start_proxy(
        "forward",
        "127.0.0.1:0",
        upstream.address,
        "--pcap",
        str(capture),
        "--pcap-max",
        "64KiB",
        "--pcap-keep",
        "2",
    )
    payload = pattern(MiB, seed=5)
    with connect(proxy.address) as client:
        for start in range(0, MiB, 16384):
            client.sendall(payload[start : start + 16384])
            assert recv_exactly(client, 16384) == payload[start : start + 16384]
    proxy.wait_access(1)
    assert proxy.stop() == 0
    names = sorted(path.name for path in tmp_path.glob("capture.pcapng*"))
    assert names == ["capture.pcapng", "capture.pcapng.1", "capture.pcapng.2"]
    for name in names:
        path = tmp_path / name
        assert path.stat().st_size <= 64 * 1024
        text = comments(tshark, str(path))
        assert text and all(value.startswith("conn=1 ") for _, value in text), "each file says whose packets"


def test_keep_at_its_bound_still_echoes_promptly_and_stops_on_sigterm(start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    capture = tmp_path / "capture.pcapng"
    options = ("--pcap", str(capture), "--pcap-max", "64KiB", "--pcap-keep", "1000")
    proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, *options)
    payload = pattern(70 * 1024, seed=7)
    started = time.monotonic()
    with connect(proxy.address) as client:  # each recv waits at most WAIT
        client.sendall(payload)
        assert recv_exactly(client, len(payload)) == payload
    assert proxy.wait_access(1)[0]["result"] == "closed"
    assert proxy.stop(timeout=WAIT) == 0
    assert time.monotonic() - started < WAIT, "rotations cost the loop what the files there are cost"
    rotated = sorted(path.name for path in tmp_path.glob("capture.pcapng.*"))
    assert rotated == [f"capture.pcapng.{number}" for number in range(1, len(rotated) + 1)] and rotated


def test_a_capture_into_a_fifo_is_never_rotated_away(start_proxy, start_upstream, tmp_path):
    # Only a regular file can be rotated: renaming a FIFO (or, as root, /dev/null) would move the
    # node itself and leave a regular file in its place.
    upstream = start_upstream(echo_handler)
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    drained = threading.Event()

    def drain() -> None:
        while not drained.is_set():
            try:
                os.read(reader, 1 << 16)
            except BlockingIOError:
                time.sleep(0.01)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        proxy = start_proxy("forward", "127.0.0.1:0", upstream.address, "--pcap", str(fifo), "--pcap-max", "64KiB")
        payload = pattern(256 * 1024, seed=11)
        with connect(proxy.address) as client:
            client.sendall(payload)
            assert recv_exactly(client, len(payload)) == payload
        assert proxy.wait_access(1)[0]["result"] == "closed"
        assert proxy.stop() == 0
    finally:
        drained.set()
        thread.join(WAIT)
        os.close(reader)
    assert stat.S_ISFIFO(fifo.lstat().st_mode), "the FIFO is still where it was"
    assert sorted(path.name for path in tmp_path.glob("capture.fifo*")) == ["capture.fifo"]


def test_a_listener_name_longer_than_the_rotation_guard_keeps_serving(tshark, start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    name = "edge-" + "n" * 600  # its interface block alone takes a fresh file past 512 bytes
    (tmp_path / "pairproxy.yaml").write_text(
        f"listeners:\n  - name: {name}\n    listen: 127.0.0.1:0\n    upstream: {upstream.address}\n"
        "    pcap: {file: capture.pcapng, max_size: 64KiB, keep: 2}\n"
    )
    proxy = start_proxy("run")
    payload = pattern(MiB, seed=9)
    with connect(proxy.address) as client:
        for start in range(0, MiB, 64 * 1024):
            client.sendall(payload[start : start + 64 * 1024])
            assert recv_exactly(client, 64 * 1024) == payload[start : start + 64 * 1024]
    assert proxy.wait_access(1)[0]["result"] == "closed"
    assert proxy.stop() == 0
    names = sorted(path.name for path in tmp_path.glob("capture.pcapng*"))
    assert names == ["capture.pcapng", "capture.pcapng.1", "capture.pcapng.2"]
    for path in names:
        rows = fields(tshark, str(tmp_path / path), "frame.interface_name", "tcp.len")
        assert rows and all(row[0] == name for row in rows), f"{path}: packets of the listener's interface"


def test_yaml_captures_one_route_of_a_listener(tshark, start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    (tmp_path / "pairproxy.yaml").write_text(
        textwrap.dedent(
            f"""\
            listeners:
              - name: edge
                listen: 127.0.0.1:0
                routes:
                  - name: watched
                    match: {{source: 127.0.0.2/32}}
                    upstream: {upstream.address}
                    pcap: watched.pcapng
                    hexdump: true
                  - name: other
                    upstream: {upstream.address}
            """
        )
    )
    proxy = start_proxy("run")
    host, port = proxy.address
    for source in ("127.0.0.1", "127.0.0.2"):
        with socket.create_connection((host, port), timeout=WAIT, source_address=(source, 0)) as client:
            client.sendall(b"from " + source.encode())
            assert recv_exactly(client, 14) == b"from " + source.encode()
    lines = proxy.wait_access(2)
    assert proxy.stop() == 0
    watched = [line["conn"] for line in lines if line["route"] == "watched"]
    assert [text.split()[:3] for _, text in comments(tshark, str(tmp_path / "watched.pcapng"))] == [
        [f"conn={watched[0]}", "listener=edge", "route=watched"]
    ] * 2
    assert (
        "|from 127.0.0.2|" in proxy.stdout_path.read_text() and "|from 127.0.0.1|" not in proxy.stdout_path.read_text()
    )


def test_workers_each_write_their_own_file(tshark, start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    (tmp_path / "pairproxy.yaml").write_text(
        f"listeners:\n  - listen: 127.0.0.1:0\n    upstream: {upstream.address}\n    pcap: capture.pcapng\n"
    )
    proxy = start_proxy("run", "--workers", "2")
    done = []

    def client(index: int) -> None:
        with connect(proxy.address) as sock:
            sock.sendall(b"%04d" % index)
            done.append(recv_exactly(sock, 4))

    threads = [threading.Thread(target=client, args=(index,)) for index in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    proxy.wait_access(20)
    assert proxy.stop() == 0
    files = sorted(path.name for path in tmp_path.glob("capture*.pcapng"))
    assert set(files) <= {"capture.w0.pcapng", "capture.w1.pcapng"} and files
    captured = sum(len(comments(tshark, str(tmp_path / name))) for name in files)
    assert captured == 40, "every connection's two legs, in one file or the other"
    assert os.path.exists(tmp_path / files[0])


def test_a_connection_that_never_reached_its_upstream_is_captured_too(tshark, start_proxy, tmp_path):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        refusing = f"127.0.0.1:{unused.getsockname()[1]}"  # bound, never listening: connects are refused
        capture = tmp_path / "capture.pcapng"
        proxy = start_proxy("forward", "127.0.0.1:0", refusing, "--pcap", str(capture), "--hexdump")
        with connect(proxy.address) as client:
            client.sendall(b"anyone there?")
            try:
                recv_all(client)
                reset = False  # the proxy gave up before the bytes arrived: it closed, a FIN
            except ConnectionResetError:
                reset = True  # it closed with the client's bytes unread: an RST
        assert proxy.wait_access(1)[0]["result"] == "upstream_unreachable"
        assert proxy.stop() == 0
    path = str(capture)
    assert [text.split()[:3] for _, text in comments(tshark, path)] == [
        ["conn=1", f"listener={proxy.addresses[0]}", "route=0"]
    ]
    resets = fields(tshark, path, "tcp.srcport", display_filter="tcp.flags.reset == 1")
    fins = fields(tshark, path, "tcp.srcport", display_filter="tcp.flags.fin == 1")
    if reset:  # the capture says what the client saw
        assert follow(tshark, path, 0) == (b"anyone there?", b""), "what the client sent, never read"
        assert (resets, fins) == ([[str(proxy.port)]], [])
    else:
        assert (resets, fins) == ([], [[str(proxy.port)]])
    events = [line.split()[2] for line in proxy.stdout_path.read_text().splitlines()]
    assert events == ["open", "close"]


def test_a_reload_changes_the_rotation_of_a_capture_already_open(tshark, start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    config = tmp_path / "pairproxy.yaml"
    listener = f"  - {{name: web, listen: 127.0.0.1:0, upstream: {upstream.address}, pcap: PCAP}}\n"
    config.write_text("listeners:\n" + listener.replace("PCAP", "c.pcapng"))
    proxy = start_proxy("run")
    config.write_text("listeners:\n" + listener.replace("PCAP", "{file: c.pcapng, max_size: 64KiB, keep: 2}"))
    proxy.send_signal(signal.SIGHUP)
    proxy.wait_for(" reloaded ")
    with connect(proxy.address) as client:
        for _ in range(10):
            client.sendall(b"z" * 30000)
            assert recv_exactly(client, 30000) == b"z" * 30000
    proxy.wait_access(1)
    assert proxy.stop() == 0
    assert sorted(path.name for path in tmp_path.glob("c.pcapng*")) == ["c.pcapng", "c.pcapng.1", "c.pcapng.2"]
    assert (tmp_path / "c.pcapng").stat().st_size <= 64 * 1024
