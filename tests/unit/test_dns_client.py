"""The DNS client on a real reactor against nameservers on loopback: the next nameserver after a
silent, refusing or garbling one, TCP after a truncated answer, and a failure that names them all."""

from __future__ import annotations

import os
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from proxy.config.units import Address
from proxy.loop.dns import MAX_IN_FLIGHT, DnsClient, DnsFailure
from proxy.protocol.dns import Answer
from tests.support import free_port, stopped_at_teardown
from tests.support.dns import TinyNameserver

TIMEOUT = 0.3


def _records(query: bytes, *addresses: str, truncated: bool = False) -> bytes:
    message = dns.message.make_response(dns.message.from_wire(query))
    name = message.question[0].name
    if addresses:
        message.answer.append(dns.rrset.from_text(name, 7, "IN", "A", *addresses))
    if truncated:
        message.flags |= dns.flags.TC
    return message.to_wire()


@pytest.fixture
def nameservers():
    yield from stopped_at_teardown(TinyNameserver)


def _ask(reactor, servers: list[str], name: str = "app.test", attempts: int = 1):
    addresses = [Address("127.0.0.1", int(each.rsplit(":", 1)[1])) for each in servers]
    client = DnsClient(reactor, addresses, TIMEOUT, attempts)
    results = []
    client.ask(name, "A", lambda result: (results.append(result), reactor.stop()))
    reactor.call_later(10, reactor.stop)
    started = time.monotonic()
    reactor.loop()
    assert results, "no answer in time"
    return results[0], client.results, time.monotonic() - started


def test_a_silent_nameserver_times_out_and_the_next_answers(reactor, nameservers):
    silent = nameservers(lambda _query, _tcp: None)
    good = nameservers(lambda query, _tcp: _records(query, "10.0.0.1"))
    answer, results, took = _ask(reactor, [silent.address, good.address])
    assert answer == Answer(addresses=("10.0.0.1",), ttl=7)
    assert results == {"timeout": 1, "ok": 1}
    assert took >= TIMEOUT


@pytest.mark.parametrize(
    "bad",
    [lambda _query, _tcp: b"\xde\xad\xbe\xef garbage", lambda query, _tcp: _records(b"\x00\x00" + query[2:])],
    ids=["garbage", "another id"],
)
def test_a_garbled_answer_moves_on_at_once(reactor, nameservers, bad):
    garbling = nameservers(bad)
    good = nameservers(lambda query, _tcp: _records(query, "10.0.0.1"))
    answer, results, took = _ask(reactor, [garbling.address, good.address])
    assert answer.addresses == ("10.0.0.1",)
    assert results == {"error": 1, "ok": 1}
    assert took < TIMEOUT


def test_a_truncated_answer_is_asked_again_over_tcp(reactor, nameservers):
    many = [f"10.0.1.{n}" for n in range(1, 101)]
    server = nameservers(lambda query, tcp: _records(query, *(many if tcp else many[:3]), truncated=not tcp))
    answer, results, _took = _ask(reactor, [server.address])
    assert len(answer.addresses) == 100 and not answer.truncated
    assert server.asked == ["udp", "tcp"]
    assert results == {"truncated": 1, "ok": 1}


def test_when_no_nameserver_answers_the_failure_says_what_each_did(reactor, nameservers):
    silent = nameservers(lambda _query, _tcp: None)
    closed = f"127.0.0.1:{free_port()}"
    failure, results, _took = _ask(reactor, [silent.address, closed], attempts=2)
    assert isinstance(failure, DnsFailure)
    assert failure.reason == f"{silent.address}: no answer in {TIMEOUT:g}s; {closed}: connection refused"
    assert results == {"timeout": 2, "error": 2}
    assert len(silent.asked) == 2


def test_nxdomain_is_an_answer_not_a_reason_to_ask_the_next(reactor, nameservers):
    def nxdomain(query, _tcp):
        message = dns.message.make_response(dns.message.from_wire(query))
        message.set_rcode(dns.rcode.NXDOMAIN)
        return message.to_wire()

    first, second = nameservers(nxdomain), nameservers(lambda query, _tcp: _records(query, "10.0.0.1"))
    answer, results, _took = _ask(reactor, [first.address, second.address])
    assert answer.nxdomain and not second.asked
    assert results == {"nxdomain": 1}


def test_questions_asked_at_once_hold_a_bounded_number_of_sockets(reactor, nameservers):
    silent = nameservers(lambda _query, _tcp: None)
    client = DnsClient(reactor, [Address("127.0.0.1", silent.port)], TIMEOUT, 1)
    before = len(os.listdir("/proc/self/fd"))
    failures = []
    for n in range(300):  # an SRV answer of 150 targets without glue: A and AAAA of each
        client.ask(f"t{n}.test", "A", failures.append)
    held = []
    reactor.call_later(TIMEOUT / 2, lambda: held.append(len(os.listdir("/proc/self/fd")) - before))
    reactor.call_later(10, reactor.stop)

    def done() -> None:
        if len(failures) == 300:
            reactor.stop()
        else:
            reactor.call_later(0.05, done)

    reactor.call_later(0.05, done)
    reactor.loop()
    assert held[0] <= MAX_IN_FLIGHT, held
    assert len(failures) == 300 and all(isinstance(each, DnsFailure) for each in failures)
