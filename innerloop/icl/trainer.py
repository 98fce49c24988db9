"""Meta-training any learner (in-context or gradient-based) on a task distribution, on the run scaffold.

One step is one meta-batch of ``meta_batch`` tasks and one Adam update of the learner's meta-parameters, for both
kinds: an in-context learner minimises the query loss (MSE; cross-entropy on Omniglot) of its predictions from the
support set; a gradient learner
takes its algorithm's own meta-gradient (:meth:`innerloop.meta.MAML.meta_backward`). Batch ``i`` is a pure function of
``(task, seed, i)``, the same for every learner, so equal steps mean the very same training tasks. A run directory
holds ``config.json``, ``log.csv``, ``checkpoints/`` (a killed run resumes exactly) and ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from innerloop._io import atomic_write_json
from innerloop.data.fewshot import SINUSOID_EVAL_POINTS, TEST_SEED, mean_ci95
from innerloop.data.fewshot.tasks import shares_tasks
from innerloop.errors import check_choice
from innerloop.models import count_params
from innerloop.runs import Callback, Run, TrainingDivergedError, TrainLoop, check_finite, fill_added_fields

from .learners import build_learner, learner_kind
from .tasks import CLASSIFICATION, TASKS, make_tasks

__all__ = ["ICLConfig", "ICLTrainer", "build", "evaluate", "train"]


@dataclass
class ICLConfig:
    """One meta-training run of one learner (saved as ``config.json``; trailing comments are the flags' ``--help``)."""

    CHOICES: ClassVar[dict[str, Collection[str]]] = {"task": TASKS}

    learner: str = "attention"  # a mixer (in-context learner) or a meta-learning algorithm (maml, fomaml, metasgd, ...)
    task: str = "sinusoid"  # task distribution: sinusoid (MAML's), linear (Garg et al. 2022) or omniglot (N-way K-shot)
    shots: int = 10  # support points K per task (per class for omniglot)
    query_shots: int = 0  # query points per training task (per class for omniglot); 0 = same as shots
    dim: int = 5  # input dimension of linear regression
    noise: float = 0.0  # label noise (standard deviation) of linear regression
    ways: int = 5  # omniglot: classes per task
    image_size: int = 28  # omniglot: image side in pixels
    channels: int = 64  # omniglot, in-context learners: filters of the conv image encoder
    freeze_encoder_steps: int = 0  # omniglot, in-context: the image encoder stays at its init for these first updates
    data_root: str = ""  # omniglot: the data folder (the two zips); default: $INNERLOOP_DATA/omniglot
    steps: int = 500  # meta-updates; tasks seen in training = steps * meta_batch
    meta_batch: int = 25  # tasks per meta-update
    lr: float = 1e-3  # Adam learning rate of the meta-parameters
    hidden_size: int = 64  # in-context learners: model width
    num_layers: int = 2  # in-context learners: blocks
    num_heads: int = 4  # in-context learners: heads (attention, TTT)
    inner_lr: float = 0.01  # gradient learners: inner SGD rate (MAML's sinusoid value; its Omniglot 5-way value is 0.4)
    inner_steps: int = 1  # gradient learners: inner steps in meta-training
    test_steps: int = 1  # gradient learners: inner steps at test time
    eval_tasks: int = 600  # fixed test tasks (seed 2000), in and out of distribution
    eval_points: int = 0  # query points per test task (per class for omniglot); 0 = 100 (omniglot: 20 - shots, <= 15)
    eval_batch: int = 100  # test tasks evaluated at once
    log_every: int = 50  # steps between log.csv rows
    checkpoint_every: int = 100  # steps between checkpoints (also at the end)
    seed: int = 0  # seed of the initialisation and of the training tasks
    max_seconds: float = 0.0  # stop early after this much training time (0 = no limit); resumable
    out: str = "runs/icl/default"  # run folder: config.json, log.csv, checkpoints/, metrics.json

    def __post_init__(self) -> None:
        for name, allowed in self.CHOICES.items():
            check_choice(name, getattr(self, name), allowed)
        learner_kind(self.learner)  # a clear error for an unknown learner
        for name in ("shots", "dim", "steps", "meta_batch", "hidden_size", "num_layers", "num_heads", "inner_steps",
                     "test_steps", "eval_tasks", "eval_batch", "log_every", "ways", "image_size",
                     "channels"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("query_shots", "noise", "checkpoint_every", "max_seconds", "eval_points", "freeze_encoder_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.task != "linear" and self.noise:
            raise ValueError(f"{self.task} tasks are noiseless (as in MAML): use --noise 0, or --task linear")
        if self.task == "omniglot":
            drawers = 20
            for name, q in (("query_shots", self.query_shots or self.shots), ("eval_points", self.test_points)):
                if self.shots + q > drawers:
                    raise ValueError(f"omniglot has {drawers} images per character: shots + {name} = {self.shots} + "
                                     f"{q} > {drawers}; lower --{name.replace('_', '-')} (per class)")  # fmt: skip
        if self.freeze_encoder_steps and (self.task != "omniglot" or learner_kind(self.learner) != "in-context"):
            raise ValueError(f"--freeze-encoder-steps applies to the image encoder of an in-context learner on "
                             f"omniglot; {self.learner} on {self.task} has none: use --freeze-encoder-steps 0")
        if not (self.lr > 0 and self.inner_lr > 0):
            raise ValueError(f"lr and inner_lr must be > 0, got {self.lr}, {self.inner_lr}")
        if self.task != "omniglot" and shares_tasks(self.seed, self.steps * self.meta_batch, TEST_SEED,
                                                    self.eval_tasks):  # omniglot tests on other characters
            raise ValueError(f"seed {self.seed} with {self.steps} x {self.meta_batch} training tasks would train on "
                             f"the fixed test tasks (seed {TEST_SEED}); use another --seed")  # fmt: skip

    @property
    def x_dim(self) -> int:
        return self.dim if self.task == "linear" else 1

    @property
    def classes(self) -> int:
        """Classes per task for a classification task (omniglot), else 0."""
        return self.ways if self.task in CLASSIFICATION else 0

    @property
    def test_points(self) -> int:
        """Query points per test task (per class for omniglot): ``eval_points``, or the task's default."""
        if self.eval_points:
            return self.eval_points
        return min(15, 20 - self.shots) if self.task == "omniglot" else SINUSOID_EVAL_POINTS

    def tasks(self, split: str = "train", ood: bool = False) -> Any:
        """The task sampler: ``split="train"`` the training tasks (seed ``seed``); ``"test"`` the fixed test tasks
        (seed 2000, ``test_points`` queries), in distribution or, with ``ood=True``, out of it."""
        check_choice("split", split, ("train", "test"))
        train = split == "train"
        q = (self.query_shots or self.shots) if train else self.test_points
        return make_tasks(self.task, self.shots, q, self.seed if train else TEST_SEED, dim=self.dim, noise=self.noise,
                          ood=ood, split=split, ways=self.ways, root=self.data_root or None,
                          image_size=self.image_size, num_tasks=None if train else self.eval_tasks)  # fmt: skip


def build(cfg: ICLConfig) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The learner (seeded init) and its Adam meta-optimizer."""
    torch.manual_seed(cfg.seed)
    learner = build_learner(cfg.learner, cfg.x_dim, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                            num_heads=cfg.num_heads, inner_lr=cfg.inner_lr, inner_steps=cfg.inner_steps,
                            test_steps=cfg.test_steps, classes=cfg.classes, channels=cfg.channels)  # fmt: skip
    return learner, torch.optim.Adam(learner.parameters(), lr=cfg.lr)


# change how a run is reported, not what it computes: allowed to differ on resume
RESUME_FREE_KEYS = frozenset({"out", "log_every", "checkpoint_every", "max_seconds", "eval_tasks", "eval_points",
                              "eval_batch", "test_steps", "data_root"})  # fmt: skip
# Config fields added after runs were first made, with the value that reproduces what those runs did.
ADDED_FIELDS: dict[str, Any] = {"freeze_encoder_steps": 0}
# a config saved before them, in today's form, so older runs still resume and count as finished
upgrade_config = fill_added_fields(ADDED_FIELDS)


class ICLTrainer(TrainLoop):
    """One step: meta-batch ``step`` of the training tasks, the learner's ``meta_backward``, one Adam update.

    With ``cfg.freeze_encoder_steps`` the image encoder of an in-context learner stays at its initialisation for the
    first updates (its gradients are dropped, so Adam neither moves it nor updates its moments): the memory first
    learns the lookup on fixed random features, then both train (RESULTS.md, Omniglot probes).

    Args:
        cfg (ICLConfig): the run.
        learner (nn.Module), opt (torch.optim.Optimizer): from :func:`build`.
        fresh, extend (bool, Optional): see :class:`innerloop.runs.Run`. Default: False.
        callbacks (Sequence[Callback], Optional): Default: ().
        progress (bool, Optional): a progress bar. Default: False.
    """

    def __init__(self, cfg: ICLConfig, learner: nn.Module, opt: torch.optim.Optimizer, *, fresh: bool = False,
                 extend: bool = False, callbacks: Sequence[Callback] = (), progress: bool = False) -> None:  # fmt: skip
        self.cfg, self.learner, self.opt = cfg, learner, opt
        self.train_tasks = cfg.tasks("train")
        run = Run(cfg.out, dataclasses.asdict(cfg), steps_key="steps", resume_free=RESUME_FREE_KEYS, fresh=fresh,
                  extend=extend, command="innerloop icl train", upgrade=upgrade_config)  # fmt: skip
        super().__init__(learner, run, cfg.steps, stateful={"optimizer": opt}, log_fields=["step", "loss",
                         "train_seconds"], log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                         max_seconds=cfg.max_seconds, callbacks=callbacks, progress=progress,
                         desc=f"{cfg.learner} {cfg.task} {cfg.shots}-shot",
                         diverged_hint=f"Try a lower --lr (now {cfg.lr}) or --inner-lr (now {cfg.inner_lr}).")

    def resolved_config(self) -> dict[str, Any]:
        return {"kind": learner_kind(self.cfg.learner), "params": count_params(self.learner),
                "train_tasks": self.cfg.steps * self.cfg.meta_batch}  # fmt: skip

    def train_step(self, step: int) -> dict[str, float]:
        batch = self.train_tasks.batch(step, self.cfg.meta_batch)
        self.opt.zero_grad(set_to_none=True)
        loss = float(self.learner.meta_backward(batch))
        if step < self.cfg.freeze_encoder_steps:  # no gradient = Adam leaves the encoder (and its moments) alone
            for p in self.learner.model.encoder.parameters():
                p.grad = None
        try:
            check_finite(loss, "meta-loss", self, step)
        except TrainingDivergedError:
            self.opt.zero_grad(set_to_none=True)
            raise
        self.opt.step()
        return {"loss": loss}


def evaluate(cfg: ICLConfig, learner: nn.Module) -> dict[str, Any]:
    """Test MSE (mean, 95% CI over tasks) in and out of distribution, and seconds per new task; for classification
    (omniglot) the query accuracy (``acc``, with its 95% CI as ``ci95``) and the cross-entropy (``loss``).

    The fixed test tasks (seed 2000) have ``cfg.shots`` support and ``cfg.test_points`` query points (per class for
    omniglot). The time per task covers reading (in-context) or adapting to (gradient) the support set and predicting
    the queries, measured over the in-distribution set in batches of ``cfg.eval_batch`` tasks (task sampling is
    outside the timer).
    """
    learner.eval()
    out: dict[str, Any] = {"eval_tasks": cfg.eval_tasks, "eval_points": cfg.test_points, "shots": cfg.shots}
    for name, ood in (("in", False), ("ood", True)):
        tasks = cfg.tasks("test", ood)
        losses, accs, seconds = [], [], 0.0
        for start in range(0, cfg.eval_tasks, cfg.eval_batch):
            batch = tasks.eval_batch(start, min(cfg.eval_batch, cfg.eval_tasks - start))
            t0 = time.perf_counter()
            loss, acc = learner.task_scores(batch)
            seconds += time.perf_counter() - t0
            losses.append(loss.detach())
            accs.append(acc)
        losses_t = torch.cat(losses)
        finite = int(torch.isfinite(losses_t).sum())
        if cfg.classes:
            acc_t = torch.cat(accs)
            mean, ci = mean_ci95(acc_t)
            out[name] = {"acc": mean, "ci95": ci, "loss": losses_t.mean().item(), "finite": finite}
        else:
            mean, ci = mean_ci95(losses_t)
            out[name] = {"mse": mean, "ci95": ci, "median": losses_t.median().item(), "finite": finite}
        if not ood:
            out["seconds_per_task"] = seconds / cfg.eval_tasks
    learner.train()
    return out


def train(cfg: ICLConfig, *, evaluate_after: bool = True, fresh: bool = False, extend: bool = False,
          callbacks: Sequence[Callback] = (), progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Meta-train ``cfg.out`` (resuming from its newest intact checkpoint), then evaluate into ``metrics.json``.

    Args:
        cfg (ICLConfig): the run.
        evaluate_after (bool, Optional): evaluate on the fixed test tasks and write ``metrics.json``. Default: True.
        fresh, extend (bool, Optional): see :class:`innerloop.runs.Run`. Default: False.
        callbacks (Sequence[Callback], Optional): run-scaffold hooks. Default: ().
        progress (bool, Optional): a progress bar. Default: False.

    Returns:
        dict: the training summary (``train_seconds``, ``steps``, ``stopped_early``, ...), the learner's ``kind``,
        ``params`` and ``train_tasks`` (the meta-training tasks it was trained on: ``steps`` done x ``meta_batch``,
        fewer than planned when the run stopped early) plus, with ``evaluate_after``, the metrics of
        :func:`evaluate`.
    """
    learner, opt = build(cfg)
    trainer = ICLTrainer(cfg, learner, opt, fresh=fresh, extend=extend, callbacks=callbacks, progress=progress)
    summary = {**trainer.fit(), **trainer.resolved_config()}
    summary["train_tasks"] = summary["steps"] * cfg.meta_batch  # seen, not planned: a run stopped early saw fewer
    if not evaluate_after:
        return summary
    metrics = {**summary, **evaluate(cfg, learner)}
    atomic_write_json(Path(cfg.out) / "metrics.json", metrics)
    return metrics
