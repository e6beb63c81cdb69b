"""The dump flags of `forward` and `run` as a user meets them: usage errors, and `run --hexdump` over reloads."""

from __future__ import annotations

import os
import signal
import stat

import pytest

from tests.support import connect, echo_handler, recv_exactly, reload, run_cli, wait_until, write

FORWARD = ["forward", "127.0.0.1:0", "127.0.0.1:9"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            [*FORWARD, "--dump-only", "clinet=10.0.0.1"],
            "pairproxy forward: argument --dump-only: unknown dump filter key 'clinet' (did you mean 'client'?);"
            " keys: conn, listener, route, client, server",
        ),
        (
            [*FORWARD, "--dump-only", "listener=a", "--dump-only", "conn=0"],
            "pairproxy forward: argument --dump-only: conn=0: a connection id is a whole number of at least 1",
        ),
        (
            ["run", "--dump-only", "server=db"],
            "pairproxy run: argument --dump-only: server=db: expected HOST:PORT or [IPv6]:PORT",
        ),
        ([*FORWARD, "--snaplen", "0"], "pairproxy forward: argument --snaplen: must be at least 1 byte, got '0'"),
        (
            [*FORWARD, "--snaplen", "1 bushel"],
            "pairproxy forward: argument --snaplen: bad size '1 bushel': unknown unit 'bushel'"
            " (use KiB, MiB, GiB, KB, MB, GB)",
        ),
        (
            [*FORWARD, "--pcap", "x.pcapng", "--pcap-max", "1KiB"],
            "pairproxy forward: argument --pcap-max: must be at least 64KiB, got '1KiB'",
        ),
        (
            [*FORWARD, "--pcap", ""],
            "pairproxy forward: argument --pcap: expected a file name, or - for standard output",
        ),
        (
            [*FORWARD, "--pcap-keep", "0"],
            "pairproxy forward: argument --pcap-keep: expected a whole number of at least 1, got '0'",
        ),
        (
            [*FORWARD, "--pcap", "x.pcapng", "--pcap-max", "1MiB", "--pcap-keep", "3000000"],
            "pairproxy forward: argument --pcap-keep: must be at most 1000, got '3000000'",
        ),
        ([*FORWARD, "--pcap-max", "1MiB"], "pairproxy: --pcap-max needs --pcap FILE"),
        (
            [*FORWARD, "--pcap", "x.pcapng", "--pcap-keep", "3"],
            "pairproxy: --pcap-keep needs --pcap-max (captures are only rotated by size)",
        ),
        (
            [*FORWARD, "--pcap", "-", "--pcap-max", "1MiB"],
            "pairproxy: --pcap-max needs a file: standard output cannot be rotated",
        ),
        (
            ["run", "-c", "missing.yaml", "--workers", "2", "--pcap", "-"],
            "pairproxy: --pcap - cannot be shared by workers; give a file",
        ),
        (
            [*FORWARD, "--pcap", "-", "--hexdump"],
            "pairproxy: the capture (pcap -) and the hex dump would both go to standard output;"
            " give the hex dump a file (dump_file, --dump-file)",
        ),
        ([*FORWARD, "echo", "--dump-file", "x"], "pairproxy forward: unrecognized arguments: echo"),
        (["check", "--pcap", "x"], "pairproxy check: unrecognized arguments: --pcap x"),
    ],
)
def test_each_mistake_is_one_line_with_exit_2(args, expected):
    result = run_cli(args)
    assert (result.returncode, result.stderr, result.stdout) == (2, expected + "\n", "")


def test_a_file_s_capture_to_standard_output_is_refused_with_workers(tmp_path):
    path = write(
        tmp_path,
        """\
        listeners:
          - {listen: "127.0.0.1:0", upstream: 127.0.0.1:9, pcap: "-"}
        """,
    )
    result = run_cli(["run", "-c", str(path), "--workers", "2"])
    assert result.returncode == 2
    assert result.stderr == (
        "pairproxy: a capture to standard output (pcap -) cannot be shared by workers; give a file\n"
    )


def test_forward_takes_every_dump_flag(start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(
        *("forward", "127.0.0.1:0", upstream.address, "--dump-file", str(tmp_path / "dump.txt")),
        *("--pcap", str(tmp_path / "cap.pcapng"), "--pcap-max", "1MiB", "--pcap-keep", "2", "--snaplen", "4KiB"),
        *("--dump-only", "client=127.0.0.0/8", "--dump-only", "server=127.0.0.1:1"),
    )
    with connect(proxy.address) as client:
        client.sendall(b"hello")
        assert recv_exactly(client, 5) == b"hello"
    assert proxy.wait_access(1)[0]["result"] == "closed"


def test_files_that_hold_traffic_or_secrets_are_private_whatever_the_umask(start_proxy, start_upstream, tmp_path):
    upstream = start_upstream(echo_handler)
    files = {name: tmp_path / name for name in ("dump.txt", "cap.pcapng", "keys.log")}
    start_proxy(
        *("forward", "127.0.0.1:0", upstream.address, "--hexdump", "--dump-file", str(files["dump.txt"])),
        *("--pcap", str(files["cap.pcapng"]), "--tls-keylog", str(files["keys.log"])),
        preexec_fn=lambda: os.umask(0o022),
    )
    modes = {name: stat.S_IMODE(path.stat().st_mode) for name, path in files.items()}
    assert modes == dict.fromkeys(files, 0o600)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--dump-file", "x", "--pcap", "x"],
            "--pcap: the capture {x} is also the hex dump's file (--dump-file); give each output its own file",
        ),
        (
            ["--pcap", "x", "--pcap-max", "1MiB", "--dump-file", "x.3"],
            "--pcap: the capture {x}.3 is also the hex dump's file (--dump-file); give each output its own file",
        ),
        (
            ["--dump-file", "link", "--tls-keylog", "x"],
            "--tls-keylog: the TLS key log {x} is also the hex dump's file (--dump-file);"
            " give each output its own file",
        ),
    ],
)
def test_two_outputs_on_one_file_exit_2_with_one_line(flags, expected, tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "x")  # dangling: it names x all the same
    result = run_cli([*FORWARD, *flags], cwd=tmp_path)
    message = expected.format(x=tmp_path / "x")
    assert (result.returncode, result.stderr, result.stdout) == (2, f"pairproxy: {message}\n", "")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link"]  # nothing was made


def test_outputs_may_share_a_character_device(start_proxy, start_upstream, tmp_path):
    (tmp_path / "null").symlink_to("/dev/null")
    upstream = start_upstream(echo_handler)
    proxy = start_proxy(
        *("forward", "127.0.0.1:0", upstream.address, "--hexdump", "--dump-file", "/dev/null"),
        *("--pcap", str(tmp_path / "null"), "--tls-keylog", "/dev/null"),
    )
    with connect(proxy.address) as client:
        client.sendall(b"hello")
        assert recv_exactly(client, 5) == b"hello"
    assert proxy.wait_access(1)[0]["result"] == "closed"
    path = write(tmp_path, "dump_file: /dev/null\nlisteners: [{listen: 8080, upstream: 9000, pcap: /dev/null}]\n")
    checked = run_cli(["check", "-c", str(path)])
    assert (checked.returncode, checked.stderr) == (0, "")


def test_two_outputs_on_one_fifo_exit_2_with_one_line(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # two writers would interleave their records in it as in a file
    result = run_cli([*FORWARD, "--dump-file", "fifo", "--pcap", "fifo"], cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"pairproxy: --pcap: the capture {tmp_path / 'fifo'} is also the hex dump's file (--dump-file);"
        " give each output its own file\n"
    )


def test_a_flag_s_output_on_a_file_s_output_names_its_place(tmp_path):
    path = write(tmp_path, 'dump_file: out\nlisteners: [{listen: "127.0.0.1:0", upstream: 127.0.0.1:9}]\n')
    result = run_cli(["run", "-c", str(path), "--pcap", "out"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"pairproxy: {path}:1:12: the hex dump {tmp_path / 'out'} is also the capture's file (--pcap);"
        " give each output its own file\n"
    )
    keylog = run_cli(
        ["run", "-c", str(path), "--dump-file", "hex.txt"], cwd=tmp_path, env={**os.environ, "SSLKEYLOGFILE": "hex.txt"}
    )
    assert keylog.returncode == 2
    assert keylog.stderr == (
        f"pairproxy: SSLKEYLOGFILE: the TLS key log {tmp_path / 'hex.txt'} is also the hex dump's file (--dump-file);"
        " give each output its own file\n"
    )


def test_run_hexdump_holds_for_every_listener_and_after_a_reload(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    path = write(
        tmp_path,
        f"""\
        listeners:
          - name: quiet
            listen: "127.0.0.1:0"
            hexdump: false
            routes: [{{upstream: "{upstream.address}", hexdump: false}}]
        """,
    )
    proxy = start_proxy("run", "-c", str(path), "--hexdump")

    def exchange(payload: bytes) -> None:
        with connect(proxy.address) as client:
            client.sendall(payload)
            assert recv_exactly(client, len(payload)) == payload

    exchange(b"before")
    assert wait_until(lambda: "conn=1 close" in proxy.stdout()), proxy.stdout()
    reload(proxy, 1)
    assert " reloaded " in proxy.log_text()
    exchange(b"after")
    assert wait_until(lambda: "conn=2 close" in proxy.stdout()), proxy.stdout()
    assert proxy.stop(signal.SIGTERM) == 0


def test_run_dump_only_flags_filter_before_and_after_a_reload(tmp_path, start_proxy, start_upstream):
    upstream = start_upstream(echo_handler)
    path = write(
        tmp_path,
        f"""\
        listeners:
          - {{listen: "127.0.0.1:0", upstream: "{upstream.address}"}}
        """,
    )
    dump = tmp_path / "dump.txt"
    proxy = start_proxy("run", "-c", str(path), "--hexdump", "--dump-only", "conn=3", "--dump-file", str(dump))

    def exchange(payload: bytes) -> None:
        with connect(proxy.address) as client:
            client.sendall(payload)
            assert recv_exactly(client, len(payload)) == payload

    exchange(b"one")
    exchange(b"two")
    proxy.wait_access(2)
    reload(proxy, 1)
    exchange(b"three")
    proxy.wait_access(3)
    assert proxy.stdout() == ""  # the dump file, not standard output
    assert proxy.stop(signal.SIGTERM) == 0
    dumped = dump.read_text()
    assert "conn=3 open" in dumped and "|three|" in dumped
    assert "conn=1 " not in dumped and "conn=2 " not in dumped
