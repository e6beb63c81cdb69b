"""`pairproxy route` end to end: the real command on YAML files, its text, its JSON, its errors,
and that what it predicts is what a running proxy does with the same file."""

from __future__ import annotations

import json
import socket
import textwrap

import pytest

from tests.support import WAIT, echo_handler, run_cli

GATE = """\
upstreams:
  inside:
    servers: [127.0.0.1:9001]
  public:
    balance: first
    retries: 1
    servers:
      - 127.0.0.1:9002
      - {address: 127.0.0.1:9003, weight: 2}
      - {address: 127.0.0.1:9004, backup: true}
listeners:
  - name: gate
    listen: 127.0.0.1:8082
    allow: [10.0.0.0/8, 192.168.0.0/16]
    deny: [10.9.0.0/16]
    routes:
      - {name: office, match: {source: [10.1.0.0/16]}, upstream: inside}
      - {match: {sni: ["*.example.com"]}, upstream: inside}
      - upstream: public
  - name: other
    listen: 127.0.0.1:8083
    upstream: inside
"""


def write(tmp_path, text: str, name: str = "table.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def route(*args: str):
    return run_cli(["route", *args])


def route_json(*args: str) -> dict:
    done = route(*args, "--json")
    assert (done.returncode, done.stderr) == (0, "")
    return json.loads(done.stdout)


def test_text_explains_a_routed_client_in_one_block(tmp_path):
    path = write(tmp_path, GATE)
    done = route("-c", path, "--listener", "gate", "--client", "192.168.1.1:5000", "--sni", "www.example.org")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == textwrap.dedent(
        """\
        listener gate (127.0.0.1:8082), client 192.168.1.1:5000, sni www.example.org
        access: allowed: 192.168.1.1 is in allow 192.168.0.0/16
        routes, in order:
          route office -> upstream inside: no match: source: 192.168.1.1 is in none of 10.1.0.0/16
          route 1 -> upstream inside: no match: sni: www.example.org matches none of *.example.com
          route 2 -> upstream public: matched: no conditions (a default route)
        decision: route 2, upstream public
        upstream public: balance first; servers 127.0.0.1:9002, 127.0.0.1:9003 (weight 2), 127.0.0.1:9004 (backup)
        servers tried in order: 1. 127.0.0.1:9002  2. 127.0.0.1:9003 (weight 2)
          (first: config order; at most 1 + retries (1) servers, backups after every primary; every server taken as up)
        """
    )


def test_text_says_which_rule_denied(tmp_path):
    path = write(tmp_path, GATE)
    done = route("-c", path, "--listener", "gate", "--client", "10.9.0.7")
    assert done.returncode == 0  # a denial is the answer, not an error
    assert "access: denied: 10.9.0.7 is in deny 10.9.0.0/16\ndecision: denied (result=denied)\n" in done.stdout
    outside = route("-c", path, "--listener", "gate", "--client", "172.16.0.1")
    assert "172.16.0.1 is in no allow network (10.0.0.0/8, 192.168.0.0/16)" in outside.stdout


def test_json_is_one_object_for_scripts(tmp_path):
    path = write(tmp_path, GATE)
    answer = route_json("-c", path, "--listener", "gate", "--client", "[::ffff:10.1.2.3]:443", "--sni", "a.example.com")
    assert (answer["client"], answer["client_port"], answer["sni"]) == ("10.1.2.3", 443, "a.example.com")
    assert answer["access"] == {
        "decision": "allowed",
        "rule": "allow",
        "network": "10.0.0.0/8",
        "detail": "10.1.2.3 is in allow 10.0.0.0/8",
    }
    assert [(r["route"], r["status"]) for r in answer["routes"]] == [
        ("office", "matched"),
        (1, "not_reached"),
        (2, "not_reached"),
    ]
    assert (answer["decision"], answer["route"], answer["upstream"]["name"]) == ("routed", "office", "inside")
    assert answer["upstream"]["candidates"] == [{"address": "127.0.0.1:9001", "weight": 1, "backup": False}]


def test_without_client_or_sni_it_says_what_cannot_be_decided(tmp_path):
    path = write(tmp_path, GATE)
    answer = route_json("-c", path, "--listener", "gate")
    assert (answer["decision"], answer["access"]["decision"], answer["upstream"]) == ("undecided", "unknown", None)
    assert any("no --sni" in note and "routes with sni cannot match" in note for note in answer["notes"])
    assert any("no --client" in note for note in answer["notes"])


def test_a_proxy_protocol_listener_says_the_address_is_the_headers(tmp_path):
    path = write(
        tmp_path,
        """\
        listeners:
          - {name: lb, listen: "127.0.0.1:8084", accept_proxy_protocol: true, upstream: "127.0.0.1:9000"}
        """,
    )
    done = route("-c", path, "--listener", "lb", "--client", "203.0.113.7")
    assert "the client address is the one the header would carry" in done.stdout


def test_an_unknown_listener_is_one_line_naming_the_listeners(tmp_path):
    path = write(tmp_path, GATE)
    done = route("-c", path, "--listener", "gaet", "--client", "10.0.0.1")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"pairproxy: no listener 'gaet' in {path}; listeners: gate, other\n"


def test_a_bad_client_address_is_one_line(tmp_path):
    done = route("-c", write(tmp_path, GATE), "--listener", "gate", "--client", "10.0.0")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "pairproxy: bad client address '10.0.0': expected IP, IP:PORT or [IPv6]:PORT\n"


@pytest.mark.parametrize(
    "text",
    [None, "listeners:\n  - {listen: 127.0.0.1:8080, upstream: nowhere}\n", "listeners: [\n"],
)
def test_file_errors_are_reported_as_check_reports_them(tmp_path, text):
    path = str(tmp_path / "missing.yaml") if text is None else write(tmp_path, text)
    done = route("-c", path, "--listener", "x")
    check = run_cli(["check", "-c", path])
    assert (done.returncode, check.returncode) == (2, 2)
    assert done.stderr == check.stderr and done.stderr.count("\n") >= 1 and "Traceback" not in done.stderr


# -- the prediction is what a running proxy does ---------------------------------------------


def proxied(address: tuple[str, int], source: str) -> bytes:
    """What comes back when a PROXY header says the client is `source`: b"" when refused."""
    with socket.create_connection(address, timeout=WAIT) as client:
        family = "TCP6" if ":" in source else "TCP4"
        local = "::1" if ":" in source else "127.0.0.1"
        try:
            client.sendall(f"PROXY {family} {source} {local} 5000 80\r\n".encode() + b"ping")
            client.shutdown(socket.SHUT_WR)
            reply = b""
            while data := client.recv(4096):
                reply += data
        except ConnectionResetError:
            return b""
        return reply


def test_what_route_predicts_is_what_the_running_proxy_does(tmp_path, start_proxy, start_upstream):
    inside, public = start_upstream(echo_handler), start_upstream(echo_handler)
    with socket.socket() as closed:  # a port nobody listens on: the first server of `public` fails
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"
    path = write(
        tmp_path,
        f"""\
        upstreams:
          inside: {{servers: ["{inside.address}"]}}
          public: {{balance: first, servers: ["{dead}", "{public.address}"]}}
        listeners:
          - name: gate
            listen: 127.0.0.1:0
            accept_proxy_protocol: {{trusted: [127.0.0.1, "::1"]}}
            allow: [10.0.0.0/8, 192.168.0.0/16, "2001:db8::/32"]
            deny: [10.9.0.0/16]
            routes:
              - {{name: office, match: {{source: [10.1.0.0/16, "2001:db8:1::/48"]}}, upstream: inside}}
              - upstream: public
        """,
    )
    proxy = start_proxy("run", "-c", path)
    address = proxy.listener_address("gate")
    sources = ["10.1.2.3", "10.9.0.1", "192.168.4.4", "172.16.0.1", "2001:db8:1::5", "2001:db8:2::5"]
    for source in sources:
        proxied(address, source)
    seen = {line["client"].rpartition(":")[0].strip("[]"): line for line in proxy.wait_access(len(sources))}
    for source in sources:
        predicted, access = route_json("-c", path, "--listener", "gate", "--client", source), seen[source]
        if predicted["decision"] == "denied":
            assert access["result"] == "denied", (source, access)
            continue
        assert predicted["decision"] == "routed" and access["result"] == "closed", (source, access)
        assert str(predicted["route"]) == access["route"]
        tried = [candidate["address"] for candidate in predicted["upstream"]["candidates"]]
        assert access["server"] == tried[-1 if predicted["upstream"]["name"] == "public" else 0]
        assert tried[0] in (inside.address, dead)
    assert {seen[s]["result"] for s in sources} == {"denied", "closed"}


MUX = """\
listeners:
  - name: mux
    listen: 127.0.0.1:8443
    routes:
      - {name: ssh, match: {protocol: ssh}, upstream: 127.0.0.1:22}
      - {name: acme, match: {protocol: tls, alpn: acme-tls/1}, upstream: 127.0.0.1:8444}
      - {name: api, match: {protocol: http, host: api.example.com}, upstream: 127.0.0.1:8080}
      - {name: fallback, upstream: 127.0.0.1:8081}
"""


def test_a_client_is_described_by_its_first_bytes_or_in_words(tmp_path):
    path = write(tmp_path, MUX)
    ssh = route_json("-c", path, "--listener", "mux", "--first-bytes", b"SSH-2.0-OpenSSH_9.2\r\n".hex())
    assert (ssh["route"], ssh["protocol"]) == ("ssh", "ssh")
    api = route_json("-c", path, "--listener", "mux", "--protocol", "http", "--host", "API.example.com:80")
    assert (api["route"], api["host"]) == ("api", "api.example.com")
    acme = route_json("-c", path, "--listener", "mux", "--alpn", "h2", "--alpn", "acme-tls/1", "--sni", "a.test")
    assert (acme["route"], acme["protocol"], acme["alpn"]) == ("acme", "tls", ["h2", "acme-tls/1"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--first-bytes", "5353", "--protocol", "ssh"],
            "--first-bytes says what the client sends: give it or --protocol, not both",
        ),
        (["--first-bytes", "SSH"], "--first-bytes: 'SSH' is not hex (pairs of hex digits)"),
    ],
)
def test_first_bytes_mistakes_are_one_line(tmp_path, args, message):
    done = route("-c", write(tmp_path, MUX), "--listener", "mux", *args)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"pairproxy: {message}\n")
