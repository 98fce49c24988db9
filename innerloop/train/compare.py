"""Same-budget comparisons: several mixers sized to about the same parameter count, trained on the same tokens.

Every mixer trains with the same data, context, batch, steps, optimiser and seed (so the same token budget); only
``hidden_size`` differs, chosen per mixer so the parameter count is closest to a target. Results: ``results.csv``,
``results.md``, ``results.json`` and ``loss_curves.png`` in the comparison directory, one run directory per mixer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from innerloop._io import atomic_write_text, write_csv
from innerloop.layers import MIXERS
from innerloop.models import count_params
from innerloop.models.lm import CausalLM

from .config import TrainConfig
from .lm import plot_log, train_lm

__all__ = ["compare", "format_table", "params_of", "size_for_params"]


def params_of(cfg: TrainConfig) -> int:
    """Parameter count of ``cfg``'s model, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        return count_params(CausalLM(cfg.model))


def size_for_params(cfg: TrainConfig, target: int) -> TrainConfig:
    """``cfg`` with the ``hidden_size`` (a multiple of ``4 * heads``, intermediate ``2x``) whose count is nearest
    ``target``."""
    step = 4 * cfg.model.num_attention_heads
    best, best_err = cfg, None
    for h in range(step, 4096 + 1, step):
        c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hidden_size=h, intermediate_size=2 * h))
        n = params_of(c)
        err = abs(n - target)
        if best_err is None or err < best_err:
            best, best_err = c, err
        if n > target:
            break
    return best


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of comparison rows (mixer, params, val bits/byte, val loss, tokens, tokens/s, seconds)."""
    head = "| mixer | params | hidden | val bits/byte | val loss | train tokens | train tokens/s | train s |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['mixer']} | {r['params'] / 1e6:.2f}M | {r['hidden_size']} | {r['val_bpb']:.3f} "
            f"| {r['val_loss']:.3f} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def compare(base: TrainConfig, mixers: list[str], out: str | Path, target_params: int = 0,
            progress: bool = False, fresh: bool = False, extend: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """Train every mixer of ``mixers`` with ``base``'s budget in ``out/<mixer>``; write and return the results.

    Args:
        base (TrainConfig): shared settings (``mixer``/``out`` are replaced per run).
        mixers (list[str]): registered mixer names.
        out (str | Path): comparison directory.
        target_params (int, Optional): size every model to about this many parameters; 0 = use ``base``'s
            ``hidden_size`` for all. Default: 0.
        progress (bool, Optional): tqdm bars. Default: False.
        fresh, extend (bool, Optional): for every run folder, as :func:`innerloop.train.train_lm`. Default: False.
    """
    unknown = [m for m in mixers if m not in MIXERS]
    if unknown or not mixers:
        raise ValueError(f"unknown mixer(s) {unknown or mixers}; known mixers: {sorted(MIXERS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfgs = []
    for m in mixers:
        c = dataclasses.replace(base, model=dataclasses.replace(base.model, mixer=m), out=str(out / m))
        cfgs.append(size_for_params(c, target_params) if target_params else c)
    rows = []
    for c in cfgs:
        metrics = train_lm(c, progress=progress, fresh=fresh, extend=extend)
        rows.append({**metrics, "hidden_size": c.model.hidden_size})
    fields = ["mixer", "params", "hidden_size", "val_bpb", "val_loss", "tokens", "tokens_per_s", "train_seconds",
              "steps", "stopped_early"]  # fmt: skip
    write_csv(rows, out / "results.csv", fields)
    atomic_write_text(out / "results.md", format_table(rows) + "\n")
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2) + "\n")
    with contextlib.suppress(ImportError):  # matplotlib is optional
        plot_log({r["mixer"]: out / r["mixer"] / "log.csv" for r in rows}, out / "loss_curves.png")
    return rows
