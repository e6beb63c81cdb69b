"""A DNS client on the reactor: questions asked of the nameservers over UDP, and over TCP when
the answer was truncated; no thread, no blocking call.

Theory of operation
-------------------
`DnsClient.ask` starts an `Ask`: the question goes to each nameserver in turn, the whole list
`attempts` times, until one answers. Each try is an exchange (a dispatcher with a socket of its
own, so only the nameserver asked can answer on it: a connected UDP socket, a fresh source port
and the message id dnspython draws) bounded by `timeout`. A try ends the ask when it brings an
answer (NXDOMAIN is one); a truncated UDP answer is asked again of the same nameserver over TCP
(a two-byte length, then at most 65,535 bytes: the memory one answer may take); a timeout, a
refusal, garbage or an error code moves on to the next try. When none is left the callback gets
a `DnsFailure` naming what each nameserver did.

At most MAX_IN_FLIGHT questions are under way at once (an SRV answer of thousands of targets
without glue would otherwise open a socket for each A and AAAA question); the others wait, in
order, for one to end.

Every try's outcome is counted in `DnsClient.results` (ok, nxdomain, truncated, timeout, error):
the `pairproxy_dns_queries_total{result}` metric.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import Counter
from collections.abc import Callable, Sequence

from proxy.config.units import Address
from proxy.errors import Meaning, classify, describe_os_error
from proxy.loop.dispatcher import CONNECTING, OPEN, Dispatcher, State
from proxy.loop.reactor import Reactor, Timer
from proxy.protocol.dns import MAX_MESSAGE, Answer, BadAnswer, Question, read_answer, tcp_length

MAX_IN_FLIGHT = 64  # questions under way at once, a socket each; the others wait their turn


class DnsFailure:
    """No nameserver answered the question; `reason` says what each did, in one line."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"DnsFailure({self.reason!r})"


Result = Answer | DnsFailure
AnswerCallback = Callable[[Result], None]


class DnsClient:
    """Asks `nameservers` (IP addresses with ports) on `reactor`; each try waits `timeout` seconds."""

    def __init__(self, reactor: Reactor, nameservers: Sequence[Address], timeout: float, attempts: int = 2) -> None:
        if not nameservers:
            raise ValueError("no nameserver to ask")
        self.reactor = reactor
        self.nameservers = tuple(nameservers)
        self.timeout = timeout
        self.attempts = attempts
        self.results: Counter[str] = Counter()
        self._asks: set[Ask] = set()  # under way
        self._waiting: dict[Ask, None] = {}  # their turn to come, in order

    def ask(self, name: str, rdtype: str, callback: AnswerCallback) -> Ask:
        """Ask for `name`'s `rdtype` records (A, AAAA or SRV); `callback` runs once, on the loop,
        with the Answer or a DnsFailure, unless the returned Ask is cancelled first."""
        ask = Ask(self, Question(name, rdtype), callback)
        if len(self._asks) < MAX_IN_FLIGHT:
            self._asks.add(ask)
            ask.next_try()
        else:
            self._waiting[ask] = None
        return ask

    def finished(self, ask: Ask) -> None:
        """`ask` ended (answered, failed or cancelled): the next waiting one starts."""
        self._waiting.pop(ask, None)
        if ask not in self._asks:
            return
        self._asks.discard(ask)
        if self._waiting:
            following = next(iter(self._waiting))
            del self._waiting[following]
            self._asks.add(following)
            following.next_try()

    def close(self) -> None:
        """Cancel every question still asked: no callback runs after this."""
        for ask in list(self._waiting):
            ask.cancel()
        for ask in list(self._asks):
            ask.cancel()


class Ask:
    """One question and its tries, one nameserver after another."""

    def __init__(self, client: DnsClient, question: Question, callback: AnswerCallback) -> None:
        self.client = client
        self.question = question
        self.callback: AnswerCallback | None = callback
        self._tries = iter([server for _ in range(client.attempts) for server in client.nameservers])
        self._exchange: Exchange | None = None
        self._timer: Timer | None = None
        self._reasons: dict[str, None] = {}  # what went wrong, each said once, in order

    def next_try(self, exchange: type[Exchange] | None = None, nameserver: Address | None = None) -> None:
        """The next nameserver over UDP, or (a truncated answer) `nameserver` again over TCP."""
        self._stop_exchange()
        while self.callback is not None:
            if nameserver is None:
                nameserver = next(self._tries, None)
                if nameserver is None:
                    self._finish(DnsFailure("; ".join(self._reasons) or "no nameserver to ask"))
                    return
            try:
                self._exchange = (exchange or UdpExchange)(self, nameserver)
            except OSError as exc:
                self.failed(None, f"{nameserver}: {describe_os_error(exc)}")
                nameserver = exchange = None
                continue
            self._timer = self.client.reactor.call_later(self.client.timeout, self._timed_out)
            return

    def _timed_out(self) -> None:
        self._timer = None
        exchange = self._exchange
        if exchange is not None:
            self.client.results["timeout"] += 1
            self._reasons[f"{exchange.nameserver}: no answer in {self.client.timeout:g}s"] = None
            self.next_try()

    def answered(self, exchange: Exchange, answer: Answer) -> None:
        if exchange is not self._exchange:
            return
        if answer.truncated and isinstance(exchange, UdpExchange):
            self.client.results["truncated"] += 1
            self.next_try(TcpExchange, exchange.nameserver)
            return
        self.client.results["nxdomain" if answer.nxdomain else "ok"] += 1
        self._finish(answer)

    def failed(self, exchange: Exchange | None, reason: str) -> None:
        """This try failed (`exchange` None: it could not even start); on to the next."""
        if exchange is not None and exchange is not self._exchange:
            return
        self.client.results["error"] += 1
        self._reasons[reason] = None
        if exchange is not None:
            self.next_try()

    def _stop_exchange(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._exchange is not None:
            self._exchange.close()
            self._exchange = None

    def _finish(self, result: Result) -> None:
        callback = self.callback
        self.cancel()
        if callback is not None:
            try:
                callback(result)
            except Exception as exc:
                self.client.reactor.callback_failed(callback, exc)

    def cancel(self) -> None:
        """No callback will run; the try under way stops."""
        self.callback = None
        self._stop_exchange()
        self.client.finished(self)


class Exchange(Dispatcher):
    """One try: the question sent to one nameserver, its answer read back."""

    def __init__(self, ask: Ask, nameserver: Address, sock: socket.socket, state: State = OPEN) -> None:
        super().__init__(ask.client.reactor, sock, state)
        self.ask = ask
        self.nameserver = nameserver
        self.interest_changed()

    @staticmethod
    def _socket(nameserver: Address, kind: int) -> socket.socket:
        family = socket.AF_INET6 if nameserver.is_ipv6 else socket.AF_INET
        sock = socket.socket(family, kind)
        sock.setblocking(False)
        return sock

    def read(self, wire: bytes) -> None:
        try:
            answer = read_answer(self.ask.question, wire)
        except BadAnswer as exc:
            self.ask.failed(self, f"{self.nameserver}: {exc}")
            return
        self.ask.answered(self, answer)

    def handle_error(self, exc: BaseException) -> None:
        meaning = classify(exc)
        if meaning is Meaning.TRY_LATER:
            return
        if isinstance(exc, OSError):
            self.ask.failed(self, f"{self.nameserver}: {describe_os_error(exc)}")
            return
        self.reactor.log.failure("dns_error", exc, nameserver=self.nameserver)
        self.ask.failed(self, f"{self.nameserver}: internal error")


class UdpExchange(Exchange):
    """A datagram each way, on a socket connected to the nameserver: datagrams from anywhere else
    are dropped by the kernel, and a port nobody listens on comes back as ECONNREFUSED."""

    def __init__(self, ask: Ask, nameserver: Address) -> None:
        sock = self._socket(nameserver, socket.SOCK_DGRAM)
        try:
            sock.connect((nameserver.host, nameserver.port))
            sock.send(ask.question.wire)
        except OSError:
            sock.close()
            raise
        super().__init__(ask, nameserver, sock)

    def readable(self) -> bool:
        return True

    def handle_read(self) -> None:
        self.read(self.socket.recv(MAX_MESSAGE))


class TcpExchange(Exchange):
    """The question again over TCP, for an answer too long for a datagram: a two-byte length,
    then the message; at most 2 + 65,535 bytes are ever held."""

    def __init__(self, ask: Ask, nameserver: Address) -> None:
        sock = self._socket(nameserver, socket.SOCK_STREAM)
        code = sock.connect_ex((nameserver.host, nameserver.port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(code, os.strerror(code))
        self.outgoing = ask.question.tcp_wire
        self.incoming = bytearray()
        super().__init__(ask, nameserver, sock, CONNECTING)

    def readable(self) -> bool:
        return self.state is OPEN

    def writable(self) -> bool:
        return self.state is CONNECTING or bool(self.outgoing)

    def handle_connect(self, events: int) -> None:
        if events & self.reactor.poller.failure_events:
            code = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or errno.ECONNREFUSED
            self.ask.failed(self, f"{self.nameserver} (TCP): {describe_os_error(OSError(code, os.strerror(code)))}")
            return
        self.handle_write()

    def handle_write(self) -> None:
        sent = self.socket.send(self.outgoing)
        self.outgoing = self.outgoing[sent:]
        self.interest_changed()

    def handle_read(self) -> None:
        data = self.socket.recv(2 + MAX_MESSAGE - len(self.incoming))
        if not data:
            self.ask.failed(self, f"{self.nameserver} (TCP): closed before the whole answer came")
            return
        self.incoming += data
        if len(self.incoming) >= 2 and len(self.incoming) >= 2 + tcp_length(self.incoming[:2]):
            self.read(bytes(self.incoming[2 : 2 + tcp_length(self.incoming[:2])]))
