"""Fault injection end to end: slow, stalled, resetting and garbage-sending peers on both sides.

One `pairproxy run` per data path (spliced and copied) serves a route table with a listener
per kind of peer; the upstreams are real loopback servers whose behaviour a client picks with
its first line (see Script). Each scenario is a function that plays the bad peer, asserts what
the other side saw, and returns the access-log `result`/`reason` it must produce; the tests run
them one by one (then check that the proxy is back to its descriptor count and still forwards a
fresh connection), in loops, and all at once in a storm.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import random
import select
import socket
import ssl
import struct
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests.support import (
    WAIT,
    PeakRss,
    ProxyProcess,
    Upstream,
    echo_handler,
    logfmt,
    pattern,
    recv_all,
    recv_exactly,
    splicing,
    wait_until,
)

KiB, MiB = 1024, 1024 * 1024
BUFFER_SIZE = 16 * KiB  # small, so that holding a peer's bytes would show in the RSS
IDLE = 1.0  # idle_timeout and connect_timeout of the listeners where peers stall
SLOW_IDLE = 5.0  # the listener for slow peers: slow is not idle
PROMPT = 3.0  # "at once", on a loaded machine: how soon the other side must see a fault
BLOCK = pattern(MiB)

LISTENERS = [
    "echo",
    "recorded",
    "script",
    "slow",
    "reset-before-bytes",
    "reset-on-accept",
    "proxied",
    "proxied-patient",
    "tls",
    "tls-slow",
    "sni",
    "sni-strict",
    "tls-out",
    "proxied-equal",
    "sni-equal",
    "tls-equal",
    "reset-or-good",
]


def rst_close(sock: socket.socket) -> None:
    """Close so that the peer gets a reset (SO_LINGER 0), not an orderly end."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def stream(size: int) -> Iterator[memoryview]:
    """`pattern(size)` in pieces of at most 64 KiB, without making it whole."""
    view = memoryview(BLOCK)
    sent = 0
    while sent < size:
        piece = min(size - sent, 64 * KiB)
        offset = sent % MiB
        piece = min(piece, MiB - offset)
        yield view[offset : offset + piece]
        sent += piece


def pattern_digest(size: int) -> str:
    digest = hashlib.sha256()
    for piece in stream(size):
        digest.update(piece)
    return digest.hexdigest()


def read_end(sock: socket.socket, timeout: float = WAIT) -> tuple[str, bytes]:
    """Read until the end: ("eof" or "reset", the bytes that came first)."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while data := sock.recv(1 << 20):
            chunks.append(data)
    except ConnectionResetError:
        return "reset", b"".join(chunks)
    return "eof", b"".join(chunks)


def send_and_end(sock: socket.socket, data: bytes) -> bool:
    """Send `data` and half-close, unless the proxy has closed on us already (it may, as soon
    as the first bytes settle the connection's fate): what it did then is the test's business.

    True when the send itself met the proxy's reset. The kernel reports a reset once: a read
    after it finds only the end of the stream, so the caller must count the reset from here."""
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
            raise
        return exc.errno == errno.ECONNRESET
    return False


def wait_hangup(sock: socket.socket, timeout: float) -> bool:
    """True once the peer closed or reset the connection, without reading a byte of it."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    return bool(poller.poll(timeout * 1000))


def client_hello(server_name: str) -> bytes:
    """The first flight of a real TLS client, as it would go on the wire."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def oversized_client_hello() -> bytes:
    """Handshake records announcing a 1 MiB ClientHello: past every limit on ClientHello size."""
    message = b"\x01" + (MiB).to_bytes(3, "big") + b"\x03\x03" + bytes(16 * KiB - 6)
    records = [message] + [bytes(16 * KiB)] * 3
    return b"".join(b"\x16\x03\x01" + len(record).to_bytes(2, "big") + record for record in records)


def garbage(seed: int, size: int = KiB) -> bytes:
    return random.Random(seed).randbytes(size)


# -- upstream servers ------------------------------------------------------------------------


class Outcomes:
    """How each connection of an upstream ended, by key, with the time it ended."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, float]] = {}
        self._cond = threading.Condition()

    def note(self, key: str, outcome: str) -> None:
        with self._cond:
            self.seen[key] = (outcome, time.monotonic())
            self._cond.notify_all()

    def wait(self, key: str, timeout: float = WAIT) -> tuple[str, float]:
        """(outcome, when) for KEY; AssertionError if that connection has not ended in time."""
        with self._cond:
            if not self._cond.wait_for(lambda: key in self.seen, timeout):
                raise AssertionError(f"the upstream has not seen the end of {key} in {timeout}s")
            return self.seen[key]


class Script(Outcomes):
    """The scripted upstream: the first line a client sends, `VERB TOKEN ARGS...`, says how it
    behaves. How it saw the proxy in the end (`eof`, `reset`, `closed`...) is kept under TOKEN
    with the time, so that a test can tell what the other side of its fault saw, and when."""

    def __init__(self) -> None:
        super().__init__()
        self._tokens = itertools.count()
        self._released: dict[str, threading.Event] = {}

    def token(self) -> str:
        token = f"t{next(self._tokens)}"
        self._released[token] = threading.Event()
        return token

    def release(self, token: str) -> None:
        """Let a stalled connection (`stall`) go on."""
        self._released[token].set()

    def __call__(self, conn: socket.socket) -> None:
        line = bytearray()
        while not line.endswith(b"\n"):
            byte = conn.recv(1)
            if not byte:
                return
            line += byte
        verb, token, *args = line.decode().split()
        try:
            outcome = getattr(self, f"do_{verb}")(conn, token, *map(int, args))
        except (ConnectionResetError, BrokenPipeError):
            outcome = "reset"
        self.note(token, outcome)

    @staticmethod
    def _until_eof(conn: socket.socket) -> str:
        while conn.recv(65536):
            pass
        return "eof"

    def do_source(self, conn: socket.socket, _token: str, size: int) -> str:
        for piece in stream(size):
            conn.sendall(piece)
        conn.shutdown(socket.SHUT_WR)
        return self._until_eof(conn)

    def do_trickle(self, conn: socket.socket, _token: str, size: int, delay_ms: int) -> str:
        for byte in stream(size):
            for index in range(len(byte)):
                conn.sendall(byte[index : index + 1])
                time.sleep(delay_ms / 1000)
        conn.shutdown(socket.SHUT_WR)
        return self._until_eof(conn)

    def do_sink(self, conn: socket.socket, _token: str, bytewise: int) -> str:
        """Read to EOF (the first `bytewise` bytes one at a time), then answer `LENGTH SHA256`."""
        digest, total = hashlib.sha256(), 0
        while total < bytewise and (byte := conn.recv(1)):
            digest.update(byte)
            total += 1
        while data := conn.recv(1 << 20):
            digest.update(data)
            total += len(data)
        conn.sendall(f"{total} {digest.hexdigest()}\n".encode())
        return "eof"

    def do_stall(self, conn: socket.socket, token: str) -> str:
        """Neither read nor write until the proxy closes or resets (which a peer only learns
        this way when no bytes for it are stuck in the proxy's socket: the FIN goes after them)
        or the test releases it; then read to the end."""
        deadline = time.monotonic() + 2 * WAIT
        while not self._released[token].is_set() and time.monotonic() < deadline:
            if wait_hangup(conn, 0.05):
                self._until_eof(conn)
                return "closed"
        self._until_eof(conn)
        return "stalled, then eof"

    def do_reset_after_send(self, conn: socket.socket, _token: str, size: int) -> str:
        for piece in stream(size):
            conn.sendall(piece)
        rst_close(conn)
        return "sent, then reset"

    def do_reset_after_receive(self, conn: socket.socket, _token: str, size: int) -> str:
        recv_exactly(conn, size)
        rst_close(conn)
        return "received, then reset"


class Recorder(Outcomes):
    """An echo server behind a PROXY v1 header: notes how each client's connection ended
    (`eof` or `reset`), by the client's HOST:PORT the header names."""

    def __call__(self, conn: socket.socket) -> None:
        client = read_proxy_header(conn)
        try:
            echo_handler(conn)
            outcome = "eof"
        except (ConnectionResetError, BrokenPipeError):
            outcome = "reset"
        self.note(client, outcome)


def read_proxy_header(conn: socket.socket) -> str:
    """The client's HOST:PORT from the PROXY v1 header the proxy sends first."""
    header = bytearray()
    while not header.endswith(b"\r\n"):
        byte = conn.recv(1)
        if not byte:
            raise ConnectionResetError("closed inside the PROXY header")
        header += byte
    _, _, source, _, port, _ = header.decode().split()
    return f"{source}:{port}"


def tagged(conn: socket.socket) -> None:
    """The fallback of the SNI listeners: says `plain`, then echoes."""
    conn.sendall(b"plain")
    echo_handler(conn)


def reset_on_accept(conn: socket.socket) -> None:
    rst_close(conn)


def reset_before_a_byte(conn: socket.socket) -> None:
    """Resets once the proxy has handled its connect (its PROXY header proves it), before any
    payload byte either way."""
    read_proxy_header(conn)
    rst_close(conn)


def garbage_speaker(conn: socket.socket) -> None:
    """Takes the proxy's ClientHello and answers with random bytes instead of a ServerHello."""
    conn.recv(65536)
    conn.sendall(garbage(conn.getpeername()[1]))
    while conn.recv(65536):
        pass


# -- the proxy under test --------------------------------------------------------------------


class Client(socket.socket):
    """A client socket that knows the listener it connected to."""

    listener = ""


def who(client: Client) -> str:
    """`LISTENER HOST:PORT`: one client in the access log (a port is only unique per listener)."""
    return f"{client.listener} {local_address(client)}"


def local_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


@dataclass
class Expect:
    """What the access line of one client (see `who`) must say: `result`, and if given `reason`
    (a prefix) and the byte counts."""

    client: str
    result: str
    reason: str | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None


class Env:
    """One running proxy, its upstreams, and how to find the access line of a client."""

    def __init__(
        self, proxy: ProxyProcess, script: Script, recorder: Recorder, ca: str, servers: dict[str, str]
    ) -> None:
        self.proxy = proxy
        self.servers = servers  # the upstream servers' addresses, by handler name
        self.client_tls = ssl.create_default_context(cafile=ca)
        self.script = script
        self.recorder = recorder
        self.addresses = {name: proxy.listener_address(name) for name in LISTENERS}
        self._parsed = 0
        self._access: dict[str, list[tuple[int, dict[str, str]]]] = {}  # who: (line index, fields)
        self._connected_at: dict[str, int] = {}  # who: the number of log lines before it connected
        self._lock = threading.Lock()
        self.warm_up()
        self.baseline = proxy.fd_count()

    def client(self, listener: str, timeout: float = WAIT, rcvbuf: int | None = None) -> Client:
        """A client socket for `listener`, bound (so that `who` knows it) but not connected yet;
        `rcvbuf` sets its receive buffer before the handshake."""
        mark = len(self.proxy.lines)
        held: list[Client] = []  # sockets on ports used before, kept bound so the next bind differs
        try:
            while True:
                sock = Client()
                sock.listener = listener
                try:
                    if rcvbuf is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                    sock.settimeout(timeout)
                    sock.bind(("127.0.0.1", 0))
                except BaseException:
                    sock.close()
                    raise
                with self._lock:
                    # A port a client reset a moment ago is free at once, but its access line may
                    # still be on its way: one port, one client, for the life of the proxy.
                    if who(sock) not in self._connected_at:
                        self._connected_at[who(sock)] = mark
                        return sock
                held.append(sock)
        finally:
            for sock in held:
                sock.close()

    def connect(self, listener: str, timeout: float = WAIT, rcvbuf: int | None = None) -> Client:
        """A client connected to `listener`."""
        sock = self.client(listener, timeout, rcvbuf)
        try:
            sock.connect(self.addresses[listener])
        except BaseException:
            sock.close()
            raise
        return sock

    def access_for(self, client: str, timeout: float = WAIT) -> dict[str, str]:
        """The access line of `client` (see `who`) once there is one."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                lines = self.proxy.lines
                end = len(lines)
                for index in range(self._parsed, end):
                    if " access " in lines[index]:
                        fields = logfmt(lines[index])
                        key = f"{fields['listener']} {fields['client']}"
                        self._access.setdefault(key, []).append((index, fields))
                self._parsed = end
                # An earlier client may have had the same port: only lines after our connect count.
                since = self._connected_at.get(client, 0)
                found = next((fields for index, fields in self._access.get(client, []) if index >= since), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no access line for {client} in {timeout}s:\n" + self.proxy.log_text()[-3000:])
            time.sleep(0.02)

    def check(self, expect: Expect, timeout: float = WAIT) -> dict[str, str]:
        line = self.access_for(expect.client, timeout)
        assert line["result"] == expect.result, line
        if expect.reason is not None:
            assert line.get("reason", "").startswith(expect.reason), line
        for key in ("bytes_up", "bytes_down"):
            if getattr(expect, key) is not None:
                assert line[key] == str(getattr(expect, key)), line
        return line

    def round_trip(self) -> None:
        """A fresh, well-behaved connection is forwarded, both ways, to a clean end."""
        with self.connect("echo") as client:
            name = who(client)
            client.sendall(b"fresh")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"fresh"
        self.check(Expect(name, "closed"))

    def warm_up(self) -> None:
        for _ in range(3):
            self.round_trip()

    @contextlib.contextmanager
    def recovers(self) -> Iterator[None]:
        """Around a scenario: afterwards the descriptor count is back and a fresh client works."""
        # A scenario before may still be closing (or may have leaked: then count from here).
        wait_until(lambda: self.proxy.fd_count() == self.baseline, timeout=2)
        before = self.proxy.fd_count()
        yield
        assert wait_until(lambda: self.proxy.fd_count() == before), f"{self.proxy.fd_count()} fds, was {before}"
        self.round_trip()
        assert self.proxy.proc.poll() is None


def route_table(upstreams: dict[str, Upstream], pki: dict[str, str]) -> str:
    def at(name: str) -> str:
        return upstreams[name].address

    return textwrap.dedent(
        f"""\
        defaults:
          idle_timeout: {IDLE}
          connect_timeout: {IDLE}
          buffer_size: {BUFFER_SIZE}
        upstreams:
          garbage:
            servers: ["{at("garbage")}"]
            tls: {{ca: "{pki["ca"]}", server_name: upstream.test}}
          recorder:
            servers: ["{at("recorder")}"]
            proxy_protocol: v1
          reset-before-bytes:
            servers: ["{at("reset")}"]
            proxy_protocol: v1
          reset-then-good:
            servers: ["{at("reset-on-accept")}", "{at("echo")}"]
            balance: first
        listeners:
          - {{name: echo, listen: "127.0.0.1:0", upstream: "{at("echo")}", idle_timeout: 10s}}
          - {{name: recorded, listen: "127.0.0.1:0", upstream: recorder}}
          - {{name: script, listen: "127.0.0.1:0", upstream: "{at("script")}"}}
          - {{name: slow, listen: "127.0.0.1:0", upstream: "{at("script")}", idle_timeout: {SLOW_IDLE}}}
          - {{name: reset-before-bytes, listen: "127.0.0.1:0", upstream: reset-before-bytes}}
          - {{name: reset-on-accept, listen: "127.0.0.1:0", upstream: "{at("reset-on-accept")}"}}
          - {{name: reset-or-good, listen: "127.0.0.1:0", upstream: reset-then-good}}
          - name: proxied
            listen: "127.0.0.1:0"
            accept_proxy_protocol: true
            idle_timeout: 10s  # a stall in the preamble is connect_timeout's business
            upstream: "{at("echo")}"
          - name: proxied-patient
            listen: "127.0.0.1:0"
            accept_proxy_protocol: true
            connect_timeout: 10s
            upstream: "{at("echo")}"
          - name: tls
            listen: "127.0.0.1:0"
            tls: {{cert: "{pki["proxy.pem"]}", key: "{pki["proxy.key"]}"}}
            idle_timeout: 10s
            upstream: "{at("echo")}"
          - name: tls-slow
            listen: "127.0.0.1:0"
            tls: {{cert: "{pki["proxy.pem"]}", key: "{pki["proxy.key"]}"}}
            idle_timeout: {SLOW_IDLE}
            upstream: "{at("script")}"
          - name: sni
            listen: "127.0.0.1:0"
            idle_timeout: 10s
            routes:
              - {{match: {{sni: a.test}}, upstream: "{at("echo")}"}}
              - upstream: "{at("tagged")}"
          - name: sni-strict
            listen: "127.0.0.1:0"
            idle_timeout: 10s
            routes:
              - {{match: {{sni: a.test}}, upstream: "{at("echo")}"}}
          - {{name: tls-out, listen: "127.0.0.1:0", upstream: garbage}}
          # idle_timeout as long as connect_timeout: a stall in the preamble must still say so
          - {{name: proxied-equal, listen: "127.0.0.1:0", accept_proxy_protocol: true, upstream: "{at("echo")}"}}
          - name: sni-equal
            listen: "127.0.0.1:0"
            routes:
              - {{match: {{sni: a.test}}, upstream: "{at("echo")}"}}
              - upstream: "{at("tagged")}"
          - name: tls-equal
            listen: "127.0.0.1:0"
            tls: {{cert: "{pki["proxy.pem"]}", key: "{pki["proxy.key"]}"}}
            upstream: "{at("echo")}"
        """
    )


@pytest.fixture(scope="module")
def envs(pki, tmp_path_factory):
    """{"splice": Env, "copy": Env}: the same table served both ways bytes can move."""
    script, recorder = Script(), Recorder()
    handlers = {
        "echo": echo_handler,
        "recorder": recorder,
        "script": script,
        "reset": reset_before_a_byte,
        "reset-on-accept": reset_on_accept,
        "tagged": tagged,
        "garbage": garbage_speaker,
    }
    upstreams = {name: Upstream(handler) for name, handler in handlers.items()}
    folder = tmp_path_factory.mktemp("bad-peers")
    path = folder / "pairproxy.yaml"
    path.write_text(route_table(upstreams, pki))
    proxies = []
    try:
        result = {}
        for data_path in ("splice", "copy"):
            proxy = ProxyProcess(
                ["run", "-c", str(path)], folder, wait_listening=len(LISTENERS), env=splicing(data_path)
            )
            proxies.append(proxy)
            servers = {name: upstream.address for name, upstream in upstreams.items()}
            result[data_path] = Env(proxy, script, recorder, pki["ca"], servers)
        yield result
    finally:
        for proxy in proxies:
            proxy.kill()
        for upstream in upstreams.values():
            upstream.close()


@pytest.fixture
def env(envs):
    return envs["splice"]


# -- scenarios: each plays one bad peer and says what the access line must be -----------------


def slow_reader_client(env: Env, size: int = 32 * MiB, bytewise: int = 128 * KiB) -> Expect:
    """A client that reads a big download one byte at a time (then, to keep the test short,
    the rest in big reads): every byte arrives, in order."""
    token = env.script.token()
    command = f"source {token} {size}\n".encode()
    with env.connect("slow") as client:
        name = who(client)
        client.sendall(command)
        digest = hashlib.sha256()
        for _ in range(bytewise):
            digest.update(client.recv(1))
        total = bytewise
        while data := client.recv(1 << 20):
            digest.update(data)
            total += len(data)
        assert (total, digest.hexdigest()) == (size, pattern_digest(size))
    assert env.script.wait(token)[0] == "eof"
    return Expect(name, "closed", bytes_up=len(command), bytes_down=size)


def slow_reader_upstream(env: Env, size: int = 32 * MiB, bytewise: int = 128 * KiB) -> Expect:
    """An upstream that reads a big upload one byte at a time (then the rest in big reads)."""
    token = env.script.token()
    command = f"sink {token} {bytewise}\n".encode()
    answer = f"{size} {pattern_digest(size)}\n".encode()
    with env.connect("slow") as client:
        name = who(client)
        client.sendall(command)
        for piece in stream(size):
            client.sendall(piece)
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == answer
    return Expect(name, "closed", bytes_up=len(command) + size, bytes_down=len(answer))


def slow_reader_tls_client(env: Env, size: int = 8 * MiB, bytewise: int = 64 * KiB) -> Expect:
    """The slow reader behind TLS: the proxy decrypts and encrypts, and still holds little."""
    token = env.script.token()
    command = f"source {token} {size}\n".encode()
    with env.connect("tls-slow") as raw:
        name = who(raw)
        with env.client_tls.wrap_socket(raw, server_hostname="proxy.test") as client:
            client.sendall(command)
            digest = hashlib.sha256()
            for _ in range(bytewise):
                digest.update(client.recv(1))
            total = bytewise
            while data := client.recv(1 << 20):
                digest.update(data)
                total += len(data)
            assert (total, digest.hexdigest()) == (size, pattern_digest(size))
            client.unwrap()  # our close_notify: an orderly end both ways
    assert env.script.wait(token)[0] == "eof"
    return Expect(name, "closed", bytes_up=len(command), bytes_down=size)


def trickling_upstream(env: Env, size: int = 300, delay_ms: int = 2) -> Expect:
    token = env.script.token()
    with env.connect("slow") as client:
        name = who(client)
        client.sendall(f"trickle {token} {size} {delay_ms}\n".encode())
        assert recv_all(client) == pattern(size)
    return Expect(name, "closed", bytes_down=size)


def trickling_client(env: Env, size: int = 300, delay_ms: int = 2) -> Expect:
    token = env.script.token()
    command = f"sink {token} 0\n".encode()
    data = pattern(size)
    with env.connect("slow") as client:
        name = who(client)
        client.sendall(command)
        for index in range(size):
            client.sendall(data[index : index + 1])
            time.sleep(delay_ms / 1000)
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == f"{size} {hashlib.sha256(data).hexdigest()}\n".encode()
    return Expect(name, "closed", bytes_up=len(command) + size)


def stalled_client(env: Env, size: int = 64 * MiB) -> Expect:
    """A client that asks for 64 MiB and never reads: idle once the kernel stops taking bytes."""
    token = env.script.token()
    started = time.monotonic()  # the proxy may accept later, never sooner
    with env.connect("script", rcvbuf=64 * KiB) as client:
        name = who(client)
        client.sendall(f"source {token} {size}\n".encode())
        line = env.access_for(name, timeout=8 * IDLE)
        assert 0.8 * IDLE < time.monotonic() - started < 8 * IDLE
        assert int(line["bytes_down"]) < size
        outcome, when = env.script.wait(token)
        assert outcome == "reset"  # its send failed: the proxy closed with unread bytes
        assert when - started < 8 * IDLE + PROMPT
    return Expect(name, "timeout", "idle")


def stalled_upstream(env: Env, size: int = 64 * MiB) -> Expect:
    """An upstream that never reads while the client sends 64 MiB."""
    token = env.script.token()
    started = time.monotonic()  # the proxy may accept later, never sooner
    with env.connect("script") as client:
        name = who(client)
        client.sendall(f"stall {token}\n".encode())
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for piece in stream(size):
                client.sendall(piece)  # fills the buffers, then the proxy gives up: a reset
        assert 0.8 * IDLE < time.monotonic() - started < 8 * IDLE
    # Bytes for it are stuck in the proxy's socket: it learns of the end once it reads again.
    env.script.release(token)
    assert env.script.wait(token)[0] == "stalled, then eof"
    return Expect(name, "timeout", "idle")


def silent_pair(env: Env) -> Expect:
    """A client that connects and sends nothing, to an upstream that sends nothing."""
    started = time.monotonic()  # the proxy may accept later, never sooner
    with env.connect("recorded") as client:
        name, address = who(client), local_address(client)
        assert read_end(client) == ("eof", b"")
        assert 0.8 * IDLE < time.monotonic() - started < 4 * IDLE
    assert env.recorder.wait(address)[0] == "eof"
    return Expect(name, "timeout", "idle")


def unanswering_upstream(env: Env) -> Expect:
    """An upstream that accepts and never answers the client's request."""
    token = env.script.token()
    started = time.monotonic()  # the proxy may accept later, never sooner
    with env.connect("script") as client:
        name = who(client)
        client.sendall(f"stall {token}\nGET / HTTP/1.0\r\n\r\n".encode())
        assert read_end(client) == ("eof", b"")
        assert 0.8 * IDLE < time.monotonic() - started < 4 * IDLE
    assert env.script.wait(token)[0] == "closed"
    return Expect(name, "timeout", "idle")


def stalled_in_proxy_header(env: Env, listener: str = "proxied") -> Expect:
    started = time.monotonic()  # the proxy may accept later, never sooner
    with env.connect(listener) as client:
        name = who(client)
        client.sendall(b"PROXY TCP4 192.0.2.1 ")
        assert read_end(client) == ("eof", b"")
        assert 0.8 * IDLE < time.monotonic() - started < 4 * IDLE
    return Expect(name, "timeout", "no complete PROXY header")


def slow_proxy_header(env: Env) -> Expect:
    """A PROXY header a byte at a time, slower than connect_timeout allows: the bound is on the
    whole header, not on each byte."""
    header = b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\n"
    started = time.monotonic()  # the proxy may accept later, never sooner
    with env.connect("proxied") as client:
        name = who(client)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for byte in header:  # 4 s at this pace
                client.sendall(bytes([byte]))
                time.sleep(IDLE / 10)
        assert read_end(client)[0] in ("eof", "reset")
        assert 0.8 * IDLE < time.monotonic() - started < 4 * IDLE
    return Expect(name, "timeout", "no complete PROXY header")


def stalled_in_tls_handshake(env: Env, listener: str = "tls") -> Expect:
    """Half a ClientHello to a TLS-terminating listener, then nothing."""
    hello = client_hello("proxy.test")
    started = time.monotonic()  # the proxy may accept later, never sooner
    with env.connect(listener) as client:
        name = who(client)
        client.sendall(hello[: len(hello) // 2])
        assert read_end(client)[0] in ("eof", "reset")
        assert 0.8 * IDLE < time.monotonic() - started < 4 * IDLE
    return Expect(name, "timeout", "client: TLS handshake not complete in time")


def client_ends_inside_client_hello(env: Env, listener: str = "sni", size: int = 20) -> Expect:
    """The first `size` bytes of a ClientHello, then the client's half-close: no ClientHello
    will ever be parsable, so it takes the default route at once, which gets its bytes and then
    its EOF (and answers), or it is closed if there is none. Without a byte sent, it is a client
    that said nothing and left (a health check): closed, `reason=silent`, no upstream bothered."""
    part = client_hello("a.test")[:size]
    with env.connect(listener) as client:
        name = who(client)
        started = time.monotonic()
        send_and_end(client, part)
        end, data = read_end(client)
        assert time.monotonic() - started < PROMPT  # at once, not after connect_timeout
    if not part:
        assert (end, data) == ("eof", b"")
        return Expect(name, "closed", "silent", bytes_up=0, bytes_down=0)
    if listener == "sni-strict":
        assert (end, data) == ("eof", b"")
        return Expect(name, "no_route", "eof", bytes_up=0)
    assert (end, data) == ("eof", b"plain" + part)
    return Expect(name, "closed", "eof", bytes_up=size, bytes_down=5 + size)


def client_ends_inside_proxy_header(env: Env) -> Expect:
    """Part of a PROXY header, then the client's half-close: without the header the client
    cannot be told apart from its load balancer, so it is refused."""
    with env.connect("proxied") as client:
        name = who(client)
        send_and_end(client, PREAMBLES["proxied"])
        assert read_end(client) == ("eof", b"")
    return Expect(name, "protocol_error", "the client closed before sending a complete PROXY header")


def stalled_in_client_hello(env: Env, listener: str = "sni") -> Expect:
    """Half a ClientHello, then nothing: after connect_timeout the default route takes the
    client with what it sent, or it is closed when there is none."""
    hello = client_hello("a.test")
    half = hello[: len(hello) // 2]
    started = time.monotonic()  # the proxy may accept later, never sooner
    with env.connect(listener) as client:
        name = who(client)
        client.sendall(half)
        if listener == "sni-strict":
            assert read_end(client) == ("eof", b"")
            assert 0.8 * IDLE < time.monotonic() - started < 4 * IDLE
            return Expect(name, "no_route", "timeout")
        assert recv_exactly(client, 5 + len(half)) == b"plain" + half
        assert 0.8 * IDLE < time.monotonic() - started < 4 * IDLE
        client.shutdown(socket.SHUT_WR)
        assert read_end(client) == ("eof", b"")
    return Expect(name, "closed", "timeout")


PREAMBLES = {"proxied": b"PROXY TCP4 ", "sni": client_hello("a.test")[:20], "tls": client_hello("proxy.test")[:20]}


def client_reset_in_preamble(env: Env, listener: str = "proxied") -> Expect:
    """A reset while the proxy still reads what it routes by: a PROXY header, a ClientHello
    it peeks at, or one it answers (TLS termination)."""
    client = env.connect(listener)
    name = who(client)
    client.sendall(PREAMBLES[listener])
    time.sleep(0.05)  # so that the proxy is inside the preamble, not before it
    rst_close(client)
    return Expect(name, "reset", "client:")


def client_resets(env: Env, token: str, client: socket.socket, name: str) -> Expect:
    """The client resets mid-transfer: the upstream serving `token` must see the reset at once."""
    reset = time.monotonic()
    rst_close(client)
    outcome, when = env.script.wait(token)
    assert outcome == "reset" and when - reset < PROMPT
    return Expect(name, "reset", "client:")


def client_reset_downloading(env: Env) -> Expect:
    token = env.script.token()
    with env.connect("script") as client:
        name = who(client)
        client.sendall(f"source {token} {64 * MiB}\n".encode())
        assert len(recv_exactly(client, MiB)) == MiB
        return client_resets(env, token, client, name)


def client_reset_tls_downloading(env: Env) -> Expect:
    token = env.script.token()
    with env.connect("tls-slow") as raw:
        name = who(raw)
        client = env.client_tls.wrap_socket(raw, server_hostname="proxy.test")
        client.sendall(f"source {token} {64 * MiB}\n".encode())
        assert len(recv_exactly(client, MiB)) == MiB
        return client_resets(env, token, client, name)  # no close_notify: a bare reset under TLS


def client_reset_uploading(env: Env) -> Expect:
    token = env.script.token()
    with env.connect("script") as client:
        name = who(client)
        client.sendall(f"sink {token} 0\n".encode())
        for piece in stream(4 * MiB):
            client.sendall(piece)
        return client_resets(env, token, client, name)


def upstream_reset_downloading(env: Env) -> Expect:
    token = env.script.token()
    with env.connect("script") as client:
        name = who(client)
        client.sendall(f"reset_after_send {token} {4 * MiB}\n".encode())
        end, data = read_end(client)
        seen = time.monotonic()
        assert end == "reset" and len(data) <= 4 * MiB
        assert data == b"".join(stream(len(data)))
    assert seen - env.script.wait(token)[1] < PROMPT
    return Expect(name, "reset", "upstream:")


def upstream_reset_uploading(env: Env) -> Expect:
    token = env.script.token()
    with env.connect("script") as client:
        name = who(client)
        client.sendall(f"reset_after_receive {token} {MiB}\n".encode())
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for piece in itertools.cycle(stream(MiB)):
                client.sendall(piece)
        seen = time.monotonic()
    assert seen - env.script.wait(token)[1] < PROMPT
    return Expect(name, "reset", "upstream:")


def client_reset_before_a_byte(env: Env) -> Expect:
    client = env.connect("recorded")
    name, address = who(client), local_address(client)
    reset = time.monotonic()
    rst_close(client)
    outcome, when = env.recorder.wait(address)
    assert outcome == "reset" and when - reset < PROMPT
    return Expect(name, "reset", "client:")


def upstream_reset_before_a_byte(env: Env) -> Expect:
    with env.client("reset-before-bytes") as client:
        name = who(client)
        started = time.monotonic()
        try:
            client.connect(env.addresses["reset-before-bytes"])
        except ConnectionResetError:
            pass  # the reset came before this thread got back from connect()
        else:
            assert read_end(client) == ("reset", b"")
        assert time.monotonic() - started < PROMPT
    return Expect(name, "reset", "upstream:")


def server_resets_as_it_accepts(env: Env) -> Expect:
    """A server that resets the moment it accepts, and nothing else to try. The proxy learns of
    it one of two ways, whichever its loop sees first: the connect completed (the pair is open,
    and the reset is passed on: `reset`), or the reset is there already (SO_ERROR is ECONNRESET:
    a failed connect like a refusal, backed off from; with no other server the client is closed
    in order: `upstream_unreachable`). Nothing else."""
    with env.client("reset-on-accept") as client:
        name = who(client)
        started = time.monotonic()
        try:
            client.connect(env.addresses["reset-on-accept"])
        except ConnectionResetError:
            seen = "reset"  # the reset came before this thread got back from connect()
        else:
            seen, data = read_end(client)
            assert data == b""
        assert time.monotonic() - started < PROMPT
    line = env.access_for(name)
    if line["result"] == "reset":
        assert seen == "reset" and line["reason"].startswith("upstream:"), line
    else:
        assert (line["result"], line.get("reason"), seen) == ("upstream_unreachable", "connection reset by peer", "eof")
    return Expect(name, line["result"])


def first_server_resets_as_it_accepts(env: Env) -> Expect:
    """The pool's first server resets the moment it accepts, its second is good. A reset seen
    as a failed connect is retried on the good server: the client gets through. A reset seen
    after the connect completed ends an open pair: the client gets a reset, although no byte
    had passed either way (the proxy does not replay a client's bytes to another server)."""
    with env.client("reset-or-good") as client:
        name = who(client)
        try:
            client.connect(env.addresses["reset-or-good"])
        except ConnectionResetError:
            seen = ("reset", b"")  # the reset came before this thread got back from connect()
        else:
            reset_while_sending = send_and_end(client, b"hello")
            seen = read_end(client)
            if reset_while_sending:  # the proxy was quicker than this thread: its reset came first
                seen = ("reset", seen[1])
    line = env.access_for(name)
    if line["result"] == "reset":
        assert seen[0] == "reset" and line["server"] == env.servers["reset-on-accept"], line
        assert line["reason"].startswith("upstream:") and line["bytes_down"] == "0", line
    else:
        assert seen == ("eof", b"hello")
        assert (line["result"], line["server"]) == ("closed", env.servers["echo"]), line
    return Expect(name, line["result"])


def garbage_for_proxy_header(env: Env, seed: int = 0) -> Expect:
    """Refused at the first wrong byte, long before the listener's 10 s connect_timeout."""
    with env.connect("proxied-patient") as client:
        name = who(client)
        started = time.monotonic()
        client.sendall(garbage(seed, 64))
        assert read_end(client)[0] in ("eof", "reset")
        assert time.monotonic() - started < PROMPT
    return Expect(name, "protocol_error", "PROXY header:")


def garbage_for_client_hello(env: Env, seed: int = 0) -> Expect:
    """Random bytes to a TLS-terminating listener: a handshake failure (an alert, at most)."""
    with env.connect("tls") as client:
        name = who(client)
        client.sendall(garbage(seed))
        _, data = read_end(client)
        assert data[:1] in (b"", b"\x15")  # nothing, or a TLS alert record
    return Expect(name, "tls_error", "client:")


def garbage_to_passthrough(env: Env, seed: int = 0, listener: str = "sni") -> Expect:
    noise = garbage(seed)
    with env.connect(listener) as client:
        name = who(client)
        send_and_end(client, noise)
        if listener == "sni-strict":
            assert read_end(client)[0] in ("eof", "reset")
            return Expect(name, "no_route", "not_tls")
        assert read_end(client) == ("eof", b"plain" + noise)  # forwarded unchanged
    return Expect(name, "closed", "not_tls")


def garbage_from_upstream(env: Env) -> Expect:
    """An upstream that answers a TLS-originating proxy's ClientHello with random bytes."""
    with env.connect("tls-out") as client:
        name = who(client)
        client.sendall(b"hello")
        started = time.monotonic()
        assert read_end(client) in (("eof", b""), ("reset", b""))
        assert time.monotonic() - started < PROMPT
    return Expect(name, "tls_error", "upstream:")


def oversized_hello(env: Env, listener: str = "sni") -> Expect:
    """A ClientHello announced at 1 MiB: passthrough gives up peeking and takes the default
    route with the bytes unchanged; a terminating listener fails the handshake."""
    hello = oversized_client_hello()
    with env.connect(listener) as client:
        name = who(client)
        send_and_end(client, hello)
        end, data = read_end(client)
    if listener == "tls":
        assert data[:1] in (b"", b"\x15")
        return Expect(name, "tls_error", "client:")
    assert (end, data) == ("eof", b"plain" + hello)
    return Expect(name, "closed", "clienthello_too_large")


Scenario = Callable[[Env], Expect]


def run(env: Env, scenario: Scenario) -> dict[str, str]:
    """One scenario, alone: its access line, then the proxy recovers."""
    with env.recovers():
        line = env.check(scenario(env))
    return line


# -- slow peers ------------------------------------------------------------------------------


@pytest.mark.parametrize("data_path", ["splice", "copy"])
@pytest.mark.parametrize("scenario", [slow_reader_client, slow_reader_upstream], ids=["client", "upstream"])
def test_a_slow_reader_gets_every_byte_and_memory_stays_bounded(envs, data_path, scenario):
    env = envs[data_path]
    with PeakRss(env.proxy.pid) as rss:
        run(env, scenario)
    # 32 MiB went through a 16 KiB buffer_size: the proxy holds a few buffers, not the flow.
    assert rss.growth < 8 * 1024, f"RSS grew by {rss.growth} KiB"


def test_a_slow_tls_reader_gets_every_byte_and_memory_stays_bounded(env):
    with PeakRss(env.proxy.pid) as rss:
        run(env, slow_reader_tls_client)
    assert rss.growth < 8 * 1024, f"RSS grew by {rss.growth} KiB"


@pytest.mark.parametrize("data_path", ["splice", "copy"])
@pytest.mark.parametrize("scenario", [stalled_client, stalled_upstream], ids=["client", "upstream"])
def test_a_peer_that_never_reads_times_out_idle_with_memory_bounded(envs, data_path, scenario):
    env = envs[data_path]
    with PeakRss(env.proxy.pid) as rss:
        run(env, scenario)
    assert rss.growth < 8 * 1024, f"RSS grew by {rss.growth} KiB"


@pytest.mark.parametrize("data_path", ["splice", "copy"])
@pytest.mark.parametrize(
    "scenario",
    [client_reset_downloading, client_reset_uploading, upstream_reset_downloading, upstream_reset_uploading],
    ids=["client-downloading", "client-uploading", "upstream-downloading", "upstream-uploading"],
)
def test_a_reset_mid_transfer_resets_the_other_side(envs, data_path, scenario):
    run(envs[data_path], scenario)


# -- one bad peer, alone ---------------------------------------------------------------------
# Each row: what the peer does; the scenario asserts what the other side saw and names the
# access line it must produce (a stall in a preamble with idle_timeout equal to
# connect_timeout gives its own reason: the idle clock does not run during admission).

ALONE: dict[str, Scenario] = {
    "trickling-upstream": trickling_upstream,
    "trickling-client": trickling_client,
    "tls-client-reset-mid-transfer": client_reset_tls_downloading,
    "silent-pair": silent_pair,
    "silent-upstream": unanswering_upstream,
    "stalled-in-proxy-header": stalled_in_proxy_header,
    "proxy-header-a-byte-at-a-time": slow_proxy_header,
    "stalled-in-client-hello-sni": stalled_in_client_hello,
    "stalled-in-client-hello-sni-strict": lambda e: stalled_in_client_hello(e, "sni-strict"),
    "stalled-in-tls-handshake": stalled_in_tls_handshake,
    "stalled-in-proxy-header-idle-as-short": lambda e: stalled_in_proxy_header(e, "proxied-equal"),
    "stalled-in-client-hello-idle-as-short": lambda e: stalled_in_client_hello(e, "sni-equal"),
    "stalled-in-tls-handshake-idle-as-short": lambda e: stalled_in_tls_handshake(e, "tls-equal"),
    "ends-inside-client-hello-sni-part": lambda e: client_ends_inside_client_hello(e, "sni", 20),
    "ends-inside-client-hello-sni-nothing": lambda e: client_ends_inside_client_hello(e, "sni", 0),
    "ends-inside-client-hello-sni-strict-part": lambda e: client_ends_inside_client_hello(e, "sni-strict", 20),
    "ends-inside-client-hello-sni-strict-nothing": lambda e: client_ends_inside_client_hello(e, "sni-strict", 0),
    "ends-inside-proxy-header": client_ends_inside_proxy_header,
    "client-reset-before-a-byte": client_reset_before_a_byte,
    "upstream-reset-before-a-byte": upstream_reset_before_a_byte,
    "oversized-client-hello-sni": oversized_hello,
    "oversized-client-hello-tls": lambda e: oversized_hello(e, "tls"),
}


@pytest.mark.parametrize("scenario", ALONE.values(), ids=ALONE.keys())
def test_a_bad_peer_alone_ends_with_its_access_line_and_the_proxy_recovers(env, scenario):
    run(env, scenario)


# -- one bad peer, over and over -------------------------------------------------------------
# Each row: the scenario (given the round's number, a seed for the garbage ones) and how many
# rounds; nothing may leak between them.

REPEATED: dict[str, tuple[Callable[[Env, int], Expect], int]] = {
    "reset-in-proxy-header": (lambda e, _: client_reset_in_preamble(e, "proxied"), 20),
    "reset-in-client-hello": (lambda e, _: client_reset_in_preamble(e, "sni"), 20),
    "reset-in-tls-handshake": (lambda e, _: client_reset_in_preamble(e, "tls"), 20),
    "resets-before-any-byte": (
        lambda e, i: (client_reset_before_a_byte if i % 2 == 0 else upstream_reset_before_a_byte)(e),
        50,
    ),
    "server-resets-as-it-accepts": (lambda e, _: server_resets_as_it_accepts(e), 50),
    "first-server-resets-as-it-accepts-then-retried": (lambda e, _: first_server_resets_as_it_accepts(e), 50),
    "garbage-for-a-client-hello": (garbage_for_client_hello, 50),
    "garbage-to-passthrough-sni": (lambda e, seed: garbage_to_passthrough(e, seed, "sni"), 50),
    "garbage-to-passthrough-sni-strict": (lambda e, seed: garbage_to_passthrough(e, seed, "sni-strict"), 50),
    "garbage-from-an-upstream": (lambda e, _: garbage_from_upstream(e), 20),
}


@pytest.mark.parametrize(("scenario", "rounds"), REPEATED.values(), ids=REPEATED.keys())
def test_a_bad_peer_over_and_over_leaks_nothing(env, scenario, rounds):
    with env.recovers():
        for round_number in range(rounds):
            env.check(scenario(env, round_number))


def test_garbage_instead_of_a_proxy_header_is_refused_at_once(env):
    with env.recovers():
        for seed in range(50):
            line = env.check(garbage_for_proxy_header(env, seed))
            assert int(line["duration_ms"]) < PROMPT * 1000


# -- everything at once ----------------------------------------------------------------------

STORM: list[Scenario] = [
    lambda e: slow_reader_client(e, size=2 * MiB, bytewise=4 * KiB),
    lambda e: slow_reader_upstream(e, size=2 * MiB, bytewise=4 * KiB),
    lambda e: slow_reader_tls_client(e, size=2 * MiB, bytewise=4 * KiB),
    lambda e: trickling_upstream(e, size=50),
    lambda e: trickling_client(e, size=50),
    stalled_client,
    stalled_upstream,
    silent_pair,
    unanswering_upstream,
    stalled_in_proxy_header,
    slow_proxy_header,
    stalled_in_client_hello,
    lambda e: stalled_in_client_hello(e, "sni-strict"),
    stalled_in_tls_handshake,
    client_ends_inside_client_hello,
    lambda e: client_ends_inside_client_hello(e, "sni-strict"),
    client_ends_inside_proxy_header,
    client_reset_downloading,
    client_reset_tls_downloading,
    client_reset_uploading,
    upstream_reset_downloading,
    upstream_reset_uploading,
    client_reset_before_a_byte,
    upstream_reset_before_a_byte,
    server_resets_as_it_accepts,
    client_reset_in_preamble,
    lambda e: client_reset_in_preamble(e, "sni"),
    lambda e: client_reset_in_preamble(e, "tls"),
    garbage_for_proxy_header,
    garbage_for_client_hello,
    garbage_to_passthrough,
    lambda e: garbage_to_passthrough(e, 1, "sni-strict"),
    garbage_from_upstream,
    oversized_hello,
    lambda e: oversized_hello(e, "tls"),
]


def test_a_storm_of_bad_peers_leaves_the_proxy_as_it_was(env):
    """200 connections, every kind of bad peer at once; then the descriptors are back, memory
    grew by less than a generous bound, and a clean connection works."""
    scenarios = list(itertools.islice(itertools.cycle(STORM), 200))
    with env.recovers(), PeakRss(env.proxy.pid) as rss, ThreadPoolExecutor(len(scenarios)) as pool:
        expected = list(pool.map(lambda scenario: scenario(env), scenarios))
        lines = [env.access_for(expect.client) for expect in expected]
    wrong = [
        f"{expect.result} {expect.reason} expected, got {line['result']} {line.get('reason')} on {line['listener']}"
        for expect, line in zip(expected, lines, strict=True)
        if line["result"] != expect.result or not line.get("reason", "").startswith(expect.reason or "")
    ]
    assert not wrong, "\n".join(wrong)
    assert rss.growth < 32 * 1024, f"RSS grew by {rss.growth} KiB"
