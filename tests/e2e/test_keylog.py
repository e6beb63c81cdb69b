"""The TLS key log: `--tls-keylog FILE` and SSLKEYLOGFILE write the secrets of terminated and
originated sessions in the NSS key log format, so that Wireshark can decrypt a capture.

Each session is checked against the peer's own key log: the test client (terminated session) and
the test upstream (originated session) log their secrets through the stdlib too, and every line
they write must be in the proxy's file, client random and secrets alike. Decrypting a capture
with tshark needs the pcap writer's end-to-end wiring and is tested with it.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import stat
import textwrap

import pytest

from tests.support import WAIT, connect, logfmt, recv_exactly, run_cli, server_context, tls_upstream, wait_until

# label, client random (32 bytes), secret (TLS 1.3: a hash's length; TLS 1.2: the 48-byte master secret)
KEYLOG_LINE = re.compile(r"([A-Z_0-9]+) ([0-9a-f]{64}) ([0-9a-f]{64}|[0-9a-f]{96})")


def keylog_lines(path) -> list[str]:
    """The secret lines of a key log (the stdlib writes a `#` header in a new file)."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    for line in lines:
        assert KEYLOG_LINE.fullmatch(line), line
    return lines


def keylogging_upstream(pki, keylog):
    """An upstream that terminates TLS as upstream.test, logs its own secrets, then echoes."""
    context = server_context(pki, "upstream")
    context.keylog_filename = str(keylog)
    return tls_upstream(context)


def exchange(pki, address, keylog, *, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> None:
    """One TLS session to the proxy as proxy.test, its secrets logged by the client to `keylog`."""
    context = ssl.create_default_context(cafile=pki["ca"])
    context.maximum_version = version
    context.keylog_filename = str(keylog)
    with context.wrap_socket(connect(address), server_hostname="proxy.test") as client:
        client.sendall(b"secret bytes")
        assert recv_exactly(client, 12) == b"secret bytes"


def assert_logged(proxy_keylog, *peer_keylogs) -> None:
    """Every secret the peers logged is in the proxy's key log, for the same client random."""
    assert wait_until(lambda: all(set(keylog_lines(peer)) <= set(keylog_lines(proxy_keylog)) for peer in peer_keylogs))


def warnings(proxy) -> list[str]:
    return [line for line in proxy.lines if " tls_keylog " in line]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"])
def test_forward_logs_the_terminated_and_the_originated_session(pki, tmp_path, start_proxy, start_upstream, version):
    upstream = start_upstream(keylogging_upstream(pki, tmp_path / "upstream.keys"))
    keylog = tmp_path / "proxy.keys"
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address,
        "--tls-cert", pki["proxy.pem"], "--tls-key", pki["proxy.key"],
        "--upstream-tls", "--upstream-ca", pki["ca"], "--upstream-server-name", "upstream.test",
        "--tls-keylog", str(keylog),
    )  # fmt: skip
    [warning] = warnings(proxy)
    assert warning.endswith(f'WARNING tls_keylog file={keylog} risk="the file decrypts TLS traffic"')
    assert stat.S_IMODE(os.stat(keylog).st_mode) == 0o600
    exchange(pki, proxy.address, tmp_path / "client.keys", version=version)
    assert_logged(keylog, tmp_path / "client.keys", tmp_path / "upstream.keys")

    labels = {line.split()[0] for line in keylog_lines(tmp_path / "client.keys")}
    assert labels == ({"CLIENT_RANDOM"} if version == ssl.TLSVersion.TLSv1_2 else {
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0", "EXPORTER_SECRET",
    })  # fmt: skip
    randoms = {line.split()[1] for line in keylog_lines(keylog)}
    assert len(randoms) == 2, "one client random per session: client to proxy, proxy to upstream"


def test_an_existing_key_log_is_appended_to_and_keeps_its_mode(pki, tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(keylogging_upstream(pki, tmp_path / "upstream.keys"))
    keylog = tmp_path / "proxy.keys"
    keylog.write_text("# kept\n")
    keylog.chmod(0o640)
    proxy = start_proxy(
        "forward", "127.0.0.1:0", upstream.address, "--upstream-tls", "--upstream-ca", pki["ca"],
        "--upstream-server-name", "upstream.test", "--tls-keylog", str(keylog),
    )  # fmt: skip
    with connect(proxy.address) as client:
        client.sendall(b"ping")
        assert recv_exactly(client, 4) == b"ping"
    assert_logged(keylog, tmp_path / "upstream.keys")
    assert keylog.read_text().startswith("# kept\n")
    assert stat.S_IMODE(os.stat(keylog).st_mode) == 0o640


def _config(tmp_path, pki, upstream) -> str:
    path = tmp_path / "pairproxy.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            upstreams:
              secure:
                servers: ["{upstream.address}"]
                tls: {{ca: {pki["ca"]}, server_name: upstream.test}}
            listeners:
              - listen: 127.0.0.1:0
                tls: {{cert: {pki["proxy.pem"]}, key: {pki["proxy.key"]}}}
                upstream: secure
            """
        )
    )
    return str(path)


def test_run_takes_sslkeylogfile_and_keeps_it_across_a_reload(pki, tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(keylogging_upstream(pki, tmp_path / "upstream.keys"))
    keylog = tmp_path / "env.keys"
    proxy = start_proxy("run", "-c", _config(tmp_path, pki, upstream), env={"SSLKEYLOGFILE": str(keylog)})
    assert len(warnings(proxy)) == 1
    assert stat.S_IMODE(os.stat(keylog).st_mode) == 0o600
    exchange(pki, proxy.address, tmp_path / "before.keys")
    assert_logged(keylog, tmp_path / "before.keys")

    proxy.send_signal(signal.SIGHUP)
    proxy.wait_for(" reloaded ")
    exchange(pki, proxy.address, tmp_path / "after.keys")
    assert_logged(keylog, tmp_path / "before.keys", tmp_path / "after.keys", tmp_path / "upstream.keys")
    assert len(warnings(proxy)) == 1


def test_the_flag_wins_over_sslkeylogfile(pki, tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(keylogging_upstream(pki, tmp_path / "upstream.keys"))
    flagged, ignored = tmp_path / "flag.keys", tmp_path / "env.keys"
    proxy = start_proxy(
        "run", "-c", _config(tmp_path, pki, upstream), "--tls-keylog", str(flagged), env={"SSLKEYLOGFILE": str(ignored)}
    )
    exchange(pki, proxy.address, tmp_path / "client.keys")
    assert_logged(flagged, tmp_path / "client.keys", tmp_path / "upstream.keys")
    assert not ignored.exists()
    assert [logfmt(line)["file"] for line in warnings(proxy)] == [str(flagged)]


def test_workers_share_the_key_log_and_the_supervisor_warns_once(pki, tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(keylogging_upstream(pki, tmp_path / "upstream.keys"))
    keylog = tmp_path / "proxy.keys"
    proxy = start_proxy(
        "run", "-c", _config(tmp_path, pki, upstream), "--workers", "2", "--tls-keylog", str(keylog), wait_listening=2
    )
    clients = [tmp_path / f"client{index}.keys" for index in range(4)]
    for client in clients:
        exchange(pki, proxy.address, client)
    assert_logged(keylog, *clients, tmp_path / "upstream.keys")
    assert len({line.split()[1] for line in keylog_lines(keylog)}) == 8, "4 sessions each side, by their client random"
    assert len(warnings(proxy)) == 1


@pytest.mark.parametrize("command", ["forward", "run"])
@pytest.mark.parametrize("source", ["flag", "environment"])
def test_a_key_log_that_cannot_be_opened_stops_the_start(pki, tmp_path, start_upstream, command, source):
    upstream = start_upstream(keylogging_upstream(pki, tmp_path / "upstream.keys"))
    missing = tmp_path / "no such folder" / "proxy.keys"
    args = (
        ["forward", "127.0.0.1:0", upstream.address]
        if command == "forward"
        else ["run", "-c", _config(tmp_path, pki, upstream)]
    )
    env = {**os.environ, "SSLKEYLOGFILE": str(missing) if source == "environment" else ""}
    if source == "flag":
        args += ["--tls-keylog", str(missing)]
    result = run_cli(args, cwd=tmp_path, env=env, timeout=WAIT)
    name = "--tls-keylog" if source == "flag" else "SSLKEYLOGFILE"
    assert (result.returncode, result.stderr) == (1, f"pairproxy: {name} {missing}: no such file or directory\n")
