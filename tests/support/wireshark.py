"""tshark as a Wireshark user runs it: read a capture, follow a stream, list fields."""

from __future__ import annotations

import subprocess

from tests.support.processes import required_tool


def find_tshark() -> str:
    """tshark's path; the test fails under CI (.ci/run installs it) and is skipped elsewhere without it."""
    return required_tool("tshark")


def run_tshark(tshark: str, *args: str) -> str:
    result = subprocess.run([tshark, *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "corrupt" not in result.stderr and "damaged" not in result.stderr, result.stderr
    return result.stdout


def follow(tshark: str, path: str, stream: int, protocol: str = "tcp", *options: str) -> tuple[bytes, bytes]:
    """Both directions of stream N as `Follow TCP Stream` gives them: node 0 flush left, node 1 indented."""
    output = run_tshark(tshark, "-r", path, *options, "-q", "-z", f"follow,{protocol},raw,{stream}")
    body = output.split("Node 1: ", 1)[1].split("\n", 1)[1]
    nodes = [bytearray(), bytearray()]
    for line in body.splitlines():
        if line.startswith("====="):
            break
        nodes[line.startswith("\t")] += bytes.fromhex(line.strip())
    return bytes(nodes[0]), bytes(nodes[1])


def fields(tshark: str, path: str, *names: str, display_filter: str | None = None) -> list[list[str]]:
    """One row per packet (matching `display_filter`), the values of the fields `names`."""
    args = ["-r", path, "-T", "fields"]
    for name in names:
        args += ["-e", name]
    if display_filter:
        args += ["-Y", display_filter]
    return [line.split("\t") for line in run_tshark(tshark, *args).splitlines()]
