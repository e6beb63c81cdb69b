"""Small real upstream servers on loopback or on a UNIX socket, a thread per connection, and
the handlers the tests give them."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable

from tests.support.net import pattern
from tests.support.waits import WAIT


class Upstream:
    """A real TCP server on loopback running `handler(conn)` in a thread per connection."""

    def __init__(self, handler: Callable[[socket.socket], None], host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        self.host = host
        self.port = sock.getsockname()[1]
        self._serve_on(sock, handler)

    def _serve_on(self, sock: socket.socket, handler: Callable[[socket.socket], None]) -> None:
        """Listen on the bound `sock` and accept on a thread until close()."""
        self.handler = handler
        self.sock = sock
        self.sock.listen(1024)
        self.sock.settimeout(0.2)
        self.accepted = 0
        self.errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.settimeout(WAIT * 3)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass  # the client went away: the test asserts on what it saw
        except BaseException as exc:  # reported to the test through .errors
            self.errors.append(exc)
        finally:
            conn.close()

    def close(self) -> None:
        self._stopping.set()
        self.sock.close()
        self._acceptor.join(WAIT)
        for thread in self._threads:
            thread.join(WAIT)


class UnixUpstream(Upstream):
    """`Upstream` listening on a UNIX socket (`path`, or an abstract name as b"\\0name")."""

    def __init__(self, handler: Callable[[socket.socket], None], path: str | bytes) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        self.path = path
        self._serve_on(sock, handler)

    @property
    def address(self) -> str:
        if isinstance(self.path, bytes):
            return f"unix:@{self.path[1:].decode()}"
        return f"unix:{self.path}"


def echo_handler(conn: socket.socket) -> None:
    """Echo until EOF, then half-close back."""
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


def tagged(tag: bytes) -> Callable[[socket.socket], None]:
    """An upstream that answers every connection with `tag`, then echoes."""

    def handler(conn: socket.socket) -> None:
        conn.sendall(tag)
        echo_handler(conn)

    return handler


def peer_reporter(conn: socket.socket) -> None:
    """An upstream that says which address and port the connection came from."""
    host, port = conn.getpeername()[:2]
    conn.sendall(f"{host} {port}\n".encode())
    conn.recv(1)


def sink_handler(conn: socket.socket) -> None:
    """Read to EOF, then answer `LENGTH SHA256\\n`: proves upload and half-close."""
    digest = hashlib.sha256()
    total = 0
    while data := conn.recv(1 << 20):
        digest.update(data)
        total += len(data)
    conn.sendall(f"{total} {digest.hexdigest()}\n".encode())


def source_handler(size: int) -> Callable[[socket.socket], None]:
    """Send `size` deterministic bytes, then close: proves download."""

    def handler(conn: socket.socket) -> None:
        block = pattern(1 << 20)
        left = size
        while left:
            chunk = block[: min(left, len(block))]
            conn.sendall(chunk)
            left -= len(chunk)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # wait for the client's close so nothing is reset

    return handler


def stopped_at_teardown(make):
    """A fixture body: start(...) -> make(...), each thing made closed when the test ends."""
    started = []

    def start(*args, **kwargs):
        server = make(*args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()
