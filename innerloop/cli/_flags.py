"""Command-line flags generated from a config dataclass: one ``--flag`` per field, shared by every subcommand.

The help text of a flag is the trailing ``# comment`` of its field in the dataclass's source (the comment that
documents the field for Python users documents the flag too), followed by the choices and the default. A dataclass
may list the allowed values of some fields in a ``CHOICES`` class variable (``{field: values}``; a registry dict
works); those flags get argparse ``choices``, so a typo is a one-line usage error that lists them.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import os
import sys
import textwrap
import tokenize
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any


def number(text: str) -> float:
    """Argparse ``type=`` for a float flag: ``float`` without ``nan`` (which passes every ``x < 0`` check and then
    trains or scores with NaN). ``inf`` stays allowed (e.g. "no limit"); each config checks its own range.

    Examples:
        >>> number("1e-3")
        0.001
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return value


number.__name__ = "number"  # argparse names the type in some messages


def finite(low: float = 0.0, strict: bool = False) -> Callable[[str], float]:
    """Argparse ``type=`` for a finite float ``> low`` (``strict``) or ``>= low``: a learning rate or clip norm
    (``finite(strict=True)``), a bonus scale where 0 means none (``finite()``).

    Examples:
        >>> finite(strict=True)("0.5")
        0.5
        >>> finite()("0")
        0.0
    """
    bound = f"> {low:g}" if strict else f">= {low:g}"

    def parse(text: str) -> float:
        value = number(text)
        if not (value > low if strict else value >= low) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text!r}")
        return value

    parse.__name__ = f"number {bound}"  # argparse names the type in some messages
    return parse


class Distinct(argparse.Action):
    """Argparse ``action=`` for a list flag (``nargs="+"``) whose values must differ: ``--mixers lstm lstm`` would
    train, score or draw the same thing twice (and overwrite its own files), so it is a one-line usage error.

    Examples:
        >>> p = argparse.ArgumentParser()
        >>> _ = p.add_argument("--mixers", nargs="+", action=Distinct)
        >>> p.parse_args(["--mixers", "rnn", "lstm"]).mixers
        ['rnn', 'lstm']
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        seen: list[Any] = []
        for v in values:
            if v in seen:
                raise argparse.ArgumentError(self, f"{v!r} is given twice; give each value once")
            seen.append(v)
        setattr(namespace, self.dest, values)


def folder(text: str) -> str:
    """Argparse ``type=`` for an output folder or file: not empty (``Path("")`` is the current directory, so
    ``--out "$DIR"`` with ``DIR`` unset would write into whatever folder the command runs in).

    Examples:
        >>> folder("runs/x")
        'runs/x'
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(f"is empty ({text!r}): give a path (an unset shell variable in \"$DIR\"?)")
    return text


folder.__name__ = "path"


def folder_path(text: str) -> Path:
    """:func:`folder` as a :class:`~pathlib.Path`."""
    return Path(folder(text))


folder_path.__name__ = "path"

_TYPES: dict[str, Any] = {"int": int, "float": number, "str": str}
_TOOL_COMMENTS = ("fmt:", "noqa", "type:", "pragma")


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """``{field: text}`` of the trailing ``# text`` on each field's line in ``cls`` (and its dataclass bases).

    Fields without a comment, and classes whose source is not available, are left out.

    Examples:
        >>> from innerloop.synth.harness import SynthConfig
        >>> field_comments(SynthConfig)["mixer"]
        'sequence mixer (any registered one)'
    """
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source file (e.g. an interactive session)
            continue
        comments = {
            tok.start[0]: tok.string.lstrip("#").strip()
            for tok in tokenize.generate_tokens(io.StringIO(src).readline)
            if tok.type == tokenize.COMMENT
        }
        node = ast.parse(src).body[0]
        for stmt in getattr(node, "body", []):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                text = comments.get(stmt.end_lineno or stmt.lineno, "")
                if text and not text.startswith(_TOOL_COMMENTS):
                    found[stmt.target.id] = text
    return found


def _annotation(f: dataclasses.Field) -> tuple[str, bool]:
    """``("int", True)`` for ``int | None``: the type's name and whether None is allowed."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    parts = [p.strip() for p in text.split("|")]
    rest = [p for p in parts if p != "None"]
    return (rest[0] if len(rest) == 1 else text), len(rest) < len(parts)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _help(text: str, choices: Collection[str] | None, default: Any, shown: str | None) -> str:
    parts = [text]
    if choices is not None:
        parts.append(f"one of: {', '.join(sorted(choices))}")
    if shown is not None:
        parts.append(f"default: {shown}")
    elif isinstance(default, bool):
        parts.append(f"default: {'on' if default else 'off'}")
    elif default not in (None, "", [], {}):  # an unset value's meaning is in the comment
        parts.append(f"default: {default}")
    return "; ".join(parts).replace("%", "%%")  # argparse %-formats help strings


def add_dataclass_flags(
    p: argparse.ArgumentParser,
    cls: type,
    skip: Collection[str] = frozenset(),
    show_default: Mapping[str, str] | None = None,
) -> None:
    """Add ``--field-name`` for each field of dataclass ``cls`` (bools get ``--x/--no-x``, lists take several values).

    Unset flags stay ``None``, so the dataclass's own defaults apply (see :func:`dataclass_values`).

    Args:
        p (argparse.ArgumentParser): the (sub)command's parser.
        cls (type): a dataclass with ``int``/``float``/``str``/``bool`` fields (``X | None`` and ``list[int]`` too).
        skip (Collection[str]): fields the command sets itself. Default: none.
        show_default (Mapping[str, str], Optional): default shown in ``--help`` where the command uses another
            than the dataclass's, e.g. ``{"out": "runs/lm/<mixer>-<time>"}``. Default: None.

    Raises:
        TypeError: a field of a type with no flag (skip it and add the flag yourself).
    """
    comments, choices = field_comments(cls), getattr(cls, "CHOICES", {})
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag, name = "--" + f.name.replace("_", "-"), _annotation(f)[0]
        allowed = choices.get(f.name)
        text = _help(comments.get(f.name, f.name.replace("_", " ")), allowed, _default(f),
                     (show_default or {}).get(f.name))  # fmt: skip
        if name == "bool":
            p.add_argument(flag, default=None, action=argparse.BooleanOptionalAction, help=text)
        elif name in _TYPES:
            extra: dict[str, Any] = {}
            if allowed is not None:
                extra = {"choices": sorted(allowed), "metavar": f.name.upper()}
            p.add_argument(flag, type=_TYPES[name], default=None, help=text, **extra)
        elif name in ("list[int]", "list[float]", "list[str]"):
            p.add_argument(flag, type=_TYPES[name[5:-1]], nargs="+", default=None, help=text)
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line flag for type {name!r}; pass it in skip= "
                            "and add the flag by hand")  # fmt: skip


def dataclass_values(args: argparse.Namespace, cls: type, skip: Collection[str] = frozenset()) -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line (``{name: value}``)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.name not in skip and getattr(args, f.name, None) is not None}  # fmt: skip


def saved_run_config(
    args: argparse.Namespace, command: str, upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The config of the run a training command resumes: ``--out DIR`` given, ``DIR/config.json`` there, no
    ``--fresh``; ``{}`` otherwise (a default ``--out``, a new folder, or ``--fresh``: the command behaves as before).

    The saved config is read with :func:`innerloop.runs.read_config` (its ``resolved`` part dropped) and passed
    through ``upgrade`` (the trainer's ``upgrade_config``), so a run made by an older version reads as today's. One
    line on stderr says that settings not given are taken from the run.
    """
    from innerloop.runs.run import check_out, read_config

    out = getattr(args, "out", None)
    if out is not None:
        check_out(out)
    if out is None or getattr(args, "fresh", False) or not (Path(out) / "config.json").is_file():
        return {}
    saved, _ = read_config(out, command)
    if os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(f"resuming {out}: settings not given here are taken from its config.json", file=sys.stderr, flush=True)
    return upgrade(saved) if upgrade is not None else saved


def run_config_values(
    args: argparse.Namespace,
    cls: type,
    command: str,
    *,
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    skip: Collection[str] = frozenset(),
    saved: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The values of a training command's config ``cls``: the flags given on the command line, and, when the command
    resumes the run in ``--out`` (:func:`saved_run_config`), that run's values of the fields not given.

    So ``innerloop rl train --algo rl2 --out DIR --steps 40 --extend`` continues the run in ``DIR`` with all its
    other settings; a flag given here still wins, and one that differs from the run is refused by
    :meth:`innerloop.runs.Run.check_config` as before.

    Args:
        args (argparse.Namespace): the parsed command line.
        cls (type): the config dataclass.
        command (str): the command, for errors (e.g. ``"innerloop meta train"``).
        upgrade (Callable, Optional): the trainer's ``upgrade_config`` (old runs in today's form). Default: None.
        skip (Collection[str]): fields the command sets itself (neither flag nor saved value is used).
        saved (Mapping, Optional): the saved config (or its section) already read; ``{}``: not resuming. Default:
            None (read it here).

    Returns:
        dict: ``{field: value}`` for the fields given or saved; the others keep the dataclass's defaults.
    """
    if saved is None:
        saved = saved_run_config(args, command, upgrade)
    names = {f.name for f in dataclasses.fields(cls)} - set(skip)
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(cls)})
    missing, shared = sorted(names - set(saved)), names & set(saved)
    if unknown and missing and len(unknown) >= len(shared):  # mostly settings this command does not have: another's
        out = getattr(args, "out", None)

        def some(names: list[str]) -> str:
            return ", ".join(names[:4]) + (f" (and {len(names) - 4} more)" if len(names) > 4 else "")

        raise ValueError(f"{out} holds a run of another command, not of `{command}`: its config.json has "
                         f"{some(unknown)} and no {some(missing)}. Resume it with the command that made it, use "
                         f"another --out, or --fresh to start over (the old run is kept as {Path(str(out)).name}"
                         f".previous-<time>); nothing was changed.")  # fmt: skip
    return {**{k: v for k, v in saved.items() if k in names}, **dataclass_values(args, cls, skip)}


def at_least(low: int) -> Callable[[str], int]:
    """Argparse ``type=`` for an integer ``>= low``: ``--length 0`` is then a one-line usage error.

    Examples:
        >>> at_least(1)("3")
        3
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"  # argparse names the type in some messages
    return parse


def image_file(text: str) -> Path:
    """Argparse ``type=`` for a figure to write: not empty, not a folder, and a format matplotlib writes (a name
    without one gets ``.png``, as matplotlib itself would add it, so the path printed is the file written).

    Examples:
        >>> str(image_file("runs/curves"))
        'runs/curves.png'
    """
    path = Path(folder(text))
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder: give the image file to write, e.g. "
                                         f"{str(path / 'plot.png')!r}")  # fmt: skip
    if not path.suffix:
        return path.with_name(path.name + ".png")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise argparse.ArgumentTypeError(f"{text!r}: matplotlib cannot write {path.suffix!r} files; end the name "
                                         f"with one of {', '.join('.' + f for f in sorted(formats))}")  # fmt: skip
    return path


image_file.__name__ = "image file"


def add_run_flags(p: argparse.ArgumentParser, steps_flag: str = "--steps") -> None:
    """``--fresh`` and ``--extend``: what to do when ``--out`` already holds a run (see :class:`innerloop.runs.Run`)."""
    g = p.add_mutually_exclusive_group()  # together they contradict each other: a usage error
    g.add_argument("--fresh", action="store_true",
                   help="start over even if --out holds a run; its old contents are kept in <out>.previous-<time>")
    g.add_argument("--extend", action="store_true",
                   help=f"train a run further: resume it with a larger {steps_flag} (settings not given are "
                        "taken from the run's config.json)")


def add_config_flags(
    p: argparse.ArgumentParser, configs: Mapping[str, type], skip: Collection[str] = frozenset()
) -> None:
    """The flags of several config dataclasses on one command (``rl train --algo rl2|maml``): one flag per field name.

    A field only one config has gets its flag as :func:`add_dataclass_flags` makes it. A field several configs share
    (``--env``, ``--seed``, ``--out``) gets one flag whose choices are the union of theirs and whose help gives each
    config's meaning and default (``rl2: ... | maml: ...``); each config still validates the value it receives.

    Args:
        p (argparse.ArgumentParser): the command's parser.
        configs (Mapping[str, type]): ``{name shown in help: config dataclass}``.
        skip (Collection[str]): fields the command sets itself. Default: none.

    Raises:
        TypeError: two configs give a shared field different types.
    """
    owners: dict[str, list[tuple[str, type, dataclasses.Field]]] = {}
    for name, cls in configs.items():
        for f in dataclasses.fields(cls):
            if f.name not in skip:
                owners.setdefault(f.name, []).append((name, cls, f))
    shared = {k for k, v in owners.items() if len(v) > 1}
    for cls in configs.values():  # a field of one config only: its usual flag
        add_dataclass_flags(p, cls, skip={*skip, *shared})
    for field_name in (k for k in owners if k in shared):
        kinds = {_annotation(f)[0] for _, _, f in owners[field_name]}
        if len(kinds) > 1:
            raise TypeError(f"--{field_name.replace('_', '-')}: the configs disagree on its type ({sorted(kinds)})")
        kind = kinds.pop()
        flag = "--" + field_name.replace("_", "-")
        texts, allowed = [], set()
        for name, cls, f in owners[field_name]:
            own = getattr(cls, "CHOICES", {}).get(field_name)
            allowed |= set(own) if own is not None else set()
            texts.append(f"{name}: " + _help(field_comments(cls).get(field_name, field_name.replace("_", " ")), own,
                                             _default(f), None))  # fmt: skip
        text = " | ".join(texts)
        if kind == "bool":
            p.add_argument(flag, default=None, action=argparse.BooleanOptionalAction, help=text)
        elif kind in _TYPES:
            extra: dict[str, Any] = {}
            if allowed and all(getattr(cls, "CHOICES", {}).get(field_name) is not None for _, cls, _ in
                               owners[field_name]):  # fmt: skip
                extra = {"choices": sorted(allowed), "metavar": field_name.upper()}
            p.add_argument(flag, type=_TYPES[kind], default=None, help=text, **extra)
        elif kind in ("list[int]", "list[float]", "list[str]"):
            p.add_argument(flag, type=_TYPES[kind[5:-1]], nargs="+", default=None, help=text)
        else:
            raise TypeError(f"--{field_name.replace('_', '-')}: no command-line flag for type {kind!r}")
