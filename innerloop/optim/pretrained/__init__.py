"""Pretrained learned optimizers shipped inside the package, loaded offline by name.

A rule named ``<name>`` is two files in this folder (or in any folder given as ``directory``):

- ``<name>.safetensors``: the rule's ``state_dict()`` (its weights);
- ``<name>.json``: ``{"format": 1, "rule": "<class name in RULES>", "kwargs": {constructor arguments}, "meta":
  {how it was trained: command, problem, steps, ...}}``.

:func:`save_rule` writes both, :func:`load_rule` rebuilds the rule from them, :func:`available_rules` lists the
names. ``innerloop optim train ... --export NAME`` produces the files that get shipped here; each json records that
command, the run's config, how many meta-steps it trained and its evaluation against the tuned baselines (RESULTS.md
has the tables). Shipped: ``lstm-quadratic`` and ``mlp-quadratic`` (10-d quadratics, 100 steps) and ``lstm-digits``
and ``mlp-digits`` (the 20-sigmoid-unit MLP on scikit-learn's 8x8 digits, 100 steps), and ``tiny-digits`` (a
:class:`~innerloop.optim.TinyRule`, whose step costs about an Adam step, on the same digits MLP); a rule knows only the
problems it was meta-trained on.

Examples:
    >>> import tempfile
    >>> from innerloop.optim import LSTMRule
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = save_rule(LSTMRule(p=5.0), d, "demo", {"command": "none (doctest)"})
    ...     load_rule("demo", d).p, available_rules(d)
    (5.0, ['demo'])
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from torch import nn

from innerloop._io import atomic_write_bytes, atomic_write_json
from innerloop.optim.learned import RULES

__all__ = ["FORMAT", "PRETRAINED_DIR", "available_rules", "load_rule", "save_rule"]

PRETRAINED_DIR = Path(__file__).resolve().parent
FORMAT = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith((".json", ".safetensors")):
        raise ValueError(
            f"bad rule name {name!r}: use letters, digits, '_', '-' and '.', without a folder or a file extension "
            f"(e.g. 'lstm-quadratic')"
        )


def available_rules(directory: str | Path | None = None) -> list[str]:
    """Names of the rules in ``directory`` (default: the ones shipped with innerloop) that have both files."""
    folder = Path(directory) if directory is not None else PRETRAINED_DIR
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if p.with_suffix(".safetensors").is_file())


def save_rule(rule: nn.Module, directory: str | Path, name: str, meta: dict[str, Any] | None = None) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` for ``rule`` into ``directory``.

    Args:
        rule (nn.Module): a learned rule whose class is in :data:`innerloop.optim.learned.RULES` and that records its
            constructor arguments in ``rule.config`` (``LSTMRule``, ``MLPRule``).
        directory (str | Path): where to write (created if missing).
        name (str): the rule's name, e.g. ``"lstm-quadratic"``.
        meta (dict, Optional): how it was trained (JSON-serialisable): command, problem, steps, final loss...
            Default: None (empty).

    Returns:
        Path: the ``.json`` file written.
    """
    from safetensors.torch import save

    _check_name(name)
    cls = type(rule).__name__
    if RULES.get(cls) is not type(rule) or not isinstance(getattr(rule, "config", None), dict):
        raise TypeError(
            f"save_rule: cannot save a {cls}; known rule classes are {sorted(RULES)} (they record their constructor "
            f"arguments in .config)"
        )
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in rule.state_dict().items()}
    atomic_write_bytes(folder / f"{name}.safetensors", save(weights))
    info = {"format": FORMAT, "rule": cls, "kwargs": dict(rule.config), "meta": dict(meta or {})}
    try:
        json.dumps(info)
    except TypeError as e:
        raise TypeError(f"save_rule: meta must be JSON-serialisable ({e})") from None
    atomic_write_json(folder / f"{name}.json", info)
    return folder / f"{name}.json"


def load_rule(name: str, directory: str | Path | None = None) -> nn.Module:
    """The rule ``name`` rebuilt from its files, weights loaded, on the CPU, in float32.

    Args:
        name (str): the rule's name (see :func:`available_rules`).
        directory (str | Path, Optional): where to look. Default: None (the rules shipped in
            ``innerloop/optim/pretrained/``).

    Returns:
        nn.Module: the rule (``LSTMRule`` or ``MLPRule``); ``rule.meta`` holds the training record from the json.

    Raises:
        ValueError: an unknown name (the message lists the known ones) or a malformed json.
    """
    from safetensors.torch import load_file

    _check_name(name)
    folder = Path(directory) if directory is not None else PRETRAINED_DIR
    meta_path, weights_path = folder / f"{name}.json", folder / f"{name}.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        known = available_rules(folder)
        where = "shipped with innerloop" if directory is None else f"in {folder}"
        listing = ", ".join(known) if known else "none yet (`innerloop optim train` produces them)"
        raise ValueError(f"unknown pretrained rule {name!r}; rules {where}: {listing}")
    try:
        info = json.loads(meta_path.read_text())
        cls, kwargs = RULES[info["rule"]], info["kwargs"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(
            f"{meta_path} is not a rule description ({type(e).__name__}: {e}); it needs 'rule' (one of "
            f"{sorted(RULES)}) and 'kwargs'. Re-save it with save_rule"
        ) from None
    if info.get("format") != FORMAT:
        raise ValueError(f"{meta_path} has format {info.get('format')!r}; this innerloop reads format {FORMAT}")
    rule = cls(**{**getattr(cls, "ADDED_KWARGS", {}), **kwargs})  # files saved before an argument existed
    rule.load_state_dict(load_file(str(weights_path)), strict=True)
    rule.meta = info.get("meta", {})
    return rule
