"""Output never stalls the proxy: logs and the dump through bounded queues, and escaped text.

End to end, the real command with stderr/stdout on pipes, sockets and terminals nobody reads:
traffic keeps flowing, signals still end the process, and what was dropped is said once the
reader is back. Unit tests for the queue itself and for the escaping of log values.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.units import format_sockaddr
from proxy.log import EventLog, logfmt_value
from proxy.output import PIPE_BUF, Output, pieces
from proxy.output.tap import HexdumpWriter
from tests.support import WAIT, PeakRss, echo_handler, in_records, logfmt, recv_exactly, synthetic_client_hello
from tests.support.wireshark import find_tshark, run_tshark

SMALL_PIPE = 4096  # one page: the smallest a pipe can be, so that a stall comes at once
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00"
LOG_LINE = re.compile(rf'^{TIMESTAMP} (DEBUG|INFO|WARNING|ERROR) \w+( \w+=("(?:[^"\\]|\\.)*"|\S+))*$')
DUMP_DROPPED = re.compile(rf"^{TIMESTAMP} conn=\d+ dump_dropped bytes=(\d+)$", re.MULTILINE)


# -- the process and its outputs ----------------------------------------------------------


class Stalled:
    """A reading end the test controls: a small pipe, a socket, or a terminal's master side."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        if kind == "pipe":
            self.reader, self.writer = os.pipe()
            fcntl.fcntl(self.writer, fcntl.F_SETPIPE_SZ, SMALL_PIPE)
        elif kind == "socket":
            ours, theirs = socket.socketpair()
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            self.reader, self.writer = ours.detach(), theirs.detach()
        else:
            self.reader, self.writer = pty.openpty()
        self.data = bytearray()

    def read_until(self, pattern: bytes, count: int = 1, timeout: float = WAIT) -> bytes:
        """Read until `pattern` has been seen `count` times; AssertionError if not in time."""
        os.set_blocking(self.reader, False)
        deadline = time.monotonic() + timeout
        while self.data.count(pattern) < count:
            if time.monotonic() > deadline:
                seen = self.data[-3000:].decode(errors="replace")
                raise AssertionError(f"no {pattern!r} in {timeout}s; read:\n{seen}")
            chunk = _read_available(self.reader)
            if not chunk:
                time.sleep(0.01)
            self.data += chunk
        return bytes(self.data)

    def unread(self) -> int:
        """Bytes written and not yet read."""
        return struct.unpack("i", fcntl.ioctl(self.reader, termios.FIONREAD, b"\0\0\0\0"))[0]

    def close(self) -> None:
        for fd in (self.reader, self.writer):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def launch():
    """launch(args, stderr=..., stdout=...) -> Popen; every process is killed at teardown."""
    started: list[subprocess.Popen] = []

    def start(args, *, stderr, stdout=subprocess.DEVNULL) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", *args], stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)


@pytest.fixture
def outputs():
    """outputs(kind) -> Stalled; all closed at teardown."""
    made: list[Stalled] = []

    def make(kind: str = "pipe") -> Stalled:
        made.append(Stalled(kind))
        return made[-1]

    yield make
    for output in made:
        output.close()


def started(stderr: Stalled, listening: int = 1) -> tuple[str, int]:
    """Wait for the `listening` lines (reading only those), then leave stderr unread."""
    stderr.read_until(b" listening ", listening)
    host, port = re.search(rb"address=(\S+):(\d+)", bytes(stderr.data)).groups()
    return host.decode(), int(port)


def _read_available(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    except OSError:  # nothing yet (EAGAIN), or a terminal whose other side is gone (EIO)
        return b""


def round_trips(address: tuple[str, int], count: int, size: int = 8, deadline: float = 60.0) -> None:
    """`count` connections, each echoing `size` bytes byte-exact, all within `deadline` seconds."""
    end = time.monotonic() + deadline
    for i in range(count):
        assert time.monotonic() < end, f"only {i} of {count} connections in {deadline}s"
        payload = (b"%08d" % i) * (size // 8)
        with socket.create_connection(address, timeout=WAIT) as client:
            client.settimeout(WAIT)
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            assert recv_exactly(client, len(payload) + 1) == payload, f"connection {i}"


def exits_on(proc: subprocess.Popen, signum: int, timeout: float = 5.0) -> int:
    proc.send_signal(signum)
    return proc.wait(timeout)


# -- end to end: stalled outputs ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pipe", "socket", "terminal"])
def test_an_unread_stderr_never_stalls_forwarding(kind, launch, outputs, start_upstream):
    upstream = start_upstream(echo_handler)
    stderr = outputs(kind)
    proc = launch(["forward", "127.0.0.1:0", upstream.address], stderr=stderr.writer)
    address = started(stderr)
    round_trips(address, 2500)
    assert stderr.unread() > 0, "the reader really is behind"
    # The reader comes back: the queue drains, and what could not be kept is said once.
    text = stderr.read_until(b"log_dropped").decode()
    dropped = [logfmt(line) for line in text.splitlines() if " log_dropped " in line]
    assert len(dropped) == 1 and int(dropped[0]["lines"]) > 0
    assert " WARNING log_dropped lines=" in text
    assert exits_on(proc, signal.SIGTERM) == 0


def test_an_unread_stdout_never_stalls_the_hexdump(launch, outputs, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    stdout = outputs("pipe")
    with open(tmp_path / "stderr", "wb") as stderr_file:
        proc = launch(
            ["forward", "127.0.0.1:0", upstream.address, "--hexdump"], stderr=stderr_file, stdout=stdout.writer
        )
    assert _wait_for_file(tmp_path / "stderr", b" listening ")
    port = int(re.search(rb"address=\S+:(\d+)", (tmp_path / "stderr").read_bytes()).group(1))
    round_trips(("127.0.0.1", port), 150, size=8192)  # about 80 KB of dump each: far past the queue
    text = stdout.read_until(b"dump_dropped").decode()
    assert int(DUMP_DROPPED.search(text).group(1)) > 0
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:  # and the dump is back
        client.sendall(b"after the stall!")
        assert recv_exactly(client, 16) == b"after the stall!"
    assert stdout.read_until(b"|after the stall!|").count(b" dump_dropped ") == 1
    assert exits_on(proc, signal.SIGTERM) == 0


def test_a_capture_to_an_unread_pipe_stays_bounded_and_goes_on(launch, outputs, start_upstream, tmp_path):
    tshark = find_tshark()
    upstream = start_upstream(echo_handler)
    stdout = outputs("pipe")
    with open(tmp_path / "stderr", "wb") as stderr_file:
        proc = launch(
            ["forward", "127.0.0.1:0", upstream.address, "--pcap", "-"], stderr=stderr_file, stdout=stdout.writer
        )
    assert _wait_for_file(tmp_path / "stderr", b" listening ")
    port = int(re.search(rb"address=\S+:(\d+)", (tmp_path / "stderr").read_bytes()).group(1))
    chunk = os.urandom(1 << 20)
    with PeakRss(proc.pid) as peak, socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.settimeout(WAIT)
        for _ in range(64):  # 64 MiB each way, on both legs: 256 MiB of capture the pipe never takes
            client.sendall(chunk)
            assert recv_exactly(client, len(chunk)) == chunk
    assert peak.growth < 48 * 1024, f"RSS grew by {peak.growth} KiB"
    # The reader comes back: what was queued drains, the loss is logged, and the capture goes on.
    assert stdout.unread() > 0, "the reader really is behind"
    os.set_blocking(stdout.reader, False)
    deadline = time.monotonic() + 3 * WAIT  # 4 MiB queued, through a pipe of one page
    while b"pcap_dropped" not in (tmp_path / "stderr").read_bytes() and time.monotonic() < deadline:
        select.select([stdout.reader], [], [], 0.05)  # wait for the writer, never spin or oversleep
        stdout.data += _read_available(stdout.reader)
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(b"after the stall")
        assert recv_exactly(client, 15) == b"after the stall"
    stdout.read_until(b"after the stall", count=4)  # each way on each leg
    warning = logfmt(next(line for line in (tmp_path / "stderr").read_text().splitlines() if "pcap_dropped" in line))
    assert int(warning["packets"]) > 0 and int(warning["bytes"]) > 0
    assert exits_on(proc, signal.SIGTERM) == 0
    stdout.data += _read_available(stdout.reader)
    (tmp_path / "capture.pcapng").write_bytes(stdout.data)
    streams = run_tshark(tshark, "-r", str(tmp_path / "capture.pcapng"), "-T", "fields", "-e", "tcp.stream")
    assert len(set(streams.split())) == 4, "both legs of both connections"


def _wait_for_file(path: Path, pattern: bytes) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if pattern in path.read_bytes():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_process_with_both_outputs_stalled(signum, launch, outputs, start_upstream):
    upstream = start_upstream(echo_handler)
    stderr, stdout = outputs("pipe"), outputs("pipe")
    proc = launch(["forward", "127.0.0.1:0", upstream.address, "--hexdump"], stderr=stderr.writer, stdout=stdout.writer)
    address = started(stderr)
    round_trips(address, 300, size=1024)
    assert stderr.unread() > 0 and stdout.unread() > 0, "nobody reads either"
    client = socket.create_connection(address, timeout=WAIT)
    client.sendall(b"ping")
    assert recv_exactly(client, 4) == b"ping"
    proc.send_signal(signum)
    time.sleep(0.2)
    assert client.sendall(b"pong") is None and recv_exactly(client, 4) == b"pong", "drain lets it finish"
    client.close()
    assert proc.wait(5) == 0


def test_workers_stop_with_stderr_stalled(launch, outputs, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    stderr = outputs("pipe")
    proc = launch(["run", "-c", _config(tmp_path, upstream), "--workers", "2"], stderr=stderr.writer)
    address = started(stderr, listening=2)
    round_trips(address, 600)
    assert stderr.unread() > 0
    assert exits_on(proc, signal.SIGTERM, timeout=8) == 0


def _config(tmp_path: Path, upstream) -> str:
    path = tmp_path / "pairproxy.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            listeners:
              - {{name: shared, listen: "127.0.0.1:0", upstream: "{upstream.address}"}}
            """)
    )
    return str(path)


def test_workers_sharing_a_slow_pipe_never_mix_lines(launch, outputs, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    stderr = outputs("pipe")
    proc = launch(["run", "-c", _config(tmp_path, upstream), "--workers", "2"], stderr=stderr.writer)
    address = started(stderr, listening=2)
    # A reader slower than the traffic: both workers queue, and drain into the one pipe.
    stop = threading.Event()
    reader = threading.Thread(target=_read_slowly, args=(stderr, stop), daemon=True)
    reader.start()
    clients = [threading.Thread(target=round_trips, args=(address, 300)) for _ in range(2)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(60)
    stop.set()
    reader.join(WAIT)
    assert exits_on(proc, signal.SIGTERM, timeout=8) == 0
    stderr.data += _read_available(stderr.reader)
    lines = stderr.data.decode().splitlines()
    assert len([line for line in lines if " access " in line]) > 100
    mixed = [line for line in lines if not LOG_LINE.match(line)]
    assert not mixed, mixed[:5]


def _read_slowly(stderr: Stalled, stop: threading.Event) -> None:
    os.set_blocking(stderr.reader, False)
    while not stop.is_set():
        try:
            stderr.data += os.read(stderr.reader, 1024)
        except BlockingIOError:
            pass
        time.sleep(0.005)


@pytest.mark.parametrize("target", ["file", "devnull"])
def test_a_file_as_stderr_gets_every_line(target, launch, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    path = tmp_path / "stderr.log" if target == "file" else Path(os.devnull)
    with open(path, "ab") as stderr_file:
        proc = launch(["forward", "127.0.0.1:0", upstream.address], stderr=stderr_file)
    if target == "file":
        assert _wait_for_file(path, b" listening ")
        port = int(re.search(rb"address=\S+:(\d+)", path.read_bytes()).group(1))
    else:
        port = _port_of(proc.pid)
    round_trips(("127.0.0.1", port), 300)
    assert exits_on(proc, signal.SIGTERM) == 0
    if target == "file":
        lines = path.read_text().splitlines()
        assert len([line for line in lines if " access " in line]) == 300
        assert all(LOG_LINE.match(line) for line in lines)


def _port_of(pid: int) -> int:
    """The port a process listens on, from /proc (when its log goes nowhere)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                return int(fields[1].split(":")[1], 16)
        time.sleep(0.05)
    raise AssertionError("the process never listened")


# -- end to end: client text in the logs --------------------------------------------------

EVIL_SNI = "a\x1b[2Jb\x7fc\x07d\x08.example"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_server_name_with_control_characters_stays_on_one_escaped_line(fmt, start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    path = tmp_path / "pairproxy.yaml"
    path.write_text(
        textwrap.dedent(f"""\
            listeners:
              - listen: "127.0.0.1:0"
                routes:
                  - {{match: {{sni: good.example}}, upstream: "{upstream.address}"}}
            """)
    )
    proxy = start_proxy("run", "-c", str(path), "--log-format", fmt, wait_listening=0)
    proxy.wait_for("listening")
    address = re.search(r'"?address"?[=:] ?"?([\d.]+:\d+)', proxy.log_text()).group(1)
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=WAIT) as client:
        client.sendall(in_records(synthetic_client_hello(EVIL_SNI), 1 << 14))
        client.settimeout(WAIT)
        assert client.recv(1) == b""  # no route: closed
    line = proxy.wait_for("access")
    assert proxy.stop() == 0
    raw = proxy.log_text()
    assert not [c for c in raw if not c.isprintable() and c != "\n"], "no control character reaches stderr"
    assert len([line for line in raw.splitlines() if "access" in line]) == 1
    fields = json.loads(line) if fmt == "json" else logfmt(line)
    assert fields["sni"] == EVIL_SNI.lower()
    assert fields["result"] == "no_route"


# -- the queue ----------------------------------------------------------------------------


@pytest.fixture
def pipe():
    reader, writer = os.pipe()
    fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, SMALL_PIPE)
    yield reader, writer
    for fd in (reader, writer):
        os.close(fd)


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    while chunk := _read_available(fd):
        chunks.append(chunk)
    return b"".join(chunks)


def test_lines_are_written_at_once_while_the_reader_keeps_up(pipe):
    reader, writer = pipe
    output = Output(writer, limit=10_000)
    assert output.write(b"one\n") and output.write(b"two\n")
    assert not output.queue
    assert _read_all(reader) == b"one\ntwo\n"
    output.close()


def test_a_full_pipe_queues_then_drops_whole_records_and_says_so_once_drained(pipe):
    reader, writer = pipe
    output = Output(writer, limit=1000)
    reports = []
    output.on_recovered = lambda lines, size: reports.append((lines, size)) or b"REPORT\n"
    line = b"x" * 99 + b"\n"
    accepted = [output.write(line) for _ in range(60)]  # 4096 in the pipe, 1000 queued, the rest dropped
    assert accepted.count(True) == SMALL_PIPE // 100 + 10
    assert output.queued == 1000
    assert os.get_blocking(writer), "the inherited descriptor stays as it was"
    data = _read_all(reader)
    output.drain()
    data += _read_all(reader)
    assert reports == [(accepted.count(False), 100 * accepted.count(False))]
    assert data == line * accepted.count(True) + b"REPORT\n"
    assert not output.queue and output.queued == 0
    output.close()


def test_a_large_record_is_written_in_pieces_of_whole_lines(pipe):
    reader, writer = pipe
    output = Output(writer, limit=1 << 20)
    record = b"".join(b"%05d" % i + b"y" * 70 + b"\n" for i in range(400))  # 30 KB
    assert output.write(record)
    received = bytearray()
    while output.queue:
        chunk = _read_all(reader)
        received += chunk
        output.drain()
    received += _read_all(reader)
    assert bytes(received) == record
    output.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"") + b"\n"), max_size=60))
def test_pieces_are_whole_lines_within_pipe_buf(lines):
    data = b"".join(lines)
    cut = pieces(data)
    assert b"".join(cut) == data
    assert all(len(piece) <= PIPE_BUF for piece in cut)
    assert all(piece.endswith(b"\n") for piece in cut if piece)


def test_flush_gives_up_after_its_timeout(pipe):
    _reader, writer = pipe
    output = Output(writer, limit=1 << 20)
    for _ in range(100):
        output.write(b"z" * 99 + b"\n")
    started_at = time.monotonic()
    output.flush(timeout=0.3)
    assert 0.25 < time.monotonic() - started_at < 2
    assert output.queue
    output.close()


def test_a_child_after_fork_starts_with_an_empty_queue(pipe):
    _reader, writer = pipe
    output = Output(writer, limit=1 << 20)
    for _ in range(100):
        output.write(b"z" * 99 + b"\n")
    output.after_fork()
    assert not output.queue and output.queued == 0 and output.dropped_lines == 0
    output.close()


# -- escaping -----------------------------------------------------------------------------


def _is_screen_safe(text: str) -> bool:
    return all(char.isprintable() for char in text)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_logfmt_value_is_one_safe_line_and_parses_back(value):
    log = EventLog(stream=io.StringIO())
    log.info("event", key=value, after="x")
    text = log.stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert _is_screen_safe(text[:-1])
    fields = logfmt(text)
    assert fields["key"] == value and fields["after"] == "x"
    assert _is_screen_safe(logfmt_value(value))


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_json_value_is_one_ascii_line_and_parses_back(value):
    log = EventLog(fmt="json", stream=io.StringIO())
    log.info("event", key=value)
    text = log.stream.getvalue()
    assert text.count("\n") == 1
    assert all(0x20 <= ord(char) < 0x7F for char in text[:-1])
    assert json.loads(text)["key"] == value


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", "plain"),
        ("", '""'),
        ("two words", '"two words"'),
        ("a\x1b[31mb", '"a\\x1b[31mb"'),
        ("del\x7f", '"del\\x7f"'),
        ("c1\x9b", '"c1\\x9b"'),
        ("line\u2028sep\u2029", '"line\\u2028sep\\u2029"'),
        ("cr\r\nlf\ttab", '"cr\\r\\nlf\\ttab"'),
        ('quote" back\\', '"quote\\" back\\\\"'),
        ("café", "café"),
    ],
)
def test_logfmt_escapes(value, written):
    assert logfmt_value(value) == written


def test_a_debug_traceback_goes_through_the_queue_with_its_text_escaped():
    log = EventLog("debug", stream=io.StringIO())
    try:
        raise ValueError("bad\x1b[2J")
    except ValueError as exc:
        log.failure("oops", exc)
    text = log.stream.getvalue()
    assert "Traceback" in text and "\x1b" not in text and "\\x1b[2J" in text


def test_dump_records_carry_no_control_characters():
    dump = HexdumpWriter(io.StringIO())
    odd = format_sockaddr(("unix", "@lis\x1bten\r\n"))  # an endpoint as a pair names it
    dump.opened(1, "127.0.0.1:1", odd)
    dump.chunk(1, "client->upstream", 0, memoryview(b"x"), "127.0.0.1:1", odd)
    dump.closed(1, "closed")
    text = dump.output.stream.getvalue()
    assert text.count("\n") == 4 and _is_screen_safe(text.replace("\n", ""))


def test_a_capture_whose_interface_block_was_dropped_writes_nothing_that_needs_it(tmp_path):
    # A second listener's interface block is dropped while the queue is full; its packets, which
    # would fit once the queue has room again, must wait for the new section that declares it.
    from proxy.config.schema import PcapConfig
    from proxy.output.pcap_sink import PcapSink
    from proxy.protocol.pcapng import Peer, TcpConversation

    tshark = find_tshark()
    reader, writer = os.pipe()
    fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, SMALL_PIPE)
    warnings = []
    path = str(tmp_path / "unused.pcapng")
    sink = PcapSink(PcapConfig(path), path, lambda event, **_fields: warnings.append(event))
    sink._close_file()
    sink.output = Output(writer, 256 * 1024)  # the capture's stream, to a pipe nobody reads yet
    sink.output.on_recovered = sink._recovered
    sink._start_section()
    first = TcpConversation(("10.0.0.1", 1000), ("10.0.0.2", 80), local=Peer.SERVER)
    second = TcpConversation(("10.0.0.3", 1000), ("10.0.0.2", 81), local=Peer.SERVER)
    for packet in first.open() + first.send(Peer.CLIENT, os.urandom(400_000)):
        sink.write("a", 1, [packet])
    assert sink.output.queued > 190_000 and sink.lost_packets, "the queue is full"
    packets = second.open()
    sink.write("b" * 200, 1, [packets[0]])  # its interface block does not fit
    data = bytearray()
    os.set_blocking(reader, False)
    while len(data) < 120_000:  # room again, but not drained
        data += _read_available(reader)
        sink.output.drain()
    for packet in packets[1:]:
        sink.write("b" * 200, 1, [packet])
    while sink.output.queue or sink.lost_packets:
        data += _read_available(reader)
        sink.output.drain()
    for packet in second.send(Peer.CLIENT, b"after"):
        sink.write("b" * 200, 1, [packet])
    while sink.output.queue:
        data += _read_available(reader)
        sink.output.drain()
    data += _read_available(reader)
    os.close(writer)
    os.close(reader)
    (tmp_path / "capture.pcapng").write_bytes(data)
    assert warnings == ["pcap_dropped"]
    names = ["-e", "frame.section_number", "-e", "frame.interface_name", "-e", "ip.src"]
    rows = run_tshark(tshark, "-r", str(tmp_path / "capture.pcapng"), "-T", "fields", *names).splitlines()
    assert {row.split("\t")[0] for row in rows} == {"1"}, "one section"
    assert "\t".join(["1", "b" * 200, "10.0.0.3"]) in rows, "the second listener's packets after the recovery"
