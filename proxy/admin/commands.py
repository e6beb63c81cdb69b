"""The admin commands: HAProxy-style words on one line, read by a pure parser into a command of a
table and answered from what they control.

The commands read a snapshot (`Server.snapshot()`, plain data) or call a few small methods of
what they control (`Controlled`), so that under `run --workers` the supervisor answers them for
all its workers (admin.workers.Workers). `COMMANDS` maps the words of each command to its
handler: adding a command is adding an entry. `parse_command` reads a line's words into a
command and its arguments, each typed as its usage names it (`ARGUMENT_TYPES`), or a
CommandError whose one line is the answer. What a method of `Controlled` returns may be a
`Later`, and so may a handler's answer: `execute` gives a `Later` answer in every case.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.admin.later import CommandError, Later
from proxy.config.units import whole_number
from proxy.log import EventLog, logfmt_value

MAX_LINE = 4096  # bytes of one command line
MAX_WEIGHT = 1_000_000  # the largest weight a command gives a server


class Controlled(Protocol):
    """What the commands act on: the Server (answers at once), or the supervisor's Workers
    (answers Later). A refusal is a ValueError raised at once (by the methods a command's
    handler passes through `_refused_at_once`) or a CommandError refusing the Later."""

    def snapshot(self) -> dict | Later[dict]: ...

    def kill_conn(self, conn: int) -> bool | Later[bool]: ...

    def set_server_maintenance(self, upstream: str, address: str, on: bool) -> bool | str | Later[bool | str]: ...

    def reload(self, keep_runtime: bool = False) -> list[str]: ...

    def change_server(self, change: ServerChange) -> str | Later[str]: ...

    def runtime_changes(self) -> list[str]: ...

    def set_dump(self, on: bool, filters: list[str]) -> str | Later[str]: ...

    def add_fault(self, target: str, spec: str) -> str | Later[str]: ...

    def remove_fault(self, target: str, kind: str) -> str | Later[str]: ...

    def list_faults(self) -> list[str] | Later[list[str]]: ...


Answer = str | Later[str]


@dataclass(frozen=True)
class ServerChange:
    """A server added (`op` "add": weight, backup), removed ("del") or weighed ("weight") at run
    time; as plain data it goes to workers (`to_json`, `of_json`)."""

    op: str
    upstream: str
    address: str
    weight: int = 1
    backup: bool = False

    def __str__(self) -> str:
        where = f"server {self.upstream} {self.address}"
        if self.op == "del":
            return f"del {where}"
        if self.op == "weight":
            return f"set {where} weight {self.weight}"
        return f"add {where} weight {self.weight}" + (" backup" if self.backup else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "upstream": self.upstream,
            "address": self.address,
            "weight": self.weight,
            "backup": self.backup,
        }

    @classmethod
    def of_json(cls, data: dict[str, Any]) -> ServerChange:
        return cls(data["op"], data["upstream"], data["address"], int(data["weight"]), bool(data["backup"]))


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}"
    return logfmt_value("-" if value is None else value)


def _logfmt(row: dict, keys: tuple[str, ...]) -> str:
    return " ".join(f"{key}={_value(row[key])}" for key in keys)


def show_info(target: Controlled, _args: list[str]) -> Answer:
    return Later.of(target.snapshot()).then(
        lambda snapshot: "\n".join(f"{key}: {_value(value)}" for key, value in snapshot["info"].items())
    )


CONN_KEYS = ("conn", "listener", "route", "client", "server", "state", "age", "idle", "bytes_up", "bytes_down")
SERVER_KEYS = ("upstream", "server", "state", "active", "total", "failures", "last_change")


def _rows(rows: list[dict]) -> str:
    # Under `run --workers` each row also names the worker that has the connection.
    return "\n".join(_logfmt(row, CONN_KEYS + (("worker",) if "worker" in row else ())) for row in rows)


def show_conns(target: Controlled, _args: list[str]) -> Answer:
    return Later.of(target.snapshot()).then(lambda snapshot: _rows(snapshot["conns"]))


def show_servers(target: Controlled, _args: list[str]) -> Answer:
    return Later.of(target.snapshot()).then(
        lambda snapshot: "\n".join(_logfmt(row, SERVER_KEYS) for row in snapshot["servers"])
    )


def _ok_if(done: bool, otherwise: str) -> str:
    if not done:
        raise CommandError(otherwise)
    return "ok"


def kill_conn(target: Controlled, args: list[Any]) -> Answer:
    killed = Later.of(target.kill_conn(args[0]))
    return killed.then(lambda found: _ok_if(found, f"no open connection {args[0]}"))


def _maintenance(on: bool) -> Callable[[Controlled, list[str]], Answer]:
    def handler(target: Controlled, args: list[str]) -> Answer:
        upstream, address = args
        known = Later.of(target.set_server_maintenance(upstream, address, on))
        missing = f"no server {address} in upstream {upstream}"
        # True or False, or what to say instead of ok (the supervisor's "queued for ...").
        return known.then(lambda found: found if isinstance(found, str) else _ok_if(found, missing))

    return handler


def _dump(on: bool) -> Callable[[Controlled, list[str]], Answer]:
    def handler(target: Controlled, args: list[str]) -> Answer:
        return _refused_at_once(lambda: target.set_dump(on, args))

    return handler


def _refused_at_once(action: Callable[[], Answer]) -> Answer:
    """What `action` answers; a ValueError it raises at once (a bad filter or spec, told in words
    for people) as the command's refusal."""
    try:
        return action()
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def fault_add(target: Controlled, args: list[str]) -> Answer:
    return _refused_at_once(lambda: target.add_fault(args[0], args[1]))


def fault_remove(target: Controlled, args: list[str]) -> Answer:
    return _refused_at_once(lambda: target.remove_fault(args[0], args[1]))


def fault_list(target: Controlled, _args: list[str]) -> Answer:
    return Later.of(target.list_faults()).then(lambda faults: "\n".join(faults) or "no faults")


def dump_answer(on: bool, changed: int, rules: int) -> str:
    """The answer to `dump on|off`: how many open connections it changed, how many rules are on."""
    state = "dumped" if on else "no longer dumped"
    return f"{changed} open connection{'' if changed == 1 else 's'} {state}; {rules} run-time rules"


def reload(target: Controlled, args: list[Any]) -> str:
    (options,) = args
    if options not in ([], ["--keep-runtime"]):
        raise CommandError("usage: reload [--keep-runtime]")
    keep = bool(options)
    dropped = [] if keep else target.runtime_changes()
    problems = target.reload(keep_runtime=keep)
    if problems:
        raise CommandError("; ".join(problems))
    return "ok" + "".join(f"\ndropped: {change}" for change in dropped)


def _server_options(words: list[str]) -> tuple[int, bool]:
    """`[weight N] [backup]`, in any order: (weight, backup); CommandError for anything else."""
    weight, backup, rest = 1, False, list(words)
    while rest:
        word = rest.pop(0)
        if word == "backup" and not backup:
            backup = True
        elif word == "weight" and rest:
            weight = _weight(rest.pop(0))
        else:
            raise CommandError("usage: add server UPSTREAM ADDRESS [weight N] [backup]")
    return weight, backup


def add_server(target: Controlled, args: list[Any]) -> Answer:
    upstream, address, options = args
    weight, backup = _server_options(options)
    return _refused_at_once(lambda: target.change_server(ServerChange("add", upstream, address, weight, backup)))


def del_server(target: Controlled, args: list[Any]) -> Answer:
    upstream, address = args
    return _refused_at_once(lambda: target.change_server(ServerChange("del", upstream, address)))


def set_server_weight(target: Controlled, args: list[Any]) -> Answer:
    upstream, address, weight = args
    return _refused_at_once(lambda: target.change_server(ServerChange("weight", upstream, address, weight)))


def show_help(_target: Controlled, _args: list[str]) -> str:
    usages = {name: f"{command.usage} {command.options}".rstrip() for name, command in COMMANDS.items()}
    width = max(len(usage) for usage in usages.values())
    return "\n".join(f"{usages[name]:<{width}}  {command.summary}" for name, command in COMMANDS.items())


def _connection_id(text: str) -> int:
    conn = whole_number(text)
    if conn is None or conn < 1:
        raise CommandError(f"{text!r} is not a connection id (a whole number of at least 1)")
    return conn


def _weight(text: str) -> int:
    weight = whole_number(text)
    if weight is None or not 1 <= weight <= MAX_WEIGHT:
        raise CommandError(f"{text!r} is not a weight (a whole number from 1 to {MAX_WEIGHT})")
    return weight


# How an argument the usages name is read (CommandError if it cannot be); any other stays text.
ARGUMENT_TYPES: dict[str, Callable[[str], Any]] = {"ID": _connection_id, "N": _weight}


@dataclass(frozen=True)
class Command:
    """`usage`: the command's words, then its arguments in capitals (a last one ending in "..."
    takes the rest) and words to be given as they are (`weight`); `options`, if any, are words
    that may follow, given to the handler as one more argument, a list, for it to read."""

    usage: str
    summary: str
    handler: Callable[[Controlled, list[Any]], Answer]
    options: str = ""

    @property
    def words(self) -> str:
        return " ".join(itertools.takewhile(lambda word: not word.isupper(), self.usage.split()))

    @property
    def arguments(self) -> list[str]:
        """What follows the words: arguments (in capitals) and words given as they are."""
        return self.usage.split()[len(self.words.split()) :]

    def takes(self, args: list[str]) -> bool:
        """Whether `args` are as many as the usage names."""
        named = self.arguments
        if (named and named[-1].endswith("...")) or self.options:
            return len(args) >= len(named)
        return len(args) == len(named)

    def read(self, args: list[str]) -> list[Any]:
        """`args` as the handler takes them, each read by its type; CommandError if one is not one."""
        if not self.takes(args):
            raise CommandError(f"usage: {self.usage} {self.options}".rstrip())
        named = self.arguments
        if self.options:
            return [*self._typed(named, args[: len(named)]), args[len(named) :]]
        named += named[-1:] * (len(args) - len(named))  # the arguments a last NAME... takes
        return self._typed(named, args)

    def _typed(self, named: list[str], args: list[str]) -> list[Any]:
        typed = []
        for name, arg in zip(named, args, strict=True):
            if not name.isupper():
                if arg != name:
                    raise CommandError(f"usage: {self.usage}")
                continue
            try:
                typed.append(ARGUMENT_TYPES.get(name.removesuffix("..."), str)(arg))
            except CommandError as exc:
                raise CommandError(f"{self.words}: {exc}") from None
        return typed


# The words of each command (as one string) -> the command.
COMMANDS: dict[str, Command] = {
    command.words: command
    for command in (
        Command("help", "this list", show_help),
        Command("show info", "the process: version, pid, uptime, connections, reloads, dropped log lines", show_info),
        Command("show conns", "one line per open connection", show_conns),
        Command("show servers", "one line per server: state up, down or maint, counters", show_servers),
        Command("kill conn ID", "end connection ID (result=shutdown)", kill_conn),
        Command("disable server UPSTREAM ADDRESS", "no new connections to it, open ones finish", _maintenance(True)),
        Command("enable server UPSTREAM ADDRESS", "back in service", _maintenance(False)),
        Command("add server UPSTREAM ADDRESS", "a server more, until a reload", add_server, "[weight N] [backup]"),
        Command("del server UPSTREAM ADDRESS", "no new connections to it, open ones finish", del_server),
        Command("set server UPSTREAM ADDRESS weight N", "its weight from now on", set_server_weight),
        Command(
            "reload",
            "re-read the configuration file, like SIGHUP; --keep-runtime makes the server changes again",
            reload,
            "[--keep-runtime]",
        ),
        Command("dump on FILTER...", "hex dump (and capture, where configured) what the filters select", _dump(True)),
        Command("dump off FILTER...", "stop that, for new and open connections", _dump(False)),
        Command("fault add TARGET SPEC", "add a toxic (TYPE:KEY=VALUE,...) to a listener or route", fault_add),
        Command("fault remove TARGET TYPE", "remove a listener's or route's toxics of that type", fault_remove),
        Command("fault list", "the toxics in force, one per line", fault_list),
    )
}


def parse_command(words: list[str]) -> tuple[Command, list[Any]]:
    """The command `words` name, and its arguments as its handler takes them.

    Pure; whatever the words, CommandError (with the answer's one line) is all it raises.
    """
    for size in (2, 1):
        command = COMMANDS.get(" ".join(words[:size]))
        if command is not None:
            return command, command.read(words[size:])
    given = " ".join(words[:2])
    close = difflib.get_close_matches(given, COMMANDS, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else "; try 'help'"
    raise CommandError(f"unknown command {given!r}{hint}")


def execute(target: Controlled, line: str, log: EventLog) -> Later[str]:
    """The answer to one command line, without the final empty line; errors start with `error: `.
    A bug behind it is logged (`admin_failed`) and answered `error: internal error`."""

    def failed(exc: Exception) -> str:
        log.failure("admin_failed", exc, command=line)
        return "error: internal error"

    return Later.calling(lambda: _answer(target, line)).otherwise(lambda refusal: f"error: {refusal}", failed)


def _answer(target: Controlled, line: str) -> Answer:
    words = line.split()
    if not words:
        return ""
    command, args = parse_command(words)
    return command.handler(target, args)
