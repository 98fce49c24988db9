"""Train any mixer on any synthetic task and report accuracy (or MSE), including length generalisation.

A run (on the run scaffold, :mod:`innerloop.runs`) writes ``out/config.json`` (the :class:`SynthConfig`, and under
``"resolved"`` the hidden size and parameter count), ``out/log.csv`` (step, length, loss, grad norm before clipping,
training seconds), ``out/checkpoints/`` (a killed run resumes exactly) and ``out/metrics.json`` (per evaluation
length: the model's scores and the task baseline). Training lengths are drawn uniformly from
``[min_train_length, train_length]`` each step; evaluation uses ``eval_lengths`` (default: ``train_length`` and
``2 * train_length``), so lengths above ``train_length`` measure length generalisation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from innerloop.data.synthetic import TASKS, SynthBatch, SyntheticTask, make_task
from innerloop.errors import check_choice
from innerloop.layers import MIXERS
from innerloop.models import count_params
from innerloop.runs import Callback, GeneratorState, Run, TrainLoop, check_finite, torch_threads
from innerloop.train.bptt import clip_gradients, truncated_bptt

from .arm import arm_report
from .model import SynthModel, match_hidden_size

__all__ = ["SynthConfig", "SynthTrainer", "build_model", "check_task", "evaluate", "loss_sum", "train"]

REPORTS = {"arm": arm_report}  # task name -> (task, model, out, generator) -> metrics, run after training


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
    checkpoint_every: int = 100  # steps between checkpoints (also at the end): a killed run resumes exactly
    seed: int = 0  # seed of the initialisation and the data
    out: str = "runs/synth"  # run folder: config.json, log.csv, checkpoints/, metrics.json (again resumes)
    threads: int = 0  # torch CPU threads; 0 = leave torch's default

    def __post_init__(self) -> None:
        for name, allowed in self.CHOICES.items():
            check_choice(name, getattr(self, name), allowed)
        for name in ("steps", "batch_size", "train_length", "hidden_size", "num_layers", "num_heads",
                     "eval_batch_size", "log_every"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("target_params", "min_train_length", "clip_norm", "clip_value", "tbptt_window", "threads",
                     "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = off / default), got {getattr(self, name)}")
        if self.min_train_length > self.train_length:
            raise ValueError(f"min_train_length {self.min_train_length} > train_length {self.train_length}")
        if any(n < 1 for n in self.eval_lengths):
            raise ValueError(f"eval_lengths must be >= 1, got {self.eval_lengths}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def eval_lengths(cfg: SynthConfig) -> list[int]:
    """The run's evaluation lengths: ``cfg.eval_lengths``, or ``train_length`` and twice it."""
    return list(cfg.eval_lengths) or [cfg.train_length, 2 * cfg.train_length]


def check_task(cfg: SynthConfig) -> SyntheticTask:
    """The run's task, built from ``cfg.task_options`` and checked at the training and every evaluation length, so
    a length the task cannot make (e.g. MQAR pairs beyond ``vocab_size / 2``) fails before training, not after it."""
    task = make_task(cfg.task, **cfg.task_options)
    for what, n in [("train_length", cfg.train_length)] + [("eval length", n) for n in eval_lengths(cfg)]:
        try:
            task.sample(1, n, torch.Generator().manual_seed(0))
        except ValueError as e:
            raise ValueError(f"{what} {n}: {e}") from e
    return task


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


# Config keys that may change when a run resumes: they change how it is run or reported, not what it computes.
RESUME_FREE_KEYS = frozenset({"out", "log_every", "checkpoint_every", "eval_lengths", "eval_batch_size", "threads"})
LOG_FIELDS = ["step", "length", "loss", "grad_norm", "train_seconds"]


class SynthTrainer(TrainLoop):
    """One synthetic-task run on the run scaffold: a step samples a length and a batch from the run's generator
    (checkpointed with the weights, so a resumed run draws the same batches) and takes one AdamW step."""

    def __init__(self, cfg: SynthConfig, task: SyntheticTask, model: SynthModel, progress: bool = False,
                 fresh: bool = False, extend: bool = False, callbacks: Sequence[Callback] = ()) -> None:  # fmt: skip
        if cfg.train_length < task.min_length:
            raise ValueError(f"task {cfg.task!r}: length must be >= {task.min_length}, got train_length "
                             f"{cfg.train_length}")  # fmt: skip
        self.cfg, self.task = cfg, task
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.lo = max(cfg.min_train_length or cfg.train_length, task.min_length)
        self.loss_sum = loss_sum(task)
        run = Run(cfg.out, dataclasses.asdict(cfg), steps_key="steps", resume_free=RESUME_FREE_KEYS, fresh=fresh,
                  extend=extend, command="innerloop synth train")  # fmt: skip
        super().__init__(
            model, run, cfg.steps, stateful={"optimizer": self.opt, "generator": GeneratorState(self.gen)},
            log_fields=LOG_FIELDS, average=(), log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
            callbacks=callbacks, progress=progress, desc=f"{cfg.task} {cfg.mixer}", verbose=progress,
            diverged_hint="Lower --lr or clip harder (--clip-norm).",
        )  # fmt: skip

    def resolved_config(self) -> dict[str, Any]:
        return {"hidden_size": self.model.hidden_size, "num_params": count_params(self.model)}

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        length = int(torch.randint(self.lo, cfg.train_length + 1, (1,), generator=self.gen))
        b = self.task.sample(cfg.batch_size, length, self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss, _ = truncated_bptt(self.model, self.loss_sum, b.inputs, b.targets, b.mask,
                                 window=cfg.tbptt_window or None)  # fmt: skip
        gnorm = float(clip_gradients(self.model, cfg.clip_norm or None, cfg.clip_value or None))
        check_finite(loss, "loss", self, step)
        self.opt.step()
        return {"length": length, "loss": loss, "grad_norm": gnorm}

    def _row(self, logs: dict[str, Any]) -> dict[str, Any]:
        row = super()._row(logs)
        return {**row, "loss": f"{logs['loss']:.6f}", "grad_norm": f"{logs['grad_norm']:.4f}",
                "train_seconds": f"{self.train_seconds:.2f}"}  # fmt: skip


def train(cfg: SynthConfig, progress: bool = False, fresh: bool = False, extend: bool = False,
          callbacks: Sequence[Callback] = ()) -> tuple[dict[str, Any], SynthModel]:  # fmt: skip
    """Train (or resume) and evaluate one run; writes ``config.json``, ``log.csv``, ``checkpoints/``,
    ``metrics.json`` under ``cfg.out``.

    Args:
        cfg (SynthConfig): the run.
        progress (bool, Optional): a progress bar and resume messages. Default: False.
        fresh (bool, Optional): start over when ``cfg.out`` holds a run (kept as ``<out>.previous-<time>``).
            Default: False.
        extend (bool, Optional): allow more ``steps`` than the checkpoint's. Default: False.
        callbacks (Sequence[Callback], Optional): :class:`innerloop.runs.Callback` hooks. Default: ().

    Returns:
        tuple[dict, SynthModel]: the metrics (as written) and the trained model.
    """
    with torch_threads(cfg.threads):
        return _train(cfg, progress, fresh, extend, callbacks)


def _train(cfg: SynthConfig, progress: bool, fresh: bool, extend: bool,
           callbacks: Sequence[Callback]) -> tuple[dict[str, Any], SynthModel]:  # fmt: skip
    task = check_task(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, task)
    trainer = SynthTrainer(cfg, task, model, progress, fresh, extend, callbacks)
    summary = trainer.fit()
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    lengths = eval_lengths(cfg)
    evals = []
    for n in lengths:
        r = evaluate(model, task, n, cfg.eval_batch_size, eval_gen)
        r["baseline"] = task.baseline(n)
        r["generalisation"] = n > cfg.train_length
        evals.append(r)
    metrics = {"task": cfg.task, "mixer": cfg.mixer, "hidden_size": model.hidden_size,
               "num_params": count_params(model), "steps": summary["steps"], "train_seconds": summary["train_seconds"],
               "final_train_loss": summary["final_train_loss"], "eval": evals}  # fmt: skip
    if cfg.task in REPORTS:  # e.g. the arm task: rollout error vs horizon + plot
        metrics["rollout"] = REPORTS[cfg.task](task, model, Path(cfg.out), eval_gen)
    trainer.run.write_metrics(metrics)
    return metrics, model
