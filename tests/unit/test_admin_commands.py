"""The admin socket's command parser over any text: a command and typed arguments, or CommandError.

Anyone who may use the socket can send it anything; whatever the line, the answer is one line,
never a handler's exception (which would leave the client with no answer at all).
"""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.admin.commands import COMMANDS, ServerChange, execute, parse_command
from proxy.admin.later import CommandError
from proxy.log import EventLog

PROPERTIES = settings(max_examples=300, deadline=None)

# Words that reach the arguments: a command's own words, then any text, digits of any script among it.
arguments = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(["7", "0", "\u00b2", "\u0663", "-1", " "])))
lines = st.one_of(
    st.text(),
    st.builds(lambda words, args: [*words.split(), *args], st.sampled_from(list(COMMANDS)), arguments).map(" ".join),
)


@PROPERTIES
@given(lines)
def test_any_line_is_a_command_with_its_arguments_or_a_command_error(line):
    words = line.split()
    try:
        command, args = parse_command(words)
    except CommandError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert command.takes(words[len(command.words.split()) :])
    named = [name for name in command.arguments if name.isupper()]  # not the words given as they are
    for name, arg in zip(named, args, strict=False):
        if name in ("ID", "N"):
            assert isinstance(arg, int) and arg >= 1
        else:
            assert isinstance(arg, str)
    if command.options:
        assert len(args) == len(named) + 1 and isinstance(args[-1], list)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("kill conn \u00b2", "kill conn: '\u00b2' is not a connection id (a whole number of at least 1)"),
        ("kill conn 0", "kill conn: '0' is not a connection id (a whole number of at least 1)"),
        ("kill conn", "usage: kill conn ID"),
        ("kill", "unknown command 'kill' (did you mean 'kill conn'?)"),
        ("frobnicate \u00b2", "unknown command 'frobnicate \u00b2'; try 'help'"),
        ("shwo conns", "unknown command 'shwo conns' (did you mean 'show conns'?)"),
        ("set server app 10.0.0.1:80 weight 0", "set server: '0' is not a weight (a whole number from 1 to 1000000)"),
        ("set server app 10.0.0.1:80 size 3", "usage: set server UPSTREAM ADDRESS weight N"),
        ("add server app", "usage: add server UPSTREAM ADDRESS [weight N] [backup]"),
    ],
)
def test_what_is_not_a_command_says_why_in_one_line(line, error):
    with pytest.raises(CommandError) as raised:
        parse_command(line.split())
    assert str(raised.value) == error


def test_arguments_are_read_as_their_usage_names_them():
    assert parse_command(["kill", "conn", "0042"]) == (COMMANDS["kill conn"], [42])
    assert parse_command(["dump", "on", "route=api", "client=10.0.0.0/8"])[1] == ["route=api", "client=10.0.0.0/8"]


def test_optional_words_reach_the_handler_as_a_list():
    assert parse_command(["add", "server", "app", "10.0.0.1:80", "weight", "3", "backup"])[1] == [
        "app",
        "10.0.0.1:80",
        ["weight", "3", "backup"],
    ]
    assert parse_command(["set", "server", "app", "10.0.0.1:80", "weight", "3"])[1] == ["app", "10.0.0.1:80", 3]
    assert parse_command(["reload"])[1] == [[]]


class Servers:
    """What `add server` and `reload` control, recording what they were asked."""

    def __init__(self) -> None:
        self.asked: list[ServerChange] = []
        self.reloads: list[bool] = []  # keep_runtime of each

    def change_server(self, change: ServerChange) -> str:
        self.asked.append(change)
        return "ok"

    def runtime_changes(self) -> list[str]:
        return [str(change) for change in self.asked]

    def reload(self, keep_runtime: bool = False) -> list[str]:
        self.reloads.append(keep_runtime)
        return []


def _answer(target, line: str) -> str:
    answers: list[str] = []
    execute(target, line, EventLog(stream=io.StringIO())).then(answers.append)
    return answers[0]


def test_server_options_are_read_and_a_reload_says_what_it_dropped():
    servers = Servers()
    assert _answer(servers, "add server app 10.0.0.1:80 backup weight 3") == "ok"
    assert servers.asked == [ServerChange("add", "app", "10.0.0.1:80", 3, True)]
    assert _answer(servers, "add server app 10.0.0.2:80 weight") == (
        "error: usage: add server UPSTREAM ADDRESS [weight N] [backup]"
    )
    assert _answer(servers, "reload --keep") == "error: usage: reload [--keep-runtime]"
    assert _answer(servers, "reload --keep-runtime") == "ok"
    assert _answer(servers, "reload") == "ok\ndropped: add server app 10.0.0.1:80 weight 3 backup"
    assert servers.reloads == [True, False]


def test_a_server_change_goes_to_workers_and_back_unchanged():
    change = ServerChange("weight", "app", "[::1]:80", 7)
    assert ServerChange.of_json(json.loads(json.dumps(change.to_json()))) == change
