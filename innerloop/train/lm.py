"""Language-model runs: data + model + :class:`Trainer` for a :class:`TrainConfig`, and re-loading a finished run.

A run directory holds ``config.json`` (fully resolved, with the token cache file it read under
``resolved.token_cache``), ``log.csv``, ``metrics.json``, ``checkpoints/``, ``loss_curve.png`` and ``tokenizer.json``
(``--tokenizer bpe``). The token cache is shared between runs (:func:`innerloop.data.text.cache_dir_of`). Training
again in the same directory resumes from the latest checkpoint, with the same tokenizer. The data parts live in
:mod:`innerloop.data.text`.
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from innerloop._io import atomic_write_json
from innerloop.data.text import (
    LMData,
    cache_dir_of,
    load_data,
    load_tokenizer,
    run_tokenizer,
    step_windows,
    token_bytes_of,
)
from innerloop.eval.lm import evaluate_lm, lm_loss, plot_curves
from innerloop.layers import set_ttt_lr_warmup
from innerloop.models import count_params
from innerloop.models.lm import CausalLM
from innerloop.runs import Callback, Run, load_latest_weights, read_config, read_log

from .config import TrainConfig
from .distributed import DistInfo, resolve_device, setup_distributed
from .fsdp import check_parallel
from .schedules import warmup_fraction
from .trainer import Trainer

__all__ = ["TTTLRWarmup", "load_run", "plot_log", "train_lm"]


def _main_first(dist_info: DistInfo | None, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 first (it writes the tokenizer / token cache), then on the other ranks (they read)."""
    if dist_info is None or not dist_info.enabled or not torch.distributed.is_initialized():
        return fn()
    if not dist_info.is_main:
        torch.distributed.barrier()
    out = fn()
    if dist_info.is_main:
        torch.distributed.barrier()
    return out


def _run_data(cfg: TrainConfig, dist_info: DistInfo) -> LMData:
    """The run's tokenizer and tokens (rank 0 builds the BPE / token cache first); split sizes checked."""

    def load() -> LMData:
        tok = run_tokenizer(cfg.tokenizer, cfg.model.vocab_size, cfg.out, cfg.data, cfg.gutenberg,
                            cfg.val_fraction)  # fmt: skip
        return load_data(cfg.data, tok, cache_dir_of(cfg.out, cfg.cache_dir), cfg.gutenberg, cfg.val_fraction)

    data = _main_first(dist_info, load)
    data.check_context(cfg.context)
    return data


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TTTLRWarmup(Callback):
    """The authors' TTT-MLP recipe: the inner base LR grows linearly from ``init`` to its value over ``steps``."""

    def __init__(self, steps: int, init: float) -> None:
        self.steps, self.init = steps, init

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        set_ttt_lr_warmup(trainer.model, self.init, warmup_fraction(step, self.steps))


def make_batch_fn(cfg: TrainConfig, tokens: np.ndarray | Tensor, dist_info: DistInfo):
    """Global batch ``step`` is a pure function of ``(seed, step)``; this rank gets its contiguous rows of it."""
    world = dist_info.world_size
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by world_size * grad_accum = "
                         f"{world} * {cfg.grad_accum}")  # fmt: skip
    local = cfg.batch_size // world
    lo = dist_info.rank * local

    def batch_fn(step: int) -> tuple[Tensor, Tensor]:
        x, y = step_windows(tokens, cfg.batch_size, cfg.context, cfg.seed, step)
        return x[lo : lo + local].to(dist_info.device), y[lo : lo + local].to(dist_info.device)

    return batch_fn


def train_lm(cfg: TrainConfig, progress: bool = False, callbacks: list[Callback] | None = None,
             dist_info: DistInfo | None = None, fresh: bool = False, extend: bool = False) -> dict[str, Any]:
    """Train (or resume) the run ``cfg.out``; write ``metrics.json`` and ``loss_curve.png``. Returns the metrics.

    Args:
        cfg (TrainConfig): the run.
        progress (bool, Optional): tqdm bar and resume messages on rank 0. Default: False.
        callbacks (list[Callback], Optional): extra :class:`innerloop.runs.Callback` hooks. Default: None.
        dist_info (DistInfo, Optional): Default: None (:func:`setup_distributed` of ``cfg.device``).
        fresh (bool, Optional): start over when ``cfg.out`` holds a run (kept as ``<out>.previous-<time>``).
            Default: False.
        extend (bool, Optional): allow ``cfg.steps`` to exceed the checkpoint's (train a finished run further).
            Default: False.
    """
    dist_info = dist_info or setup_distributed(cfg.device)
    check_parallel(cfg.parallel, dist_info.world_size)  # before any data is read
    if fresh:  # move the old run aside *before* its tokenizer.json could be read as this run's
        mover = Run(cfg.out, {}, fresh=True, is_main=dist_info.is_main)
        mover.start_fresh_if_asked()
        if dist_info.enabled and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if progress and dist_info.is_main and mover.moved_to is not None:
            print(f"--fresh: the previous contents of {cfg.out} are kept in {mover.moved_to}", file=sys.stderr)
        fresh = False  # done: the Trainer must not move this run's new tokenizer.json aside again
    data = _run_data(cfg, dist_info)
    seed_everything(cfg.seed)
    model = CausalLM(cfg.model_for(data.tokenizer.vocab_size)).to(dist_info.device)
    n_params = count_params(model)
    resolved = {"vocab_size": model.config.vocab_size, "params": n_params, "device": dist_info.device,
                "world_size": dist_info.world_size, "ttt_lr_warmup_steps": cfg.resolved_ttt_warmup(),
                "tokenizer": data.tokenizer.ident, "token_cache": str(data.cache_file),
                "train_tokens": len(data.train), "val_tokens": len(data.val)}
    cbs: list[Callback] = []
    if cfg.resolved_ttt_warmup() > 0:
        cbs.append(TTTLRWarmup(cfg.resolved_ttt_warmup(), cfg.ttt_base_lr_init))
    cbs += callbacks or []
    eval_windows = cfg.eval_batches * cfg.batch_size
    token_bytes = token_bytes_of(data.tokenizer)
    eval_batch = cfg.micro_batch_size(dist_info.world_size)  # the same windows, in training-sized batches

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        set_ttt_lr_warmup(m, cfg.ttt_base_lr_init, 1.0)  # evaluate with the full inner LR whatever the warm-up says
        return evaluate_lm(m, data.val, cfg.context, eval_batch, eval_windows, token_bytes=token_bytes)

    trainer = Trainer(
        model, cfg, make_batch_fn(cfg, data.train, dist_info), lm_loss, eval_fn, cbs, dist_info,
        tokens_per_step=cfg.batch_size * cfg.context, progress=progress, fresh=fresh, extend=extend,
        resolved=resolved,
    )  # fmt: skip
    summary = trainer.fit()
    metrics = {"mixer": cfg.model.mixer, "params": n_params, "context": cfg.context, **summary}
    if dist_info.is_main:
        atomic_write_json(Path(cfg.out) / "metrics.json", metrics)
        with contextlib.suppress(ImportError):  # matplotlib is optional
            plot_log(Path(cfg.out) / "log.csv", Path(cfg.out) / "loss_curve.png", cfg.model.mixer)
    return metrics


def _is_byte_run(log_csv: str | Path) -> bool:
    """Whether the run beside ``log_csv`` uses byte tokens (its ``config.json``; True when it cannot be read)."""
    try:
        body, _ = read_config(Path(log_csv).parent, "innerloop lm train")
    except (OSError, ValueError):
        return True
    return body.get("tokenizer", "bytes") == "bytes"


def plot_log(log_csv: str | Path | dict[str, str | Path], path: str | Path, name: str = "train") -> None:
    """Loss curves (training and validation bits against tokens) from one or several ``log.csv``.

    The training log holds nats per *token*: for byte runs that is bits per byte after dividing by ln 2; for BPE runs
    both curves are drawn in bits per token (the validation's ``val_loss``), so they share one unit."""
    logs = log_csv if isinstance(log_csv, dict) else {name: log_csv}
    series, styles, units = {}, {}, set()
    for i, (label, p) in enumerate(logs.items()):
        rows = read_log(p)
        byte_run = _is_byte_run(p)
        units.add("bits per byte" if byte_run else "bits per token")
        color = f"C{i % 10}"  # one colour per run: training solid, validation dashed with markers
        series[f"{label} train"] = ([int(r["tokens"]) for r in rows], [float(r["loss"]) / np.log(2) for r in rows])
        styles[f"{label} train"] = dict(color=color, alpha=0.8)
        val = [r for r in rows if r["val_bpb"]]
        if val:
            ys = [float(r["val_bpb"]) if byte_run else float(r["val_loss"]) / np.log(2) for r in val]
            series[f"{label} val"] = ([int(r["tokens"]) for r in val], ys)
            styles[f"{label} val"] = dict(color=color, linestyle="--", marker="o")
    ylabel = units.pop() if len(units) == 1 else "bits per token (byte runs: per byte)"
    plot_curves(series, path, "training tokens", ylabel, "Loss curves", styles)


def load_run(out: str | Path, device: str = "cpu") -> tuple[CausalLM, TrainConfig]:
    """The model of run directory ``out`` (newest intact checkpoint) and its config."""
    out = Path(out)
    body, _ = read_config(out, "innerloop lm train")
    cfg = TrainConfig.from_dict(body)
    device = resolve_device(device)
    model = CausalLM(cfg.model_for(load_tokenizer(cfg.tokenizer, out).vocab_size)).to(device)
    if load_latest_weights(out / "checkpoints", model, map_location=device) is None:
        raise FileNotFoundError(f"{out} has no checkpoint yet (no checkpoints/step_* folder)")
    model.eval()
    return model, cfg
