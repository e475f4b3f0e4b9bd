"""User-facing errors: one line that names the cause, plus a hint.

Everything a user can get wrong (a config value, a path, a file) raises
:class:`ConfigError` or :class:`DataError`. The command-line entry points catch
these and print ``error: <cause> (hint: <hint>)`` without a traceback, unless
``HYDRA_FULL_ERROR=1`` asks for the full trace. Internal bugs are *not* wrapped:
they keep their traceback so they can be fixed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class ResflexError(Exception):
    """Base class for errors caused by user input; carries an optional hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message} (hint: {self.hint})"
        return " ".join(text.split())


class ConfigError(ResflexError, ValueError):
    """A configuration value is invalid (unknown name, out of range, wrong type)."""


class DataError(ResflexError, OSError):
    """A dataset path or file is missing, empty, or unreadable."""


def full_error_requested() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR", "0") not in ("", "0")


@contextmanager
def user_errors_as_one_line(exit_code: int = 2) -> Iterator[None]:
    """Turn :class:`ResflexError` into ``error: ...`` on stderr and ``SystemExit``.

    Hydra wraps exceptions raised inside the task; we unwrap the chain to find
    the user-facing cause so that the message is the same however deep it came from.
    """
    try:
        yield
    except BaseException as exc:
        cause = find_user_error(exc)
        if cause is None or full_error_requested():
            raise
        print(f"error: {cause.one_line()}", file=sys.stderr)
        raise SystemExit(exit_code) from None


@contextmanager
def interruption_as_one_line(what: str) -> Iterator[None]:
    """Ctrl-C in a command that keeps no state (evaluate, predict, export): one line on stderr and exit
    code 130, not a page of traceback through torch and Hydra. ``what``: what was left undone.
    Training handles its own interruptions (a checkpoint, the resume command: resflex.train)."""
    try:
        yield
    except KeyboardInterrupt:
        if full_error_requested():
            raise
        print(f"interrupted: {what}", file=sys.stderr)
        raise SystemExit(130) from None


def find_in_chain(
    exc: BaseException | None, matches: Callable[[BaseException], bool]
) -> BaseException | None:
    """The first exception in ``exc``'s chain (itself, then ``__cause__``, else ``__context__``) that
    ``matches``, or None; a cycle in the chain ends the walk."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if matches(exc):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def find_user_error(exc: BaseException | None) -> ResflexError | None:
    """The first :class:`ResflexError` in ``exc``'s chain."""
    found = find_in_chain(exc, lambda e: isinstance(e, ResflexError))
    return found if isinstance(found, ResflexError) else None


def first_line(exc: BaseException | str) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none.

    A str is a message already taken out of its exception (``decode_jpeg_reason``); an empty one has
    no type name worth showing (it would read "str").
    """
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return "no reason given" if isinstance(exc, str) else type(exc).__name__


def describe_error(exc: BaseException) -> str:
    """One line for a run record or a sweep log: the user-facing cause, else the type and first line."""
    user_error = find_user_error(exc)
    if user_error is not None:
        return user_error.one_line()
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
