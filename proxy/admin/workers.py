"""The admin endpoints under `run --workers N`: the supervisor asks its workers, over a socketpair each.

Each worker answers on its end of its admin pair (admin.worker_pair, which says what the frames
are). The supervisor's end (`Workers`) is what its admin socket and HTTP listener control
(commands.Controlled). Its loop never waits for a worker: an ask sends the request on every
worker's pair (a `WorkerChannel`, a dispatcher on the supervisor's reactor) and is pending until
every worker asked has answered or ASK_TIMEOUT has passed (a reactor timer); then its answer,
a Later, is settled, and the admin client that asked answers from it. Asks run side by
side, each with its own deadline, except snapshots: whoever wants one while one is being taken
joins that ask, so that the workers' snapshots and the answers held stay one set whatever the
number of scrapes. A worker that does not answer in time (stopped, stuck,
restarting) is left out and counted in `missing_workers`, and is not waited for again until a
back-off has passed (RETRY_FIRST, doubling up to RETRY_MAX while it keeps missing) or it answers
something: a stopped worker costs one deadline per back-off, not one per request. Commands that
change something still reach it (queued in its pair, bounded by MAX_UNSENT), so that it applies
them once it runs again. Answers carry their request's id, so a late answer to an earlier
request is recognised and dropped, though it shows the worker is alive.

/ready is answered from what the supervisor already knows, never by waiting: ready while some
worker answered its last deadline, or answered since. When nothing has asked the workers for
READY_REFRESH, /ready sends a `ping` (nobody waits for its answer), so that a worker that
stopped is found out within a deadline even when nobody scrapes.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy import __version__
from proxy.admin.channel import Channel
from proxy.admin.commands import ServerChange, dump_answer
from proxy.admin.later import CommandError, Later
from proxy.admin.snapshots import Snapshot, merge
from proxy.admin.stats import process_stats
from proxy.admin.worker_pair import READ_SIZE, frame, take_frame
from proxy.config.dumping import parse_dump_condition
from proxy.config.faults import parse_fault
from proxy.config.units import parse_address
from proxy.log import EventLog
from proxy.loop.reactor import Reactor, Timer

if TYPE_CHECKING:
    from proxy.config.schema import Config

ASK_TIMEOUT = 2.0  # seconds an ask waits, in all, for its workers' answers
RETRY_FIRST = 2.0  # seconds a worker that missed a deadline is not waited for
RETRY_MAX = 30.0  # ... doubling while it keeps missing, up to this
READY_REFRESH = 1.0  # seconds without an ask after which /ready pings the workers
MAX_ANSWER = 256 * 1024 * 1024  # bytes of one answer frame: past it the pair is broken
MAX_UNSENT = 64 * 1024  # bytes of requests a worker may leave unread before it is not asked any more


class WorkerChannel(Channel):
    """The supervisor's end of one worker's admin pair: requests queued out, answers read in and
    handed to `Workers.answered` as they come; whether the worker is answering, and when it is
    waited for again after it missed a deadline. A worker that exited closes it: the reaper
    restarts it with a new pair."""

    read_size = READ_SIZE

    def __init__(self, workers: Workers, index: int, sock: socket.socket) -> None:
        sock.setblocking(False)
        super().__init__(workers.reactor, sock, workers.log, "admin_pair_failed", worker=index)
        self.workers = workers
        self.index = index
        self.answering = True  # it answered its last deadline, or something since it missed one
        self.retry_at = 0.0  # not waited for before this time (the reactor's clock)
        self.retry_delay = RETRY_FIRST
        self.interest_changed()

    def readable(self) -> bool:
        return True

    def waited_for(self, now: float) -> bool:
        return not self.closed and now >= self.retry_at

    def send(self, request: bytes) -> bool:
        """Queue a request and send what the pair takes; False if the worker cannot be asked."""
        if self.closed or len(self.outgoing) > MAX_UNSENT:  # stopped or stuck: it has not read the last ones
            return False
        self.outgoing += request
        self.send_now()
        self.interest_changed()
        return not self.closed

    def received(self) -> None:
        try:
            while (payload := take_frame(self.incoming, MAX_ANSWER)) is not None:
                self.answering = True
                self.retry_at = 0.0  # alive again: waited for at the next ask
                self.workers.answered(self.index, json.loads(payload))
        except ValueError as exc:
            self.workers.log.error("admin_pair_failed", worker=self.index, error=f"answer: {exc}")
            self.close()

    def on_time(self) -> None:
        self.retry_delay = RETRY_FIRST

    def missed(self, now: float) -> None:
        self.answering = False
        self.retry_at = now + self.retry_delay
        self.retry_delay = min(self.retry_delay * 2, RETRY_MAX)

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self.workers.gone(self.index)


class Ask:
    """One request to the workers, pending until every worker asked has answered or its deadline."""

    def __init__(self, wanted: int, waiting: set[int], deadline: Timer) -> None:
        self.id = wanted
        self.waiting = waiting  # the indexes of the workers whose answer it waits for, never none
        self.answers: dict[int, dict] = {}
        self.deadline = deadline
        self.result: Later[dict[int, Any]] = Later()


class Workers:
    """What the supervisor's admin endpoints control (commands.Controlled): every live worker at once.

    What an operator changed (servers in maintenance, added, removed or weighed, run-time dump
    rules) is kept here too and told to a worker that starts again, so that a restart does not
    undo it.
    """

    def __init__(
        self,
        reactor: Reactor,
        count: int,
        log: EventLog,
        reload: Callable[[bool], list[str]],
        draining: Callable[[], bool],
        table: Callable[[], Config] | None = None,
    ) -> None:
        """`table` is the configuration the workers serve, where the supervisor has one: a server
        it does not name is refused without asking them."""
        self.reactor = reactor
        self.count = count
        self.channels: dict[int, WorkerChannel] = {}  # worker index -> the supervisor's end of its pair
        self.log = log
        self._reload = reload
        self._draining = draining
        self._table = table
        self.started = time.time()
        self._started_monotonic = time.monotonic()
        self._last_id = 0  # answers to id 0 are never waited for
        self._pending: dict[int, Ask] = {}  # request id -> the ask waiting for its answers
        self._last_ask = 0.0  # when the last ask was made (the reactor's clock)
        self._snapshot: Later[Snapshot] | None = None  # the snapshot being taken, for every caller meanwhile
        self._snapshot_ask = 0  # the id of its ask
        self._maintenance: dict[tuple[str, str], bool] = {}  # (upstream, address) -> on
        self._dump_rules: list[list[str]] = []  # the filters of each rule turned on, in order
        self._server_changes: list[ServerChange] = []  # in the order they were made

    def add(self, index: int, sock: socket.socket) -> None:
        """Worker `index` started with `sock` as the other end of its pair: it is asked from now on,
        and told first what the operator changed (it reads that once it serves)."""
        channel = self.channels[index] = WorkerChannel(self, index, sock)
        for (upstream, address), on in self._maintenance.items():
            request = {"op": "set_server_maintenance", "upstream": upstream, "address": address, "on": on}
            channel.send(frame({"id": 0, **request}))
        for filters in self._dump_rules:
            channel.send(frame({"id": 0, "op": "change_dump", "on": True, "filters": filters}))
        for change in self._server_changes:
            channel.send(frame({"id": 0, "op": "change_server", "change": change.to_json()}))

    def remove(self, index: int) -> None:
        self.channels.pop(index).close()

    def ask(self, request: dict[str, Any], *, changes: bool = False) -> Later[dict[int, Any]]:
        """The result of `request` from every worker that answers within ASK_TIMEOUT, by index.

        A worker in its back-off is not waited for; it is sent the request all the same when
        the request `changes` something. Refused (a CommandError with a worker's error message) if
        one refused the request.
        """
        now = self._last_ask = self.reactor.now
        self._last_id += 1
        data = frame({"id": self._last_id, **request})
        waiting = set()
        for index, channel in list(self.channels.items()):
            waited = channel.waited_for(now)
            if (waited or changes) and channel.send(data) and waited:
                waiting.add(index)
        if not waiting:
            return Later.of({})
        ask = Ask(self._last_id, waiting, self.reactor.call_later(ASK_TIMEOUT, self._deadline, self._last_id))
        self._pending[ask.id] = ask
        return ask.result

    def answered(self, index: int, answer: dict) -> None:
        """A worker's answer, as its channel read it: to its pending ask, if it still waits for it."""
        ask = self._pending.get(answer.get("id"))
        if ask is None or index not in ask.waiting:
            return  # late, or a replayed change's: dropped
        self.channels[index].on_time()
        ask.waiting.discard(index)
        ask.answers[index] = answer
        if not ask.waiting:
            self.reactor.call_soon(self._settle, ask.id)  # answered out of the channel's read

    def gone(self, index: int) -> None:
        """Worker `index`'s pair is closed: no ask waits for it any more."""
        for ask in list(self._pending.values()):
            if index in ask.waiting:
                ask.waiting.discard(index)
                if not ask.waiting:
                    self.reactor.call_soon(self._settle, ask.id)

    def _deadline(self, wanted: int) -> None:
        ask = self._pending.get(wanted)
        if ask is None:
            return
        now = self.reactor.now
        for index in ask.waiting:
            channel = self.channels.get(index)
            if channel is not None:
                channel.missed(now)
        self._settle(wanted)

    def _settle(self, wanted: int) -> None:
        ask = self._pending.pop(wanted, None)
        if ask is None:
            return  # settled already
        if wanted == self._snapshot_ask:
            self._snapshot = None  # the next caller takes a new one
        ask.deadline.cancel()
        errors = [answer["error"] for answer in ask.answers.values() if "error" in answer]
        if errors:
            ask.result.refuse(CommandError(errors[0]))  # the worker's words: a refusal, told as it is
        else:
            ask.result.settle({index: answer["result"] for index, answer in ask.answers.items()})

    def unready(self) -> str | None:
        """Why /ready says 503 (`draining`, or no worker answers), or None; at once, from what is
        known. Pings the workers when nothing has asked them for READY_REFRESH, for the next one."""
        if self._draining():
            return "draining"
        if self.reactor.now - self._last_ask >= READY_REFRESH:
            self.ask({"op": "ping"})
        if not any(channel.answering and not channel.closed for channel in self.channels.values()):
            return "no worker answers"
        return None

    def snapshot(self) -> Later[Snapshot]:
        """The workers' snapshots as one, each connection tagged with its `worker`; the supervisor's
        own process counted in `process`, and `missing_workers` those that did not answer.

        Whoever asks while a snapshot is being taken joins it: at most one snapshot ask is in
        flight, so ten scrapes cost each worker one snapshot and the supervisor one set of
        answers. The merged snapshot is the same object for all of them: read it, never change it."""
        if self._snapshot is not None:
            return self._snapshot
        taking = self.ask({"op": "snapshot"}).then(self._merged)
        if not taking.settled:
            self._snapshot, self._snapshot_ask = taking, self._last_id
        return taking

    def _merged(self, answers: dict[int, Snapshot]) -> Snapshot:
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
            "dns": [],
            "dns_queries": {},
        }

    def kill_conn(self, conn: int) -> Later[bool]:
        """Connection ids are unique across workers: at most one has it. Refused when none of those
        that answered had it and some did not answer (they are sent the command all the same)."""

        def killed(answers: dict[int, bool]) -> bool:
            silent = sorted(set(range(self.count)) - set(answers))
            if not any(answers.values()) and silent:
                named = ", ".join(map(str, silent))
                raise CommandError(f"connection {conn} may be on a worker that did not answer (worker {named})")
            return any(answers.values())

        return self.ask({"op": "kill_conn", "conn": conn}, changes=True).then(killed)

    def set_server_maintenance(self, upstream: str, address: str, on: bool) -> Later[bool | str]:
        """True when every worker that answered has the server, False when one does not (or the
        supervisor's table does not); with no answer at all, queued (kept for a restart too)."""
        if not self._has_server(upstream, address):
            return Later.of(False)

        def known(answers: dict[int, bool]) -> bool | str:
            if not answers or all(answers.values()):
                self._maintenance[upstream, address] = on  # told to a worker that starts again
                return bool(answers) or self._queued(answers)
            return False

        request = {"op": "set_server_maintenance", "upstream": upstream, "address": address, "on": on}
        return self.ask(request, changes=True).then(known)

    def set_dump(self, on: bool, filters: list[str]) -> Later[str]:
        for text in filters:
            parse_dump_condition(text)  # a filter that is not one is said here, once, not by each worker

        def changed(answers: dict[int, tuple[int, int]]) -> str:
            if on and filters not in self._dump_rules:
                self._dump_rules.append(filters)
            elif not on and filters in self._dump_rules:
                self._dump_rules.remove(filters)
            count = sum(count for count, _rules in answers.values())
            rules = max((rules for _count, rules in answers.values()), default=0)
            return dump_answer(on, count, rules)

        return self.ask({"op": "change_dump", "on": on, "filters": filters}, changes=True).then(changed)

    def add_fault(self, target: str, spec: str) -> Later[str]:
        """Every worker adds the toxic (its new connections get it, until a reload or a restart)."""
        parse_fault(spec)  # a bad spec is said here, once, not by each worker
        return self.ask({"op": "add_fault", "target": target, "spec": spec}, changes=True).then(self._first)

    def remove_fault(self, target: str, kind: str) -> Later[str]:
        return self.ask({"op": "remove_fault", "target": target, "type": kind}, changes=True).then(self._first)

    def list_faults(self) -> Later[list[str]]:
        return self.ask({"op": "list_faults"}).then(lambda answers: answers[min(answers)] if answers else [])

    def change_server(self, change: ServerChange) -> Later[str]:
        """Every worker makes the change (a worker that refuses says why); kept for a restarted
        worker, and for a reload that keeps them."""
        parse_address(change.address, allow_port_zero=False)  # said here, once, not by each worker

        def made(answers: dict[int, str]) -> str:
            self._server_changes.append(change)
            return self._first(answers)

        return self.ask({"op": "change_server", "change": change.to_json()}, changes=True).then(made)

    def runtime_changes(self) -> list[str]:
        return [str(change) for change in self._server_changes]

    def _first(self, answers: dict[int, Any]) -> Any:
        """The lowest-numbered worker's answer (every worker serves the same table); with none,
        that the change was sent to them all the same."""
        return answers[min(answers)] if answers else self._queued(answers)

    def _queued(self, answers: dict[int, Any]) -> str:
        silent = sorted(set(range(self.count)) - set(answers))
        return f"queued for worker {', '.join(map(str, silent))}, which did not answer"

    def _has_server(self, upstream: str, address: str) -> bool:
        """Whether the supervisor's own table has that server (True when it has no table, and for a
        pool that follows DNS: only its workers know the servers DNS gave them)."""
        if self._table is None:
            return True
        pool = self._table().upstreams.get(upstream)
        try:
            wanted = parse_address(address, allow_port_zero=False)
        except ValueError:
            return False
        added = any(change.op == "add" and change.upstream == upstream for change in self._server_changes)
        return pool is not None and (pool.from_dns or added or any(server.address == wanted for server in pool.servers))

    def reload(self, keep_runtime: bool = False) -> list[str]:
        """The supervisor's reload: each worker changes its servers again (`keep_runtime`) or drops
        the changes, and so does what a restarted worker is told."""
        problems = self._reload(keep_runtime)
        if not problems and not keep_runtime:
            self._server_changes.clear()
        return problems
