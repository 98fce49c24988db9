"""Meta-training and evaluation runs on the run scaffold (:mod:`innerloop.runs`): one directory per run with
``config.json``, ``log.csv``, ``checkpoints/``, ``metrics.json`` and plots.

Batch ``i`` of training is a pure function of ``(seed, i)`` and the checkpoint holds the parameters, the optimizer
state and the RNG, so a run stopped at any point (killed, Ctrl-C, time budget) and started again in the same
directory ends with exactly the parameters of an uninterrupted run. A directory holding a run of another config is
refused (``fresh=True`` starts over, ``extend=True`` trains a finished run for more iterations).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from innerloop._io import atomic_write_json
from innerloop.data.fewshot.tasks import mean_ci95
from innerloop.errors import check_choice
from innerloop.meta import ALGORITHMS, IMAML, MAML, Reptile
from innerloop.meta.anil import ANIL
from innerloop.meta.meta_sgd import MetaSGD
from innerloop.runs import (
    Callback,
    Run,
    TrainingDivergedError,
    TrainLoop,
    check_finite,
    load_latest_weights,
    progress_bar,
)
from innerloop.runs.checkpoint import checkpoint_steps

__all__ = ["MetaConfig", "MetaTrainer", "build", "evaluate_run", "load_algorithm", "train"]


@dataclass
class MetaConfig:
    """Everything that defines a meta-learning run (saved as ``config.json``; the CLI flags are generated from it:
    the trailing comments are their ``--help``)."""

    # allowed values of the fields with a fixed set (the command line offers them as choices)
    CHOICES: ClassVar[dict[str, Collection[str]]] = {
        "algorithm": ALGORITHMS, "task": ("sinusoid", "omniglot", "miniimagenet"), "meta_optimizer": ("adam", "sgd"),
        "vectorize": ("auto", "true", "false"),
    }  # fmt: skip

    algorithm: str = "maml"  # meta-learning algorithm (fomaml = first-order MAML, imaml = implicit MAML)
    task: str = "sinusoid"  # benchmark: sinusoid regression, or Omniglot / mini-ImageNet classification
    ways: int = 5  # classes per task (classification only)
    shots: int = 10  # support examples per class (per task for sinusoid)
    query_shots: int = 0  # query examples per class; 0 = same as shots (MAML paper: 15 in mini-ImageNet training)
    steps: int = 0  # inner steps during meta-training; 0 = the algorithm's default (1; reptile 5, imaml 10)
    test_steps: int = 10  # inner steps at evaluation (curve at 0, 1, steps, test_steps; paper: Omniglot 5-way 3)
    inner_lr: float = 0.01  # inner-loop learning rate (paper: 0.01 sinusoid, 0.4 Omniglot 5-way)
    meta_lr: float = 0.001  # outer (meta) learning rate
    meta_optimizer: str = "adam"  # outer optimizer (Reptile's outer step size is meta_lr with sgd)
    meta_batch: int = 25  # tasks per meta-update (paper: 25 sinusoid, 32 Omniglot 5-way, 4 / 2 mini-ImageNet 1/5-shot)
    iterations: int = 1000  # meta-updates
    first_order: bool = False  # drop second-order terms of the meta-gradient (as fomaml)
    lam: float = 1.0  # iMAML proximal strength
    cg_steps: int = 5  # iMAML conjugate-gradient iterations
    eval_tasks: int = 600  # fixed validation/test tasks evaluated after training
    eval_batch: int = 50  # tasks evaluated at once
    log_every: int = 50  # iterations between log.csv rows
    checkpoint_every: int = 500  # iterations between checkpoints (also written at the end)
    seed: int = 0  # seed of the initialisation and of the training tasks (evaluation tasks are fixed)
    max_seconds: float = 0.0  # stop training early after this wall time (0 = no limit); resumable
    data_root: str = ""  # Omniglot zips/folder or mini-ImageNet root; default: $INNERLOOP_DATA/<task> (README, "Data")
    device: str = "cpu"  # cpu | cuda | cuda:N
    vectorize: str = "auto"  # batch the tasks with torch.func.vmap: auto (if the model allows), true or false
    out: str = "runs/meta/default"  # run folder: config.json, log.csv, checkpoint.pt, metrics.json, plots

    def __post_init__(self) -> None:
        for name, allowed in self.CHOICES.items():
            check_choice(name, str(getattr(self, name)).lower() if name == "vectorize" else getattr(self, name),
                         allowed)  # fmt: skip
        for name in ("ways", "shots", "test_steps", "meta_batch", "iterations", "cg_steps", "eval_tasks",
                     "eval_batch", "log_every", "checkpoint_every"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.query_shots < 0 or self.max_seconds < 0 or self.steps < 0:
            raise ValueError(f"query_shots, max_seconds and steps must be >= 0, got {self.query_shots}, "
                             f"{self.max_seconds}, {self.steps}")  # fmt: skip
        for name in ("inner_lr", "meta_lr", "lam"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        if self.algorithm != "imaml" and (self.lam, self.cg_steps) != (defaults["lam"], defaults["cg_steps"]):
            raise ValueError(f"--lam and --cg-steps apply to --algorithm imaml only, not {self.algorithm}")
        if self.first_order and self.algorithm in ("reptile", "imaml"):
            raise ValueError(f"--first-order does not apply to {self.algorithm} (it never differentiates through the "
                             f"inner loop); drop the flag")  # fmt: skip
        if self.task == "sinusoid" and (self.ways != defaults["ways"] or self.data_root):
            raise ValueError("--ways and --data-root apply to the classification tasks (omniglot, miniimagenet), not "
                             "to --task sinusoid (a regression task with no data files); drop them")  # fmt: skip
        if self.task == "sinusoid":  # image tasks draw their test tasks from other classes
            from innerloop.data.fewshot.benchmarks import TEST_SEED, VALIDATION_SEED
            from innerloop.data.fewshot.tasks import shares_tasks

            for name, fixed in (("validation", VALIDATION_SEED), ("test", TEST_SEED)):
                if shares_tasks(self.seed, self.iterations * self.meta_batch, fixed, self.eval_tasks):
                    raise ValueError(
                        f"seed {self.seed} with {self.iterations} x {self.meta_batch} training tasks would train on "
                        f"the fixed {name} tasks (seed {fixed}); choose another --seed"
                    )

    def resolved_steps(self) -> int:
        """Inner steps of meta-training: ``steps``, or the algorithm's default when 0 (Reptile with 1 step is joint
        training; iMAML's implicit gradient needs the proximal inner problem solved)."""
        return self.steps or DEFAULT_STEPS.get(self.algorithm, 1)

    def resolved_query(self) -> int:
        return self.query_shots or self.shots


DEFAULT_STEPS = {"reptile": 5, "imaml": 10}  # inner steps when --steps is not given; 1 for the others


def _vectorize(v: str) -> bool | str:
    return {"auto": "auto", "true": True, "false": False}[str(v).lower()]


def build_model(cfg: MetaConfig) -> nn.Module:
    from innerloop.models.meta_nets import SinusoidMLP, miniimagenet_cnn, omniglot_cnn

    if cfg.task == "sinusoid":
        return SinusoidMLP()
    if cfg.task == "omniglot":
        return omniglot_cnn(cfg.ways)
    if cfg.task == "miniimagenet":
        return miniimagenet_cnn(cfg.ways)
    raise ValueError(f"unknown task {cfg.task!r}; choose sinusoid, omniglot or miniimagenet")


def build_algorithm(cfg: MetaConfig, model: nn.Module) -> MAML:
    if cfg.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {cfg.algorithm!r}; choose from {sorted(ALGORITHMS)}")
    vec = _vectorize(cfg.vectorize)
    steps = cfg.resolved_steps()
    if cfg.algorithm in ("maml", "fomaml"):
        return MAML(model, cfg.inner_lr, steps, cfg.first_order or cfg.algorithm == "fomaml", vectorize=vec)
    if cfg.algorithm == "anil":
        return ANIL(model, cfg.inner_lr, steps, cfg.first_order, vectorize=vec)
    if cfg.algorithm == "metasgd":
        return MetaSGD(model, cfg.inner_lr, steps, cfg.first_order, vectorize=vec)
    if cfg.algorithm == "reptile":
        return Reptile(model, cfg.inner_lr, steps, vectorize=vec)
    return IMAML(model, cfg.inner_lr, steps, cfg.lam, cfg.cg_steps, vectorize=vec)


def build_tasks(cfg: MetaConfig, split: str) -> Any:
    """An object with ``batch(index, tasks) -> TaskBatch`` for ``split`` in train / validation / test."""
    from innerloop.data.fewshot.benchmarks import get_tasksets

    train, val, test = get_tasksets(
        cfg.task, ways=cfg.ways, shots=cfg.shots, query_shots=cfg.resolved_query(), root=cfg.data_root or None,
        seed=cfg.seed, eval_tasks=cfg.eval_tasks,
    )  # fmt: skip
    return {"train": train, "validation": val, "test": test}[split]


def build(cfg: MetaConfig) -> tuple[MAML, torch.optim.Optimizer]:
    """Model, algorithm and outer optimizer for ``cfg`` (seeded)."""
    torch.manual_seed(cfg.seed)
    algo = build_algorithm(cfg, build_model(cfg)).to(cfg.device)
    if cfg.meta_optimizer == "adam":
        opt = torch.optim.Adam(algo.parameters(), lr=cfg.meta_lr)
    elif cfg.meta_optimizer == "sgd":
        opt = torch.optim.SGD(algo.parameters(), lr=cfg.meta_lr)
    else:
        raise ValueError(f"meta_optimizer must be adam or sgd, got {cfg.meta_optimizer!r}")
    return algo, opt


# Config keys that may change when a run resumes: they change how it is run or reported, not what it computes.
RESUME_FREE_KEYS = frozenset({"out", "log_every", "checkpoint_every", "max_seconds", "eval_tasks", "eval_batch",
                              "test_steps", "data_root"})  # fmt: skip


class MetaTrainer(TrainLoop):
    """Meta-training on the run scaffold: one step is one meta-batch (``meta_backward``) and one outer update.

    Batch ``i`` is a pure function of ``(seed, i)``, so a resumed run sees the same tasks as an uninterrupted one.
    """

    def __init__(self, cfg: MetaConfig, algo: MAML, opt: torch.optim.Optimizer, progress: bool = False,
                 fresh: bool = False, extend: bool = False, callbacks: Sequence[Callback] = ()) -> None:  # fmt: skip
        self.cfg, self.algo, self.opt = cfg, algo, opt
        self.tasks = build_tasks(cfg, "train")
        classification = cfg.task != "sinusoid"
        run = Run(cfg.out, dataclasses.asdict(cfg), steps_key="iterations", resume_free=RESUME_FREE_KEYS,
                  fresh=fresh, extend=extend, command="innerloop meta train")  # fmt: skip
        super().__init__(
            algo, run, cfg.iterations, stateful={"optimizer": opt}, log_fields=LOG_FIELDS,
            average=("loss", "accuracy") if classification else ("loss",), log_every=cfg.log_every,
            checkpoint_every=cfg.checkpoint_every, max_seconds=cfg.max_seconds, callbacks=callbacks, progress=progress,
            desc=f"{cfg.algorithm} {cfg.task}", verbose=progress,
            diverged_hint=f"Try a lower --meta-lr (now {cfg.meta_lr}) or --inner-lr (now {cfg.inner_lr}).",
        )  # fmt: skip

    def train_step(self, step: int) -> dict[str, float]:
        batch = self.tasks.batch(step, self.cfg.meta_batch).to(self.cfg.device)
        self.opt.zero_grad(set_to_none=True)
        res = self.algo.meta_backward(batch)
        logs = {"loss": res.loss.item()}
        if res.accuracy is not None:
            logs["accuracy"] = res.accuracy.mean().item()
        try:
            check_finite(logs["loss"], "meta-loss", self, step)
        except TrainingDivergedError:
            self.opt.zero_grad(set_to_none=True)
            raise
        self.opt.step()
        return logs


# log.csv's "loss" / "accuracy" are the algorithm's meta-loss over the batch: the query loss after adaptation for the
# MAML family and iMAML, but for Reptile the fit to the support + query data it adapted on (it has no held-out query
# in training), so Reptile's curve is not a held-out loss and not comparable with the others'; compare algorithms on
# metrics.json (held-out tasks)
LOG_FIELDS = ["iteration", "loss", "accuracy", "train_seconds"]


def train(cfg: MetaConfig, progress: bool = True, evaluate: bool = True, fresh: bool = False,
          extend: bool = False, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:  # fmt: skip
    """Meta-train ``cfg.out`` (resuming from its newest intact checkpoint), then evaluate and plot.

    Args:
        cfg (MetaConfig): the run.
        progress (bool, Optional): progress bars and resume messages. Default: True.
        evaluate (bool, Optional): evaluate on the fixed test tasks afterwards (writes ``metrics.json``).
            Default: True.
        fresh (bool, Optional): start over when ``cfg.out`` holds a run (kept as ``<out>.previous-<time>``).
            Default: False.
        extend (bool, Optional): allow more ``iterations`` than the checkpoint's (train a finished run further).
            Default: False.
        callbacks (Sequence[Callback], Optional): :class:`innerloop.runs.Callback` hooks. Default: ().

    Returns:
        dict: the evaluation metrics (``{}`` with ``evaluate=False``).
    """
    algo, opt = build(cfg)
    trainer = MetaTrainer(cfg, algo, opt, progress, fresh, extend, callbacks)
    trainer.fit(map_location=cfg.device)
    if not evaluate:
        return {}
    return evaluate_run(cfg, algo, progress=progress)


def load_algorithm(cfg: MetaConfig) -> MAML:
    """The meta-learner of run ``cfg.out`` with its newest intact checkpoint's weights."""
    return _load_algorithm(cfg)[0]


def _load_algorithm(cfg: MetaConfig) -> tuple[MAML, Path | None]:
    """:func:`load_algorithm` and the checkpoint it read (None: a legacy ``checkpoint.pt``)."""
    algo, _ = build(cfg)
    out = Path(cfg.out)
    path = load_latest_weights(out / "checkpoints", algo, map_location=cfg.device)
    if path is not None:
        return algo, path
    legacy = out / "checkpoint.pt"  # runs written before the run scaffold
    if legacy.is_file():
        algo.load_state_dict(torch.load(legacy, map_location=cfg.device, weights_only=False)["model"])
        return algo, None
    raise FileNotFoundError(f"{out} has no checkpoint: train it first with `innerloop meta train --out {out}`")


def eval_step_counts(cfg: MetaConfig) -> list[int]:
    return sorted({0, 1, cfg.resolved_steps(), cfg.test_steps})


def evaluate_run(cfg: MetaConfig, algo: MAML | None = None, split: str = "test",
                 progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Evaluate on the fixed ``cfg.eval_tasks`` tasks of ``split``; write ``metrics.json`` and the plots.

    Args:
        cfg (MetaConfig): the run.
        algo (MAML, Optional): the trained meta-learner. Default: None (loaded from ``cfg.out``).
        split (str, Optional): ``"test"`` or ``"validation"``. Default: ``"test"``.
        progress (bool, Optional): a progress bar over the task batches. Default: False.
    """
    out = Path(cfg.out)
    if algo is None:
        algo, newest = _load_algorithm(cfg)
    else:  # the trainer's: its last checkpoint is the newest
        written = checkpoint_steps(out / "checkpoints")
        newest = written[-1] if written else None
    tasks = build_tasks(cfg, split)
    counts = eval_step_counts(cfg)
    per_step: dict[int, list[torch.Tensor]] = {s: [] for s in counts}
    starts = range(0, cfg.eval_tasks, cfg.eval_batch)
    for b in progress_bar(starts, progress, f"evaluating on {cfg.eval_tasks} {split} tasks", len(starts)):
        n = min(cfg.eval_batch, cfg.eval_tasks - b)
        batch = tasks.eval_batch(b, n).to(cfg.device)
        losses, acc = algo.evaluate(batch, counts)
        for j, s in enumerate(counts):
            per_step[s].append((acc if acc is not None else losses)[:, j].cpu())
    metric = "mse" if cfg.task == "sinusoid" else "accuracy"
    metrics: dict[str, Any] = {"split": split, "eval_tasks": cfg.eval_tasks, "metric": metric, "steps": {}}
    if newest is not None:  # what was evaluated: a run stopped early (time budget) says so
        done = int(newest.name.removeprefix("step_"))
        metrics.update(iterations=done, stopped_early=done < cfg.iterations)
    for s in counts:
        m, ci = mean_ci95(torch.cat(per_step[s]))
        metrics["steps"][str(s)] = {"mean": m, "ci95": ci}
    atomic_write_json(out / "metrics.json", metrics)
    try:
        from innerloop.meta.plots import plot_learning_curve, plot_sinusoid

        plot_learning_curve(out / "log.csv", out / "learning_curve.png")
        if cfg.task == "sinusoid":
            plot_sinusoid(algo, cfg, out / "sinusoid.png")
    except ImportError:  # matplotlib is optional
        pass
    return metrics
