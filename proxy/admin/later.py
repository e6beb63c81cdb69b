"""A deferred answer: `Later`, a value that may not be there yet, and `CommandError`, the refusal it
may end in instead.

The Server answers the admin surfaces at once; the supervisor of `run --workers` answers once its
workers have (or their deadline has passed), without blocking its loop. Whatever asks (a command
on the admin socket, a page of the HTTP admin) chains its steps on a Later and makes its answer
at its edge (`otherwise`), where a refusal and a bug are told apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
U = TypeVar("U")


class CommandError(Exception):
    """A refusal: what was asked cannot be done, and its message (for people) says why; the
    answer's one line after `error: `, or a 503's body. Only the boundaries make one: a parse
    of the operator's words, a ValueError a Controlled method raises at once (`_refused_at_once`), a
    worker's error message. Any other exception behind an answer is a bug."""


class Later(Generic[T]):
    """A value that may not be there yet: `then(step)` runs `step` on it once it is settled (at
    once if it already is) and is the Later of what `step` returns. A Later may end instead in a
    refusal (a CommandError) or a failure (any other exception: a bug), and so does one whose
    step raises; both pass the steps of `then` by, up to the `otherwise` that makes an answer of
    each (an admin endpoint's edge, which logs a failure). The last step of a chain, the one that
    sends the answer, must not raise: nobody reads what its Later ends in."""

    def __init__(self) -> None:
        self.settled = False
        self._value: Any = None
        self._error: Exception | None = None
        self._steps: list[Callable[[], None]] = []

    @staticmethod
    def of(value: T | Later[T]) -> Later[T]:
        """`value` as a Later: itself if it is one, else settled with it."""
        if isinstance(value, Later):
            return value
        later: Later[T] = Later()
        later.settle(value)
        return later

    @staticmethod
    def calling(action: Callable[[], T | Later[T]]) -> Later[T]:
        """The Later of what `action` returns, or ended in what it raises."""
        try:
            return Later.of(action())
        except Exception as exc:  # a refusal or a bug, for the edge's `otherwise` to tell apart
            later: Later[T] = Later()
            later._end(None, exc)
            return later

    def settle(self, value: T) -> None:
        self._end(value, None)

    def refuse(self, refusal: CommandError) -> None:
        self._end(None, refusal)

    def _end(self, value: Any, error: Exception | None) -> None:
        self.settled, self._value, self._error = True, value, error
        steps, self._steps = self._steps, []
        for step in steps:
            step()

    def then(self, step: Callable[[T], U]) -> Later[U]:
        return self._follow(lambda: step(self._value), pass_error=True)

    def otherwise(self, refused: Callable[[CommandError], T], failed: Callable[[Exception], T]) -> Later[T]:
        """The same value, or what `refused` makes of a refusal, or `failed` of a failure."""

        def run() -> T:
            if self._error is None:
                return self._value
            if isinstance(self._error, CommandError):
                return refused(self._error)
            return failed(self._error)

        return self._follow(run, pass_error=False)

    def _follow(self, run: Callable[[], Any], *, pass_error: bool) -> Later[Any]:
        following: Later[Any] = Later()

        def step() -> None:
            if pass_error and self._error is not None:
                following._end(None, self._error)
                return
            try:
                value = run()
            except Exception as exc:  # a refusal or a bug: ends this link only, never the settler's
                following._end(None, exc)
                return
            following.settle(value)

        if self.settled:
            step()
        else:
            self._steps.append(step)
        return following
