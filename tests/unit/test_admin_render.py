"""The admin listener's pure parts: the HTTP head parser and response, the Prometheus text, the
merge of worker snapshots, the status page and /conns. No sockets here (test_admin_web.py has
the real listener)."""

from __future__ import annotations

import copy
import json
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from proxy.admin.prometheus import render
from proxy.admin.snapshots import merge
from proxy.admin.status_page import STATUS_CONNS, render_conns, render_status
from proxy.protocol.http import MAX_HEAD, format_response, head_end, parse_request
from tests.support import samples, snapshot


def bucket(labels: tuple, le: str) -> tuple:
    return tuple(sorted((*labels, ("le", le))))


def families(text: str) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(text)}


# -- HTTP ------------------------------------------------------------------------------------


def test_a_request_head_is_parsed():
    head = b"GET /metrics?x=1 HTTP/1.1\r\nHost: localhost:9901\r\nAccept:  text/plain \r\n\r\n"
    assert head_end(head + b"rest") == len(head)
    request = parse_request(head)
    assert (request.method, request.target, request.path, request.version) == (
        "GET",
        "/metrics?x=1",
        "/metrics",
        "HTTP/1.1",
    )
    assert request.headers == (("host", "localhost:9901"), ("accept", "text/plain"))


def test_bare_newlines_end_a_head_too():
    head = b"HEAD /ready HTTP/1.0\nHost: x\n\n"
    assert head_end(head) == len(head)
    assert parse_request(head).method == "HEAD"


def test_an_incomplete_head_is_not_ended():
    assert head_end(b"GET / HTTP/1.1\r\nHost: x\r\n") == -1


@pytest.mark.parametrize(
    "head",
    [
        b"\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n",
    ],
)
def test_garbage_is_a_value_error(head):
    with pytest.raises(ValueError):
        parse_request(head)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_value_error(data):
    try:
        parse_request(data)
    except ValueError:
        pass


def test_a_response_says_its_length_and_closes():
    response = format_response(200, b"ready\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 6" in head and b"Connection: close" in head
    assert body == b"ready\n"
    assert format_response(200, b"ready\n", head_only=True) == head + b"\r\n\r\n"
    assert b"Allow: GET, HEAD" in format_response(405, b"", extra=(("Allow", "GET, HEAD"),))


# -- Prometheus ------------------------------------------------------------------------------


def test_metrics_carry_the_snapshot_values():
    found = samples(render(snapshot()))
    web, server = (("listener", "web"),), (("server", "127.0.0.1:9000"), ("upstream", "app"))
    maint = (("server", "127.0.0.1:9001"), ("upstream", "app"))
    assert found[("pairproxy_connections_total", web)] == 10
    assert found[("pairproxy_active_connections", web)] == 1
    assert found[("pairproxy_bytes_total", (("direction", "up"), ("listener", "web")))] == 1000
    assert found[("pairproxy_bytes_total", (("direction", "down"), ("listener", "web")))] == 20000
    closed = (("listener", "web"), ("result", "connect_failed"), ("route", "0"))
    assert found[("pairproxy_closed_total", closed)] == 1
    assert found[("pairproxy_server_up", server)] == 1
    assert found[("pairproxy_server_up", maint)] == 0
    assert found[("pairproxy_server_maintenance", maint)] == 1
    assert found[("pairproxy_server_maintenance", server)] == 0
    assert found[("pairproxy_server_connections_total", server)] == 9
    assert found[("pairproxy_server_connect_failures_total", server)] == 1
    assert found[("pairproxy_server_active_connections", server)] == 1
    assert found[("pairproxy_server_connect_seconds_count", server)] == 3
    assert found[("pairproxy_server_connect_seconds_sum", server)] == pytest.approx(0.3023)
    assert found[("pairproxy_server_connect_seconds_bucket", bucket(server, "0.0005"))] == 1
    assert found[("pairproxy_server_connect_seconds_bucket", bucket(server, "0.5"))] == 3
    assert found[("pairproxy_server_connect_seconds_bucket", bucket(server, "+Inf"))] == 3
    assert found[("pairproxy_log_dropped_total", ())] == 7
    assert found[("pairproxy_reloads_total", ())] == 2
    assert found[("pairproxy_info", (("version", "1.2.3"),))] == 1
    assert found[("process_resident_memory_bytes", ())] == 30_000_000
    assert found[("process_cpu_seconds_total", ())] == 1.25
    assert found[("process_max_fds", ())] == 1024


def test_metrics_carry_the_dns_queries_and_the_age_of_each_answer():
    found = samples(render(snapshot()))
    assert found[("pairproxy_dns_queries_total", (("result", "ok"),))] == 5
    assert found[("pairproxy_dns_queries_total", (("result", "timeout"),))] == 1
    name = (("name", "app.service.consul"), ("upstream", "app"))
    assert found[("pairproxy_dns_answer_age_seconds", name)] == 1.5


def test_workers_dns_rows_show_the_freshest_answer_and_a_failing_worker():
    first, second = snapshot(), snapshot()
    second["dns"][0] |= {"age": 0.5, "servers": 3, "state": "failing", "reason": "timeout"}
    merged = merge([first, second])
    assert merged["dns"] == [{**first["dns"][0], "age": 0.5, "servers": 3, "state": "failing", "reason": "timeout"}]
    assert merged["dns_queries"] == {"ok": 10, "timeout": 2}
    assert "failing: timeout" in " ".join(page_of(merged).text)


def test_each_family_has_its_help_and_type_once():
    text = render(snapshot())
    kinds = families(text)
    assert kinds["pairproxy_server_connect_seconds"] == "histogram"
    assert kinds["pairproxy_connections"] == "counter"  # the parser names counters without _total
    assert kinds["pairproxy_active_connections"] == "gauge"
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(helps) == len(set(helps)) == len(types) == len(set(types))
    counters = [
        line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ") and line.endswith("counter")
    ]
    assert all(name.endswith("_total") for name in counters)


def test_a_bucket_bound_that_went_through_json_still_reads_as_inf():
    through_json = json.loads(json.dumps(snapshot()).replace("Infinity", '"+Inf"'))
    assert samples(render(through_json)) == samples(render(snapshot()))


@pytest.mark.parametrize("name", ['we"b', "back\\slash", "new\nline", 'all \\ " \n three', "ünï", "{x=1}"])
def test_odd_listener_names_come_back_whole(name):
    found = samples(render(snapshot(name)))
    assert found[("pairproxy_connections_total", (("listener", name),))] == 10


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_any_listener_name_comes_back_whole(name):
    found = samples(render(snapshot(name)))
    assert found[("pairproxy_active_connections", (("listener", name),))] == 1


# -- merging workers' snapshots --------------------------------------------------------------


def test_one_snapshot_merges_to_itself():
    one = snapshot()
    assert merge([one]) is one


def test_worker_snapshots_are_summed():
    first, second = snapshot(conns=2), snapshot(conns=3)
    second["info"]["worker"] = 1
    second["servers"][0]["state"] = "down"
    second["listeners"][0]["closed"].append({"route": "1", "result": "no_route", "count": 4})
    before = copy.deepcopy(first)
    merged = merge([first, second])
    assert first == before  # the inputs stay as they were
    found = samples(render(merged))
    web, server = (("listener", "web"),), (("server", "127.0.0.1:9000"), ("upstream", "app"))
    assert found[("pairproxy_connections_total", web)] == 20
    assert found[("pairproxy_active_connections", web)] == 5
    assert found[("pairproxy_closed_total", (("listener", "web"), ("result", "ok"), ("route", "0")))] == 16
    assert found[("pairproxy_closed_total", (("listener", "web"), ("result", "no_route"), ("route", "1")))] == 4
    assert found[("pairproxy_server_up", server)] == 1  # up in one worker is up
    assert found[("pairproxy_server_connect_seconds_count", server)] == 6
    assert found[("pairproxy_server_connect_seconds_bucket", bucket(server, "+Inf"))] == 6
    assert found[("pairproxy_reloads_total", ())] == 2  # each worker reloaded the same two times
    assert found[("pairproxy_log_dropped_total", ())] == 14
    assert found[("process_open_fds", ())] == 24
    assert len(merged["conns"]) == 5 and merged["info"]["connections"] == 5


# -- /status and /conns ----------------------------------------------------------------------


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def page_of(snap: dict) -> _Text:
    parser = _Text()
    parser.feed(render_status(snap))
    return parser


def test_the_status_page_shows_listeners_servers_and_connections():
    page = page_of(snapshot())
    text = " ".join(page.text)
    for expected in ("web", "127.0.0.1:8080", "app", "127.0.0.1:9000", "UP", "MAINT", "relaying", "127.0.0.1:40000"):
        assert expected in text
    assert "script" not in page.tags
    assert '<meta http-equiv="refresh" content="5">' in render_status(snapshot())


def test_the_status_page_escapes_every_text():
    hostile = "<script>alert(1)</script>&\"'"
    snap = snapshot(hostile)
    snap["servers"][0]["upstream"] = hostile
    snap["conns"][0]["route"] = hostile
    page = page_of(snap)
    assert "script" not in page.tags
    assert "".join(page.text).count(hostile) >= 3


def test_the_status_page_lists_at_most_its_bound_of_connections():
    html = render_status(snapshot(conns=STATUS_CONNS + 7))
    assert html.count("relaying") == STATUS_CONNS
    assert "and 7 more" in html


def test_conns_is_the_connection_table_as_json():
    answer = json.loads(render_conns(snapshot(conns=2)))
    assert [conn["client"] for conn in answer["conns"]] == ["127.0.0.1:40000", "127.0.0.1:40001"]
    assert answer["info"]["pid"] == 4242
