"""Ship a meta-trained rule: copy a training run's rule into the pretrained folder, with how it was made.

``innerloop optim train ... --export NAME`` (or ``innerloop optim export --out RUN --name NAME`` for a finished run)
writes ``NAME.safetensors`` + ``NAME.json`` (:func:`innerloop.optim.pretrained.save_rule`); the json records the one
command that reproduces the rule, the run's config and its evaluation against the tuned baselines, so that
``LearnedOptimizer(model.parameters(), rule="NAME")`` loads it offline.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from torch import nn

from innerloop.optim.meta_eval import _load_rule
from innerloop.optim.meta_train import MetaOptConfig, build_problem
from innerloop.optim.pretrained import PRETRAINED_DIR, _check_name, save_rule
from innerloop.runs import latest_checkpoint, load_state, read_config

__all__ = ["check_export", "export_rule", "reproduce_command"]

# where and how a run is run, not what it trains (a time budget that did not bind is left out too: the rule came from
# every episode of the config)
_RUN_CONTROL = frozenset({"out", "max_seconds", "log_every", "checkpoint_every", "device"})


def reproduce_command(cfg: MetaOptConfig, name: str, time_bound: bool = False) -> str:
    """The ``innerloop optim train`` line that trains ``cfg``'s rule again and exports it as ``name``: every field
    that differs from the defaults, except how and where the run is run (``time_bound``: the run was stopped by its
    ``max_seconds``, which is then kept, since it decided how far the rule was trained)."""
    default = MetaOptConfig()
    flags = []
    for key, value in cfg.__dict__.items():
        if key == "max_seconds" and time_bound:
            flags.append(f"--max-seconds {value:g}")
            continue
        if key in _RUN_CONTROL or value == getattr(default, key):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{key.replace('_', '-')}")
        elif isinstance(value, (list, tuple)):
            flags.append(f"{flag} " + " ".join(str(v) for v in value))
        else:
            flags.append(f"{flag} {value}")
    return " ".join(["innerloop optim train", *flags, f"--out runs/optim/{name}", f"--export {name}"])


def check_export(rule: str, name: str, directory: str | Path | None = None) -> None:
    """Refuse an export that :func:`export_rule` could not write, before any training: a bad ``name``, or a ``rule``
    (``MetaOptConfig.rule``) that has no saved form (``sgd_lr``'s per-tensor learning rates belong to one model's
    parameter names, so it cannot be loaded by name for another model). A ``name`` that ``directory`` (default: the
    package's pretrained folder) already holds, a shipped rule included, is replaced by the export: said on stderr
    now, before the training, so that it can still be stopped.

    Raises:
        ValueError: the name or the rule cannot be exported.
    """
    import sys

    import torch

    from innerloop.optim.learned import RULES as SAVABLE
    from innerloop.optim.meta_train import RULES

    _check_name(name)

    def savable(r: str) -> bool:
        made = RULES[r]({"w": torch.zeros(1)})  # the rule's class; its size does not matter here
        return SAVABLE.get(type(made).__name__) is type(made)

    if rule in RULES and not savable(rule):
        ok = [r for r in RULES if savable(r)]
        raise ValueError(f"--rule {rule} cannot be exported as a pretrained rule: only a rule trained with --rule "
                         f"{', '.join(ok)} can")  # fmt: skip
    existing = Path(PRETRAINED_DIR if directory is None else directory) / f"{name}.json"
    if existing.is_file():
        note = f"note: the export will replace the rule {name!r} already in {existing.parent} (another name keeps it)"
        print(note, file=sys.stderr)


def export_rule(out: str | Path, name: str, directory: str | Path | None = None) -> Path:
    """Save the rule of training run ``out`` (its newest intact checkpoint) as pretrained rule ``name``.

    Args:
        out (str | Path): a run directory made by ``innerloop optim train``.
        name (str): the rule's name, e.g. ``"lstm-quadratic"``.
        directory (str | Path, Optional): where to write. Default: None (the package's pretrained folder).

    Returns:
        Path: the ``.json`` written.
    """
    out = Path(out)
    saved, _ = read_config(out, "innerloop optim train", MetaOptConfig)
    cfg = MetaOptConfig(**{**saved, "device": "cpu"})
    check_export(cfg.rule, name, directory)
    rule: nn.Module = _load_rule(cfg, build_problem(cfg))
    checkpoint = latest_checkpoint(out / "checkpoints")
    trained = int(load_state(checkpoint)["step"]) if checkpoint is not None else 0
    total = cfg.episodes * cfg.unrolls
    stopped_early = trained < total
    if stopped_early and trained % cfg.unrolls == 0:
        # stopped by the time budget between episodes: the same run with that many episodes is this rule (nothing in
        # training depends on the planned total), so that is the command, without the machine-dependent budget
        cfg_run = dataclasses.replace(cfg, episodes=trained // cfg.unrolls)
        command = reproduce_command(cfg_run, name)
    else:
        command = reproduce_command(cfg, name, time_bound=stopped_early)
    meta: dict[str, Any] = {"command": command, "config": cfg.__dict__, "meta_steps_trained": trained,
                            "meta_steps_planned": total}  # fmt: skip
    if stopped_early:
        meta["note"] = (f"stopped by --max-seconds {cfg.max_seconds:g} after {trained} of {total} meta-steps "
                        f"({trained / cfg.unrolls:g} episodes)")  # fmt: skip
    if (out / "metrics.json").is_file():
        meta["evaluation"] = json.loads((out / "metrics.json").read_text()).get("optimizers", {})
    return save_rule(rule, PRETRAINED_DIR if directory is None else directory, name, meta)
