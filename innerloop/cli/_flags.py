"""Command-line flags generated from a config dataclass: one ``--flag`` per field, shared by every subcommand."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

_TYPES = {"int": int, "float": float, "str": str}


def add_dataclass_flags(p: argparse.ArgumentParser, cls: type, skip: frozenset[str] | set[str] = frozenset()) -> None:
    """Add ``--field-name`` for each field of dataclass ``cls`` (bools get ``--x/--no-x``).

    Unset flags stay ``None``, so the dataclass's own defaults (shown in ``--help``) apply.
    """
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        name = f.type if isinstance(f.type, str) else f.type.__name__
        if name == "bool":
            p.add_argument(flag, default=None, action=argparse.BooleanOptionalAction, help=f"default: {f.default}")
        elif name in _TYPES:
            p.add_argument(flag, type=_TYPES[name], default=None, help=f"default: {f.default}")
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line flag for type {name!r}")


def dataclass_values(
    args: argparse.Namespace, cls: type, skip: frozenset[str] | set[str] = frozenset()
) -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.name not in skip and getattr(args, f.name) is not None}  # fmt: skip
