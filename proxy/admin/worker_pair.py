"""A worker's end of its admin pair under `run --workers N`, and the frames both ends speak.

Each worker gets an admin pair besides its link (the link's records keep their own protocol).
On it, frames go both ways: a 4-byte big-endian length, then that many bytes of JSON. The
supervisor (admin.workers) sends requests `{"id", "op", ...}`; the worker answers
`{"id", "result"}` (or `{"id", "error"}`) from its Server: `snapshot`, `kill_conn`,
`set_server_maintenance`, `change_dump`, the faults, `change_server`, and `ping`. The worker's end
(`WorkerAdminPair`) is a dispatcher on its reactor: a request is bounded (MAX_REQUEST), and an
answer (megabytes for 10k connections) is written without blocking, reading no new request until
it is gone, so one answer is all it ever holds.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol

from proxy.admin.channel import Channel
from proxy.admin.commands import ServerChange
from proxy.log import EventLog
from proxy.loop.reactor import Reactor

MAX_REQUEST = 64 * 1024  # bytes of one request frame (requests are a few words)
READ_SIZE = 256 * 1024
HEADER = struct.Struct("!I")


def frame(message: Any) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(data)) + data


def take_frame(buffer: bytearray, limit: int) -> bytes | None:
    """The first whole frame's payload, removed from `buffer`; None until one is whole.
    ValueError for a frame announced larger than `limit`."""
    if len(buffer) < HEADER.size:
        return None
    (size,) = HEADER.unpack_from(buffer)
    if size > limit:
        raise ValueError(f"a frame of {size} bytes (at most {limit})")
    if len(buffer) < HEADER.size + size:
        return None
    payload = bytes(buffer[HEADER.size : HEADER.size + size])
    del buffer[: HEADER.size + size]
    return payload


class WorkerServer(Protocol):
    """What a worker's end answers from: the worker's Server."""

    reactor: Reactor
    log: EventLog

    def snapshot(self) -> dict: ...

    def kill_conn(self, conn: int) -> bool: ...

    def set_server_maintenance(self, upstream: str, address: str, on: bool) -> bool: ...

    def change_dump(self, on: bool, filters: list[str]) -> tuple[int, int]: ...

    def add_fault(self, target: str, spec: str) -> str: ...

    def remove_fault(self, target: str, kind: str) -> str: ...

    def list_faults(self) -> list[str]: ...

    def change_server(self, change: ServerChange) -> str: ...


def _operations(server: WorkerServer) -> dict[str, Callable[[dict], Any]]:
    return {
        "snapshot": lambda _request: server.snapshot(),
        "kill_conn": lambda request: server.kill_conn(request["conn"]),
        "set_server_maintenance": lambda request: server.set_server_maintenance(
            request["upstream"], request["address"], request["on"]
        ),
        "change_dump": lambda request: server.change_dump(request["on"], request["filters"]),
        "add_fault": lambda request: server.add_fault(request["target"], request["spec"]),
        "remove_fault": lambda request: server.remove_fault(request["target"], request["type"]),
        "list_faults": lambda _request: server.list_faults(),
        "change_server": lambda request: server.change_server(ServerChange.of_json(request["change"])),
        "ping": lambda _request: True,
    }


class WorkerAdminPair(Channel):
    """A worker's end of its admin pair: answers the supervisor's requests from its Server. When
    the supervisor is gone the pair is closed: its link says so too and drains this worker."""

    read_size = READ_SIZE

    def __init__(self, server: WorkerServer, sock: socket.socket) -> None:
        sock.setblocking(False)
        super().__init__(server.reactor, sock, server.log, "admin_pair_failed")
        self.operations = _operations(server)
        self.interest_changed()

    def readable(self) -> bool:
        return not self.outgoing  # one answer at a time: the next requests wait in the pair

    def received(self) -> None:
        self._answer_next()

    def answer_waiting(self) -> None:
        """Answer at once the requests already waiting in the pair: what the operator changed,
        told before this worker started, applies before its loop accepts a first client."""
        while not self.closed:
            try:
                data = self.socket.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break  # the supervisor is gone: handle_read will find that end again
            self.incoming += data
        while self.incoming and not self.outgoing and not self.closed:
            waiting = len(self.incoming)
            self._answer_next()
            if len(self.incoming) == waiting:
                break  # not a whole request yet

    def _answer_next(self) -> None:
        """Answer the next whole request, unless an answer is still being sent."""
        if self.outgoing or self.closed:
            return
        try:
            payload = take_frame(self.incoming, MAX_REQUEST)
            if payload is None:
                return
            request = json.loads(payload)
        except ValueError as exc:
            self.log.error("admin_pair_failed", error=f"request: {exc}")
            self.close()
            return
        self.outgoing += frame(self._answer(request))
        self.interest_changed()
        self.send_now()

    def _answer(self, request: dict) -> dict:
        operation = self.operations.get(request.get("op"))
        if operation is None:
            return {"id": request.get("id"), "error": f"unknown operation {request.get('op')!r}"}
        try:
            return {"id": request["id"], "result": operation(request)}
        except (ValueError, KeyError, TypeError) as exc:
            return {"id": request.get("id"), "error": str(exc)}

    def drained(self) -> None:
        self._answer_next()  # a request that came with the last one
