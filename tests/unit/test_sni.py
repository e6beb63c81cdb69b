"""The ClientHello peek: real hellos from Python's ssl, split and oversized ones, and junk."""

from __future__ import annotations

import struct

from proxy.protocol.sni import MAX_CLIENT_HELLO, Hello, peek_server_name
from tests.support import client_hello, in_records, synthetic_client_hello
from tests.support.tls import extension


def test_a_real_client_hello_names_its_server():
    assert peek_server_name(client_hello("API.Example.com")) == Hello("api.example.com")


def test_a_real_client_hello_without_sni():
    assert peek_server_name(client_hello(None)) == Hello(None, "no_sni")


def test_every_strict_prefix_needs_more_and_byte_by_byte_arrival_works():
    hello = client_hello("bytewise.test")
    for end in range(len(hello)):
        assert peek_server_name(hello[:end]) is None
    assert peek_server_name(hello) == Hello("bytewise.test")


def test_a_client_hello_split_over_many_records():
    record = client_hello("records.test")
    message = record[5:]
    for size in (1, 7, 100, 4096):
        assert peek_server_name(in_records(message, size)) == Hello("records.test")


def test_a_12_kib_client_hello_over_records_and_segments():
    message = synthetic_client_hello("big.test", padding=12 * 1024)
    data = in_records(message, 4096)
    assert len(message) > 12 * 1024
    assert peek_server_name(data[:5000]) is None
    assert peek_server_name(data) == Hello("big.test")


def test_an_oversized_client_hello_is_refused_early():
    message = synthetic_client_hello("huge.test", padding=MAX_CLIENT_HELLO)
    assert peek_server_name(in_records(message, 16384)[:9]) == Hello(None, "clienthello_too_large")


def test_garbage_is_not_tls_at_the_first_byte():
    assert peek_server_name(b"G") == Hello(None, "not_tls")
    assert peek_server_name(b"GET / HTTP/1.1\r\n") == Hello(None, "not_tls")
    assert peek_server_name(b"\x16\x09") == Hello(None, "not_tls")  # no such TLS version
    assert peek_server_name(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") == Hello(None, "not_tls")  # ServerHello


def test_truncated_inside_a_complete_record_is_not_tls():
    message = synthetic_client_hello("cut.test")
    body = message[4:30]  # the message claims more than its record holds, then the record ends
    lying = b"\x01" + len(body).to_bytes(3, "big") + body
    assert peek_server_name(in_records(lying, 4096)) == Hello(None, "not_tls")


def test_the_empty_start_needs_more():
    assert peek_server_name(b"") is None
    assert peek_server_name(b"\x16\x03") is None


def test_the_alpn_list_is_read_from_its_extension_and_a_malformed_one_is_not_tls():
    def hello_with(extensions: bytes) -> bytes:
        body = b"\x03\x03" + b"\x11" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
        body += struct.pack("!H", len(extensions)) + extensions
        return in_records(b"\x01" + len(body).to_bytes(3, "big") + body, 16384)

    names = b"\x02h2\x0aacme-tls/1"
    alpn = extension(0x0010, struct.pack("!H", len(names)) + names)
    assert peek_server_name(hello_with(alpn)) == Hello(None, "no_sni", ("h2", "acme-tls/1"))
    empty_name = extension(0x0010, b"\x00\x04\x02h2\x00")  # h2, then a name of no bytes
    assert peek_server_name(hello_with(empty_name)).reason == "not_tls"
    wrong_length = extension(0x0010, b"\x00\x09\x02h2")
    assert peek_server_name(hello_with(wrong_length)).reason == "not_tls"
