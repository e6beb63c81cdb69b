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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.admin.later import CommandError, Later
from proxy.config.units import whole_number
from proxy.log import EventLog, logfmt_value

MAX_LINE = 4096  # bytes of one command line


class Controlled(Protocol):
    """What the commands act on: the Server (answers at once), or the supervisor's Workers
    (answers Later). A refusal is a ValueError raised at once (by the methods a command's
    handler passes through `_refused_at_once`) or a CommandError refusing the Later."""

    def snapshot(self) -> dict | Later[dict]: ...

    def kill_conn(self, conn: int) -> bool | Later[bool]: ...

    def set_server_maintenance(self, upstream: str, address: str, on: bool) -> bool | str | Later[bool | str]: ...

    def reload(self) -> list[str]: ...

    def set_dump(self, on: bool, filters: list[str]) -> str | Later[str]: ...

    def add_fault(self, target: str, spec: str) -> str | Later[str]: ...

    def remove_fault(self, target: str, kind: str) -> str | Later[str]: ...

    def list_faults(self) -> list[str] | Later[list[str]]: ...


Answer = str | Later[str]


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


def reload(target: Controlled, _args: list[str]) -> str:
    problems = target.reload()
    if problems:
        raise CommandError("; ".join(problems))
    return "ok"


def show_help(_target: Controlled, _args: list[str]) -> str:
    width = max(len(command.usage) for command in COMMANDS.values())
    return "\n".join(f"{command.usage:<{width}}  {command.summary}" for command in COMMANDS.values())


def _connection_id(text: str) -> int:
    conn = whole_number(text)
    if conn is None or conn < 1:
        raise CommandError(f"{text!r} is not a connection id (a whole number of at least 1)")
    return conn


# How an argument the usages name is read (CommandError if it cannot be); any other stays text.
ARGUMENT_TYPES: dict[str, Callable[[str], Any]] = {"ID": _connection_id}


@dataclass(frozen=True)
class Command:
    usage: str  # the words, then the arguments in capitals; a last one ending in "..." takes the rest
    summary: str
    handler: Callable[[Controlled, list[Any]], Answer]

    @property
    def words(self) -> str:
        return " ".join(word for word in self.usage.split() if not word.isupper())

    @property
    def arguments(self) -> list[str]:
        return [word for word in self.usage.split() if word.isupper()]

    def takes(self, args: list[str]) -> bool:
        """Whether `args` are as many as the usage names."""
        named = self.arguments
        if named and named[-1].endswith("..."):
            return len(args) >= len(named)
        return len(args) == len(named)

    def read(self, args: list[str]) -> list[Any]:
        """`args` as the handler takes them, each read by its type; CommandError if one is not one."""
        if not self.takes(args):
            raise CommandError(f"usage: {self.usage}")
        named = self.arguments
        named += named[-1:] * (len(args) - len(named))  # the arguments a last NAME... takes
        try:
            return [ARGUMENT_TYPES.get(name, str)(arg) for name, arg in zip(named, args, strict=True)]
        except CommandError as exc:
            raise CommandError(f"{self.words}: {exc}") from None


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
        Command("reload", "re-read the configuration file, like SIGHUP", reload),
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
