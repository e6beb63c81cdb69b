"""The admin socket's command parser over any text: a command and typed arguments, or CommandError.

Anyone who may use the socket can send it anything; whatever the line, the answer is one line,
never a handler's exception (which would leave the client with no answer at all).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.admin.commands import COMMANDS, parse_command
from proxy.admin.later import CommandError

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
    for name, arg in zip(command.arguments, args, strict=False):
        if name == "ID":
            assert isinstance(arg, int) and arg >= 1
        else:
            assert isinstance(arg, str)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("kill conn \u00b2", "kill conn: '\u00b2' is not a connection id (a whole number of at least 1)"),
        ("kill conn 0", "kill conn: '0' is not a connection id (a whole number of at least 1)"),
        ("kill conn", "usage: kill conn ID"),
        ("kill", "unknown command 'kill' (did you mean 'kill conn'?)"),
        ("frobnicate \u00b2", "unknown command 'frobnicate \u00b2'; try 'help'"),
        ("shwo conns", "unknown command 'shwo conns' (did you mean 'show conns'?)"),
    ],
)
def test_what_is_not_a_command_says_why_in_one_line(line, error):
    with pytest.raises(CommandError) as raised:
        parse_command(line.split())
    assert str(raised.value) == error


def test_arguments_are_read_as_their_usage_names_them():
    assert parse_command(["kill", "conn", "0042"]) == (COMMANDS["kill conn"], [42])
    assert parse_command(["dump", "on", "route=api", "client=10.0.0.0/8"])[1] == ["route=api", "client=10.0.0.0/8"]
