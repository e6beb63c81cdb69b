"""DNS messages: the questions pairproxy asks (A, AAAA, SRV) and what an answer holds for it.

dnspython builds and parses the wire format; this module keeps to what discovery needs, so that
nothing above it handles a `dns.message.Message`. Pure: bytes in, records out, no socket.

`read_answer` refuses what cannot be the answer to our question (not a DNS message, another id
or question, an error code other than NXDOMAIN) with a `BadAnswer` whose text is the reason;
a truncated answer is an `Answer` with `truncated` set and the records that came, for the
caller to ask again over TCP (or, over TCP, to take as the most a message can hold).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from proxy.config.schema import DNS_PORT
from proxy.config.units import Address, canonical_ip

QUESTION_TYPES = ("A", "AAAA", "SRV")
MAX_MESSAGE = 65535  # the largest DNS message, and so the most one TCP answer may hold


class BadAnswer(ValueError):
    """What came back is not a usable answer to the question; the text says why, in one line."""


@dataclass(frozen=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  # without the final dot, in lower case


@dataclass(frozen=True)
class Answer:
    """The records of one answer: addresses (A/AAAA) or SRV records, with the glue the additional
    section gave for SRV targets. `ttl` is the smallest TTL of the records used (0 with none)."""

    nxdomain: bool = False
    truncated: bool = False
    addresses: tuple[str, ...] = ()
    srv: tuple[SrvRecord, ...] = ()
    glue: dict[str, tuple[str, ...]] = field(default_factory=dict)  # SRV target -> its addresses
    ttl: int = 0


class Question:
    """One query: its wire form (`wire`, `tcp_wire` with TCP's length prefix) and the message that
    an answer must match."""

    __slots__ = ("message", "name", "rdtype")

    def __init__(self, name: str, rdtype: str) -> None:
        if rdtype not in QUESTION_TYPES:
            raise ValueError(f"unknown question type {rdtype!r}")
        self.name = name
        self.rdtype = rdtype
        try:
            self.message = dns.message.make_query(name, rdtype)
        except dns.exception.DNSException as exc:
            raise ValueError(f"{name!r} is not a DNS name: {exc}") from None

    @property
    def wire(self) -> bytes:
        return self.message.to_wire()

    @property
    def tcp_wire(self) -> bytes:
        wire = self.wire
        return struct.pack("!H", len(wire)) + wire


def tcp_length(prefix: bytes) -> int:
    """The length a TCP answer's two-byte prefix announces."""
    return struct.unpack("!H", prefix)[0]


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def read_answer(question: Question, wire: bytes) -> Answer:
    """What `wire` answers to `question`; BadAnswer if it is no answer to it (garbage, another id
    or question, SERVFAIL, REFUSED, ...). NXDOMAIN is an answer: the name has no records."""
    try:
        message = dns.message.from_wire(wire)
    except dns.exception.DNSException as exc:
        raise BadAnswer(f"not a DNS message ({type(exc).__name__})") from None
    if not question.message.is_response(message):
        raise BadAnswer("an answer to another question")
    truncated = bool(message.flags & dns.flags.TC)
    rcode = message.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return Answer(nxdomain=True, truncated=truncated)
    if rcode != dns.rcode.NOERROR:
        raise BadAnswer(f"the nameserver answered {dns.rcode.to_text(rcode)}")
    try:
        chained = message.resolve_chaining()
    except dns.exception.DNSException as exc:
        raise BadAnswer(f"a broken answer ({type(exc).__name__})") from None
    rrset = chained.answer
    if rrset is None:
        return Answer(truncated=truncated)  # the name exists, without records of this type
    ttl = chained.minimum_ttl
    if question.rdtype != "SRV":
        return Answer(truncated=truncated, addresses=tuple(sorted({rdata.address for rdata in rrset})), ttl=ttl)
    records = tuple(
        sorted(
            {SrvRecord(rdata.priority, rdata.weight, rdata.port, _text(rdata.target)) for rdata in rrset},
            key=lambda record: (record.priority, record.target, record.port),
        )
    )
    return Answer(truncated=truncated, srv=records, glue=_glue(message, {record.target for record in records}), ttl=ttl)


def _glue(message: dns.message.Message, targets: set[str]) -> dict[str, tuple[str, ...]]:
    """The addresses the additional section gives for the SRV targets."""
    glue: dict[str, set[str]] = {}
    for rrset in message.additional:
        name = _text(rrset.name)
        if name in targets and rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            glue.setdefault(name, set()).update(rdata.address for rdata in rrset)
    return {name: tuple(sorted(addresses)) for name, addresses in glue.items()}


def nameservers_of(resolv_conf: str) -> list[Address]:
    """The nameservers a resolv.conf's text names, in order, on port 53 (a zone index dropped,
    a line that names no IP address skipped, as the C library skips it)."""
    found = []
    for line in resolv_conf.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                found.append(Address(str(canonical_ip(words[1])), DNS_PORT))
            except ValueError:
                continue
    return found
