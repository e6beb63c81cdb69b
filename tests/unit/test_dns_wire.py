"""DNS messages as discovery reads them: addresses through CNAMEs, SRV records and their glue,
NXDOMAIN, truncation, and everything that is no answer to the question refused in one line."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.units import Address
from proxy.protocol.dns import Answer, BadAnswer, Question, SrvRecord, nameservers_of, read_answer


def _reply(question: Question, *answer: dns.rrset.RRset, additional=(), rcode=dns.rcode.NOERROR, flags=0) -> bytes:
    message = dns.message.make_response(question.message)
    message.answer.extend(answer)
    message.additional.extend(additional)
    message.set_rcode(rcode)
    message.flags |= flags
    return message.to_wire()


def test_addresses_are_read_through_a_cname_with_the_smallest_ttl():
    question = Question("app.test", "A")
    wire = _reply(
        question,
        dns.rrset.from_text("app.test.", 30, "IN", "CNAME", "real.test."),
        dns.rrset.from_text("real.test.", 5, "IN", "A", "10.0.0.2", "10.0.0.1"),
    )
    assert read_answer(question, wire) == Answer(addresses=("10.0.0.1", "10.0.0.2"), ttl=5)


def test_srv_records_come_with_the_addresses_the_additional_section_gives():
    question = Question("_db._tcp.test", "SRV")
    wire = _reply(
        question,
        dns.rrset.from_text("_db._tcp.test.", 9, "IN", "SRV", "1 10 8080 A.test.", "2 0 8081 b.test."),
        additional=[dns.rrset.from_text("a.test.", 9, "IN", "A", "10.0.0.1")],
    )
    answer = read_answer(question, wire)
    assert answer.srv == (SrvRecord(1, 10, 8080, "a.test"), SrvRecord(2, 0, 8081, "b.test"))
    assert answer.glue == {"a.test": ("10.0.0.1",)} and answer.ttl == 9


def test_nxdomain_is_an_answer_and_truncation_is_said():
    question = Question("gone.test", "A")
    assert read_answer(question, _reply(question, rcode=dns.rcode.NXDOMAIN)).nxdomain
    assert read_answer(question, _reply(question, flags=dns.flags.TC)).truncated


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"\x00\x01garbage", "not a DNS message"),
        (lambda q: _reply(Question("other.test", "A")), "an answer to another question"),
        (lambda q: _reply(q, rcode=dns.rcode.SERVFAIL), "the nameserver answered SERVFAIL"),
        (lambda q: _reply(q, rcode=dns.rcode.REFUSED), "the nameserver answered REFUSED"),
    ],
)
def test_what_is_no_answer_is_refused_with_its_reason(wire, reason):
    question = Question("app.test", "A")
    with pytest.raises(BadAnswer, match=reason):
        read_answer(question, wire(question) if callable(wire) else wire)


@given(st.binary(max_size=80))
def test_any_bytes_are_an_answer_or_a_bad_answer(data):
    question = Question("app.test", "A")
    try:
        read_answer(question, data)
    except BadAnswer:
        pass


def test_a_name_that_is_none_is_refused_at_once():
    with pytest.raises(ValueError, match="is not a DNS name"):
        Question("a" * 64 + ".test", "A")


def test_resolv_conf_names_its_nameservers_in_order_on_port_53():
    text = "# comment\nsearch example.com\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\nnameserver bogus\n"
    assert nameservers_of(text) == [Address("10.0.0.53", 53), Address("fe80::1", 53)]
