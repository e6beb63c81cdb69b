"""DNS servers for the tests: a real dnsmasq on a loopback port with records from a file the test
writes, and a tiny nameserver of the test's own for what dnsmasq will not do (silence, garbage)."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query

from tests.support.net import free_port
from tests.support.processes import required_tool
from tests.support.servers import Upstream
from tests.support.waits import WAIT, wait_until

Records = dict[str, list[str]]  # name -> its addresses


class Dnsmasq:
    """dnsmasq answering for `domain` on 127.0.0.1:PORT (UDP and TCP): the names of `hosts`
    (re-read on `set_hosts`), the `srv` records (`NAME,TARGET,PORT,PRIORITY,WEIGHT`) and
    `records` (`NAME,IP`, fixed for its life); other names in `domain` are NXDOMAIN."""

    def __init__(
        self,
        folder: Path,
        hosts: Records,
        *,
        srv: tuple[str, ...] = (),
        records: tuple[str, ...] = (),
        ttl: int = 1,
        domain: str = "test",
    ) -> None:
        self.binary = required_tool("dnsmasq", "/usr/sbin/dnsmasq")
        self.hosts_file = folder / "dns-hosts"
        self.set_hosts(hosts, reread=False)
        self.process: subprocess.Popen | None = None
        for _ in range(5):  # a port free for TCP may be taken for UDP: try another
            self.port = free_port()
            arguments = [
                *("-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--pid-file=", "--user=root"),
                *(f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces"),
                *(f"--addn-hosts={self.hosts_file}", f"--local=/{domain}/", f"--local-ttl={ttl}"),
                *(f"--srv-host={each}" for each in srv),
                *(f"--host-record={each}" for each in records),
            ]
            self.process = subprocess.Popen(
                [self.binary, *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            started = wait_until(lambda: self.process.poll() is not None or self._answers(), timeout=WAIT)
            if started and self.process.poll() is None:
                return
            self.process.kill()
            self.process.wait(WAIT)
        raise RuntimeError(f"dnsmasq did not start: {self.process.stderr.read().decode(errors='replace')}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        try:
            dns.query.udp(dns.message.make_query("ready.invalid", "A"), "127.0.0.1", port=self.port, timeout=0.2)
        except (OSError, dns.exception.DNSException):
            return False
        return True

    def set_hosts(self, hosts: Records, *, reread: bool = True) -> None:
        """Serve `hosts` from now on (dnsmasq re-reads its hosts file on SIGHUP)."""
        lines = [f"{address} {name}\n" for name, addresses in hosts.items() for address in addresses]
        self.hosts_file.write_text("".join(lines))
        if reread:
            self.process.send_signal(signal.SIGHUP)

    def ask(self, name: str, rdtype: str = "A") -> dns.message.Message:
        """What dnsmasq answers now, over TCP (the whole answer)."""
        return dns.query.tcp(dns.message.make_query(name, rdtype), "127.0.0.1", port=self.port, timeout=WAIT)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(WAIT)
            self.process.stderr.close()


class TinyNameserver:
    """A nameserver on 127.0.0.1:PORT, UDP and TCP, answering each query with
    `answer(query bytes, tcp)`; None answers nothing (over TCP: closes)."""

    def __init__(self, answer: Callable[[bytes, bool], bytes | None]) -> None:
        self.answer = answer
        self.asked: list[str] = []  # "udp" or "tcp", a query each
        self._stopping = threading.Event()
        # A port free for TCP (connections in TIME_WAIT do not hold it, with SO_REUSEADDR) and
        # then for UDP: on a busy machine the first port tried may be taken for one of them.
        for _ in range(50):
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.tcp.bind(("127.0.0.1", 0))
            self.port = self.tcp.getsockname()[1]
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                self.udp.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        else:
            raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1 after 50 tries")
        self.tcp.listen(8)
        for sock in (self.udp, self.tcp):
            sock.settimeout(0.2)
        self._threads = [threading.Thread(target=run, daemon=True) for run in (self._serve_udp, self._serve_tcp)]
        for thread in self._threads:
            thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve_udp(self) -> None:
        while not self._stopping.is_set():
            try:
                query, peer = self.udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.asked.append("udp")
            reply = self.answer(query, False)
            if reply is not None:
                self.udp.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(WAIT)
                size = int.from_bytes(conn.recv(2), "big")
                query = conn.recv(size)
                self.asked.append("tcp")
                reply = self.answer(query, True)
                if reply is not None:
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)

    def close(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(WAIT)
        self.udp.close()
        self.tcp.close()


class UpstreamAt(Upstream):
    """An Upstream on a given host and port: the servers of one name share the name's port."""

    def __init__(self, handler: Callable[[socket.socket], None], host: str, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self.host, self.port = host, port
        self._serve_on(sock, handler)


def upstreams_on_one_port(handlers: dict[str, Callable[[socket.socket], None]]) -> list[Upstream]:
    """An upstream on each host of `handlers` (127.0.0.X), all on one free port."""
    for _ in range(5):
        port, started = free_port(), []
        try:
            for host, handler in handlers.items():
                started.append(UpstreamAt(handler, host, port))
            return started
        except OSError:
            for upstream in started:
                upstream.close()
    raise RuntimeError("no port free on every host")
