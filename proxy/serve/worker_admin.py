"""The admin endpoints under `run --workers N`: the supervisor asks its workers, over a socketpair each.

Each worker gets an admin pair besides its link (the link's records keep their own protocol).
On it, frames go both ways: a 4-byte big-endian length, then that many bytes of JSON. The
supervisor sends requests `{"id", "op", ...}`; the worker answers `{"id", "result"}` (or
`{"id", "error"}`) from its Server: `snapshot`, `kill_conn`, `set_server_maintenance`,
`change_dump`. The worker's end (`WorkerAdminPair`) is a dispatcher on its reactor: a request
is bounded (MAX_REQUEST), and an answer (megabytes for 10k connections) is written without
blocking, reading no new request until it is gone, so one answer is all it ever holds.

The supervisor's end (`Workers`) is what its admin socket and HTTP listener control
(admin.Controlled). It serves no traffic, so it waits for the answers on its own loop, but
never longer than ASK_TIMEOUT in all: a worker that does not answer in time (stopped, stuck,
restarting) is left out and counted in `missing_workers`. Answers carry their request's id,
so a late answer to an earlier request is recognised and dropped.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy import __version__
from proxy.config.dumping import parse_dump_condition
from proxy.config.faults import parse_fault
from proxy.log import EventLog
from proxy.loop.dispatcher import Dispatcher
from proxy.protocol.snapshots import Snapshot, merge
from proxy.serve.admin import dump_answer
from proxy.serve.stats import process_stats

if TYPE_CHECKING:
    from proxy.serve.server import Server

ASK_TIMEOUT = 2.0  # seconds the supervisor waits, in all, for its workers' answers
MAX_REQUEST = 64 * 1024  # bytes of one request frame (requests are a few words)
MAX_ANSWER = 256 * 1024 * 1024  # bytes of one answer frame: past it the pair is broken
MAX_UNSENT = 64 * 1024  # bytes of requests a worker may leave unread before it is not asked any more
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


# -- the worker's end ------------------------------------------------------------------------


def _operations(server: Server) -> dict[str, Callable[[dict], Any]]:
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
    }


class WorkerAdminPair(Dispatcher):
    """A worker's end of its admin pair: answers the supervisor's requests from its Server."""

    def __init__(self, server: Server, sock: socket.socket) -> None:
        sock.setblocking(False)
        super().__init__(server.reactor, sock)
        self.log = server.log
        self.operations = _operations(server)
        self.incoming = bytearray()
        self.outgoing = bytearray()
        self.interest_changed()

    def readable(self) -> bool:
        return not self.outgoing  # the supervisor waits for this answer before it asks more

    def writable(self) -> bool:
        return bool(self.outgoing)

    def handle_read(self) -> None:
        try:
            data = self.socket.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()  # the supervisor is gone: its link says so and drains this worker
            return
        self.incoming += data
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
        self.handle_write()

    def _answer(self, request: dict) -> dict:
        operation = self.operations.get(request.get("op"))
        if operation is None:
            return {"id": request.get("id"), "error": f"unknown operation {request.get('op')!r}"}
        try:
            return {"id": request["id"], "result": operation(request)}
        except (ValueError, KeyError, TypeError) as exc:
            return {"id": request.get("id"), "error": str(exc)}

    def handle_write(self) -> None:
        try:
            sent = self.socket.send(self.outgoing)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()  # the supervisor is gone
            return
        del self.outgoing[:sent]
        if not self.outgoing:
            self.interest_changed()
            self._answer_next()  # a request that came with the last one

    def handle_error(self, exc: BaseException) -> None:
        self.log.failure("admin_pair_failed", exc)
        self.close()


# -- the supervisor's end --------------------------------------------------------------------


class WorkerChannel:
    """The supervisor's end of one worker's admin pair: requests queued out, answers read in."""

    def __init__(self, index: int, sock: socket.socket, log: EventLog) -> None:
        sock.setblocking(False)
        self.index = index
        self.socket = sock
        self.log = log
        self.incoming = bytearray()
        self.outgoing = bytearray()
        self.broken = False  # the worker is gone or said something unreadable: not asked any more

    def send(self, request: bytes) -> bool:
        """Queue a request and send what the pair takes; False if the worker cannot be asked."""
        if self.broken or len(self.outgoing) > MAX_UNSENT:  # stopped or stuck: it has not read the last ones
            return False
        self.outgoing += request
        self.flush()
        return not self.broken

    def flush(self) -> None:
        try:
            sent = self.socket.send(self.outgoing)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.broken = True  # exited: the reaper restarts it with a new pair
            return
        del self.outgoing[:sent]

    def receive(self, wanted: int) -> dict | None:
        """Read what has come; the answer to request `wanted` once it is whole (earlier ones are dropped)."""
        while True:
            try:
                data = self.socket.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self.broken = True
                break
            self.incoming += data
        try:
            while (payload := take_frame(self.incoming, MAX_ANSWER)) is not None:
                answer = json.loads(payload)
                if answer.get("id") == wanted:
                    return answer
        except ValueError as exc:
            self.log.error("admin_pair_failed", worker=self.index, error=f"answer: {exc}")
            self.broken = True
        return None

    def close(self) -> None:
        self.socket.close()


class Workers:
    """What the supervisor's admin endpoints control (admin.Controlled): every live worker at once.

    What an operator changed (servers in maintenance, run-time dump rules) is kept here too and
    told to a worker that starts again, so that a restart does not undo it.
    """

    def __init__(
        self, count: int, log: EventLog, reload: Callable[[], list[str]], draining: Callable[[], bool]
    ) -> None:
        self.count = count
        self.channels: dict[int, WorkerChannel] = {}  # worker index -> the supervisor's end of its pair
        self.log = log
        self._reload = reload
        self._draining = draining
        self.started = time.time()
        self._started_monotonic = time.monotonic()
        self._last_id = 0  # answers to id 0 are never waited for
        self._maintenance: dict[tuple[str, str], bool] = {}  # (upstream, address) -> on
        self._dump_rules: list[list[str]] = []  # the filters of each rule turned on, in order

    def add(self, index: int, sock: socket.socket) -> None:
        """Worker `index` started with `sock` as the other end of its pair: it is asked from now on,
        and told first what the operator changed (it reads that once it serves)."""
        channel = self.channels[index] = WorkerChannel(index, sock, self.log)
        for (upstream, address), on in self._maintenance.items():
            request = {"op": "set_server_maintenance", "upstream": upstream, "address": address, "on": on}
            channel.send(frame({"id": 0, **request}))
        for filters in self._dump_rules:
            channel.send(frame({"id": 0, "op": "change_dump", "on": True, "filters": filters}))

    def remove(self, index: int) -> None:
        self.channels.pop(index).close()

    def ask(self, request: dict[str, Any], timeout: float = ASK_TIMEOUT) -> dict[int, Any]:
        """The result of `request` from every worker that answered within `timeout`, by index.

        Blocks the supervisor's loop (it serves no traffic) for at most `timeout`. ValueError
        with a worker's error message if one refused the request.
        """
        self._last_id += 1
        wanted = self._last_id
        data = frame({"id": wanted, **request})
        deadline = time.monotonic() + timeout
        waiting = {channel.socket.fileno(): channel for channel in self.channels.values() if channel.send(data)}
        answers: dict[int, dict] = {}
        while waiting and (left := deadline - time.monotonic()) > 0:
            poller = select.poll()
            for fd, channel in waiting.items():
                poller.register(fd, select.POLLIN | (select.POLLOUT if channel.outgoing else 0))
            for fd, events in poller.poll(left * 1000):
                channel = waiting[fd]
                if events & select.POLLOUT:
                    channel.flush()
                if events & ~select.POLLOUT:
                    answer = channel.receive(wanted)
                    if answer is not None:
                        answers[channel.index] = answer
                    if answer is not None or channel.broken:
                        del waiting[fd]
        errors = [answer["error"] for answer in answers.values() if "error" in answer]
        if errors:
            raise ValueError(errors[0])
        return {index: answer["result"] for index, answer in answers.items()}

    def snapshot(self) -> Snapshot:
        """The workers' snapshots as one, each connection tagged with its `worker`; the supervisor's
        own process counted in `process`, and `missing_workers` those that did not answer."""
        answers = self.ask({"op": "snapshot"})
        for index, snapshot in answers.items():
            for row in snapshot["conns"]:
                row["worker"] = index
        merged = merge([self._own_snapshot(), *(answers[index] for index in sorted(answers))])
        merged["conns"].sort(key=lambda row: row["conn"])
        merged["info"] |= {"workers": self.count, "missing_workers": self.count - len(answers)}
        return merged

    def _own_snapshot(self) -> Snapshot:
        """The supervisor as a snapshot of no listener, server or connection, to merge first."""
        return {
            "info": {
                "version": __version__,
                "pid": os.getpid(),
                "worker": None,  # the supervisor is none of them
                "workers": self.count,
                "started": self.started,
                "uptime": time.monotonic() - self._started_monotonic,
                "listeners": 0,
                "connections": 0,
                "reloads": 0,
                "log_dropped": self.log.output.dropped_total,
                "draining": self._draining(),
            },
            "listeners": [],
            "servers": [],
            "conns": [],
            "process": process_stats(),
        }

    def kill_conn(self, conn: int) -> bool:
        """Connection ids are unique across workers: at most one has it."""
        return any(self.ask({"op": "kill_conn", "conn": conn}).values())

    def set_server_maintenance(self, upstream: str, address: str, on: bool) -> bool:
        answers = self.ask({"op": "set_server_maintenance", "upstream": upstream, "address": address, "on": on})
        known = bool(answers) and all(answers.values())
        if known:
            self._maintenance[upstream, address] = on
        return known

    def set_dump(self, on: bool, filters: list[str]) -> str:
        for text in filters:
            parse_dump_condition(text)  # a filter that is not one is said here, once, not by each worker
        answers = self.ask({"op": "change_dump", "on": on, "filters": filters})
        if on and filters not in self._dump_rules:
            self._dump_rules.append(filters)
        elif not on and filters in self._dump_rules:
            self._dump_rules.remove(filters)
        changed = sum(count for count, _rules in answers.values())
        rules = max((rules for _count, rules in answers.values()), default=0)
        return dump_answer(on, changed, rules)

    def add_fault(self, target: str, spec: str) -> str:
        """Every worker adds the toxic (its new connections get it, until a reload or a restart)."""
        parse_fault(spec)  # a bad spec is said here, once, not by each worker
        return self._first(self.ask({"op": "add_fault", "target": target, "spec": spec}))

    def remove_fault(self, target: str, kind: str) -> str:
        return self._first(self.ask({"op": "remove_fault", "target": target, "type": kind}))

    def list_faults(self) -> list[str]:
        return self._first(self.ask({"op": "list_faults"}), [])

    @staticmethod
    def _first(answers: dict[int, Any], nobody: Any = "no worker answered") -> Any:
        """The lowest-numbered worker's answer: every worker serves the same table."""
        return answers[min(answers)] if answers else nobody

    def reload(self) -> list[str]:
        return self._reload()
