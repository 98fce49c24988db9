"""Train any mixer on any synthetic task and report accuracy (or MSE), including length generalisation.

A run writes ``out/config.json`` (the resolved :class:`SynthConfig`), ``out/log.csv`` (step, length, loss, grad norm
before clipping, seconds) and ``out/metrics.json`` (per evaluation length: the model's scores and the task baseline).
Training lengths are drawn uniformly from ``[min_train_length, train_length]`` each step; evaluation uses
``eval_lengths`` (default: ``train_length`` and ``2 * train_length``), so lengths above ``train_length`` measure
length generalisation.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from innerloop.data.synthetic import TASKS, SynthBatch, SyntheticTask, make_task
from innerloop.errors import check_choice
from innerloop.layers import MIXERS
from innerloop.train.bptt import clip_gradients, truncated_bptt

from .model import SynthModel, count_params, match_hidden_size

__all__ = ["SynthConfig", "build_model", "evaluate", "loss_sum", "train"]


@dataclass
class SynthConfig:
    """One synthetic-task run (saved as ``config.json``; the trailing comments are the CLI flags' ``--help``)."""

    # allowed values of the fields with a fixed set (registries: the command line offers them as choices)
    CHOICES: ClassVar[dict[str, Collection[str]]] = {"task": TASKS, "mixer": MIXERS}

    task: str = "copy"  # synthetic task (innerloop/synth/README.md lists formats and baselines)
    task_options: dict[str, Any] = field(default_factory=dict)  # task constructor options, e.g. {"vocab_size": 10}
    mixer: str = "lstm"  # sequence mixer (any registered one)
    hidden_size: int = 64  # model width (ignored when target_params > 0)
    target_params: int = 0  # > 0: pick hidden_size so the model has about this many parameters (equal-size tables)
    num_layers: int = 2  # mixer layers
    num_heads: int = 2  # heads (attention and TTT mixers)
    steps: int = 500  # optimizer steps
    batch_size: int = 32  # sequences per step
    lr: float = 3e-3  # learning rate (AdamW without weight decay)
    train_length: int = 8  # training sequence length (the task's length parameter)
    min_train_length: int = 0  # > 0: draw each step's length from [min_train_length, train_length]; 0 = fixed
    eval_lengths: list[int] = field(default_factory=list)  # evaluation lengths; default: train_length and twice it
    eval_batch_size: int = 256  # sequences per evaluation length
    clip_norm: float = 1.0  # clip the gradient norm to this; 0 = off
    clip_value: float = 0.0  # clip every gradient entry to [-clip_value, clip_value]; 0 = off
    tbptt_window: int = 0  # truncated BPTT window (steps); 0 = full BPTT
    log_every: int = 50  # steps between log.csv rows
    seed: int = 0  # seed of the initialisation and the data
    out: str = "runs/synth"  # run folder: config.json, log.csv, metrics.json
    threads: int = 0  # torch CPU threads; 0 = leave torch's default

    def __post_init__(self) -> None:
        for name, allowed in self.CHOICES.items():
            check_choice(name, getattr(self, name), allowed)
        for name in ("steps", "batch_size", "train_length", "hidden_size", "num_layers", "num_heads",
                     "eval_batch_size", "log_every"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("target_params", "min_train_length", "clip_norm", "clip_value", "tbptt_window", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = off / default), got {getattr(self, name)}")
        if self.min_train_length > self.train_length:
            raise ValueError(f"min_train_length {self.min_train_length} > train_length {self.train_length}")
        if any(n < 1 for n in self.eval_lengths):
            raise ValueError(f"eval_lengths must be >= 1, got {self.eval_lengths}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def _model_io(task: SyntheticTask) -> dict[str, Any]:
    if task.kind == "classification":
        return {"vocab_size": task.vocab_size, "out_features": task.vocab_size}
    return {"in_features": task.in_features, "out_features": task.out_features}


def build_model(cfg: SynthConfig, task: SyntheticTask) -> SynthModel:
    """The run's model; ``target_params > 0`` overrides ``hidden_size`` with the closest match."""
    io = _model_io(task)
    hidden = cfg.hidden_size
    if cfg.target_params > 0:
        hidden = match_hidden_size(cfg.mixer, cfg.target_params, cfg.num_layers, cfg.num_heads, **io)
    return SynthModel(cfg.mixer, hidden, cfg.num_layers, cfg.num_heads, **io)


def loss_sum(task: SyntheticTask):
    """``(out, targets, mask) -> summed loss`` over scored positions: cross-entropy or squared error (mean over O)."""
    if task.kind == "classification":
        return lambda out, y, m: F.cross_entropy(out[m], y[m], reduction="sum")
    return lambda out, y, m: ((out - y) ** 2).mean(-1)[m].sum()


@torch.no_grad()
def evaluate(model: SynthModel, task: SyntheticTask, length: int, batch_size: int = 256,
             generator: torch.Generator | None = None) -> dict[str, float]:
    """Scores on one fresh batch at ``length``: ``loss``, ``token_acc``, ``seq_acc`` (classification) or ``mse``."""
    model.eval()
    b: SynthBatch = task.sample(batch_size, length, generator)
    out, _ = model(b.inputs)
    n = b.mask.sum()
    res = {"length": length, "loss": float(loss_sum(task)(out, b.targets, b.mask) / n)}
    if task.kind == "classification":
        correct = (out.argmax(-1) == b.targets) | ~b.mask
        res["token_acc"] = float(((out.argmax(-1) == b.targets) & b.mask).sum() / n)
        res["seq_acc"] = float(correct.all(1).float().mean())
    else:
        res["mse"] = res["loss"]
    model.train()
    return res


def train(cfg: SynthConfig, progress: bool = False) -> tuple[dict[str, Any], SynthModel]:
    """Train and evaluate one run; writes ``config.json``, ``log.csv``, ``metrics.json`` under ``cfg.out``.

    Returns:
        tuple[dict, SynthModel]: the metrics (as written) and the trained model.
    """
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    task = make_task(cfg.task, **cfg.task_options)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, task)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.train_length < task.min_length:
        raise ValueError(f"task {cfg.task!r}: length must be >= {task.min_length}, got train_length "
                         f"{cfg.train_length}")
    lo = max(cfg.min_train_length or cfg.train_length, task.min_length)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    resolved = dataclasses.asdict(cfg) | {"hidden_size": model.hidden_size, "num_params": count_params(model)}
    (out / "config.json").write_text(json.dumps(resolved, indent=2))
    ls = loss_sum(task)
    t0 = time.perf_counter()
    with open(out / "log.csv", "w", newline="") as f:
        log = csv.writer(f)
        log.writerow(["step", "length", "loss", "grad_norm", "seconds"])
        for step in range(1, cfg.steps + 1):
            length = int(torch.randint(lo, cfg.train_length + 1, (1,), generator=gen))
            b = task.sample(cfg.batch_size, length, gen)
            opt.zero_grad(set_to_none=True)
            loss, _ = truncated_bptt(model, ls, b.inputs, b.targets, b.mask, window=cfg.tbptt_window or None)
            gnorm = clip_gradients(model, cfg.clip_norm or None, cfg.clip_value or None)
            opt.step()
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {step}; lower --lr or clip harder")
            if step % cfg.log_every == 0 or step == cfg.steps:
                log.writerow([step, length, f"{loss:.6f}", f"{float(gnorm):.4f}", f"{time.perf_counter() - t0:.2f}"])
                f.flush()
                if progress:
                    print(f"step {step:>5}  len {length:>4}  loss {loss:.4f}  |g| {float(gnorm):.3f}")
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    lengths = cfg.eval_lengths or [cfg.train_length, 2 * cfg.train_length]
    evals = []
    for n in lengths:
        r = evaluate(model, task, n, cfg.eval_batch_size, eval_gen)
        r["baseline"] = task.baseline(n)
        r["generalisation"] = n > cfg.train_length
        evals.append(r)
    metrics = {"task": cfg.task, "mixer": cfg.mixer, "hidden_size": model.hidden_size,
               "num_params": count_params(model), "steps": cfg.steps, "train_seconds": time.perf_counter() - t0,
               "final_train_loss": loss, "eval": evals}
    if hasattr(task, "report"):  # e.g. the arm task: rollout error vs horizon + plot
        metrics["rollout"] = task.report(model, out, eval_gen)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics, model
