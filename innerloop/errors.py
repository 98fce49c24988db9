"""How the library reports input the user can fix, and the message for an unknown name.

Errors the user can fix (a bad flag or config value, a missing file or folder, a missing optional package) are
raised as ``ValueError``, ``OSError`` (e.g. ``FileNotFoundError``) or ``ImportError`` with a message naming the
problem and the fix; :data:`USER_ERRORS` lists them. The ``innerloop`` command prints them as one line and exits
with code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["USER_ERRORS", "check_choice", "check_whole"]

USER_ERRORS: tuple[type[Exception], ...] = (ValueError, OSError, ImportError)


def check_choice(what: str, value: Any, choices: Iterable[str]) -> None:
    """Raise ``ValueError("unknown <what> <value>; choose from a, b, c")`` unless ``value`` is one of ``choices``.

    Args:
        what (str): the field's name, e.g. ``"mixer"``.
        value (Any): the value given.
        choices (Iterable[str]): the allowed values (a registry dict works: its keys are used).

    Examples:
        >>> check_choice("task", "copy", ("copy", "adding"))
        >>> check_choice("task", "sort", ("copy", "adding"))
        Traceback (most recent call last):
        ...
        ValueError: unknown task 'sort'; choose from adding, copy
    """
    allowed = sorted(choices)
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")


def check_whole(what: str, value: Any) -> None:
    """Raise ``TypeError("<what> must be a whole number, got <value>")`` unless ``value`` is an integer (Python or
    numpy; not a bool): a float such as 2.7 would otherwise be truncated silently, ``True`` read as 1.

    Examples:
        >>> check_whole("length", 3)
        >>> check_whole("length", 2.7)
        Traceback (most recent call last):
        ...
        TypeError: length must be a whole number, got 2.7
    """
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{what} must be a whole number, got {value!r}")
