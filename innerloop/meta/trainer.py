"""Meta-training and evaluation runs: one directory per run with ``config.json``, ``log.csv``, ``metrics.json``,
``checkpoint.pt`` (written atomically) and plots.

Batch ``i`` of training is a pure function of ``(seed, i)`` and the checkpoint holds the parameters and optimizer
state, so a run stopped at any checkpoint and started again in the same directory ends with exactly the parameters
of an uninterrupted run.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from innerloop.data.tasks import mean_ci95
from innerloop.errors import check_choice
from innerloop.meta import ALGORITHMS, IMAML, MAML, Reptile
from innerloop.meta.anil import ANIL
from innerloop.meta.meta_sgd import MetaSGD

__all__ = ["MetaConfig", "build", "train", "evaluate_run"]


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
    query_shots: int = 0  # query examples per class; 0 = same as shots
    steps: int = 1  # inner steps during meta-training
    test_steps: int = 10  # inner steps at evaluation (curve reported at 0, 1, steps, test_steps)
    inner_lr: float = 0.01  # inner-loop learning rate (paper: 0.01 sinusoid, 0.4 Omniglot 5-way)
    meta_lr: float = 0.001  # outer (meta) learning rate
    meta_optimizer: str = "adam"  # outer optimizer (Reptile's outer step size is meta_lr with sgd)
    meta_batch: int = 25  # tasks per meta-update
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
        for name in ("ways", "shots", "steps", "test_steps", "meta_batch", "iterations", "cg_steps", "eval_tasks",
                     "eval_batch", "log_every", "checkpoint_every"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.query_shots < 0 or self.max_seconds < 0:
            raise ValueError(f"query_shots and max_seconds must be >= 0, got {self.query_shots}, {self.max_seconds}")
        for name in ("inner_lr", "meta_lr", "lam"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    def resolved_query(self) -> int:
        return self.query_shots or self.shots


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
    if cfg.algorithm in ("maml", "fomaml"):
        return MAML(model, cfg.inner_lr, cfg.steps, cfg.first_order or cfg.algorithm == "fomaml", vectorize=vec)
    if cfg.algorithm == "anil":
        return ANIL(model, cfg.inner_lr, cfg.steps, cfg.first_order, vectorize=vec)
    if cfg.algorithm == "metasgd":
        return MetaSGD(model, cfg.inner_lr, cfg.steps, cfg.first_order, vectorize=vec)
    if cfg.algorithm == "reptile":
        return Reptile(model, cfg.inner_lr, cfg.steps, vectorize=vec)
    return IMAML(model, cfg.inner_lr, cfg.steps, cfg.lam, cfg.cg_steps, vectorize=vec)


def build_tasks(cfg: MetaConfig, split: str) -> Any:
    """An object with ``batch(index, tasks) -> TaskBatch`` for ``split`` in train / validation / test."""
    from innerloop.data.benchmarks import get_tasksets

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


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_json(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


LOG_FIELDS = ["iteration", "loss", "accuracy", "seconds"]


def _truncate_log(path: Path, upto: int) -> None:
    """Keep the rows of ``log.csv`` up to iteration ``upto`` (rows after the last checkpoint are redone)."""
    if not path.exists():
        return
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= upto]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)


def train(cfg: MetaConfig, progress: bool = True, evaluate: bool = True) -> dict[str, Any]:
    """Meta-train (resuming from ``<out>/checkpoint.pt`` if present), then evaluate and plot. Returns the metrics."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    algo, opt = build(cfg)
    start, ckpt_path, log_path = 0, out / "checkpoint.pt", out / "log.csv"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=cfg.device, weights_only=False)
        algo.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start = ckpt["iteration"]
        _truncate_log(log_path, start)
    _atomic_json(dataclasses.asdict(cfg), out / "config.json")
    tasks = build_tasks(cfg, "train")
    new_log = not log_path.exists()
    log_file = log_path.open("a", newline="")
    writer = csv.DictWriter(log_file, LOG_FIELDS)
    if new_log:
        writer.writeheader()
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.iterations, initial=start, desc=f"{cfg.algorithm} {cfg.task}", mininterval=2)
        except ImportError:
            bar = None

    def save(iteration: int) -> None:
        _atomic_save({"model": algo.state_dict(), "optimizer": opt.state_dict(), "iteration": iteration}, ckpt_path)

    t0, losses, accs = time.perf_counter(), [], []
    for it in range(start, cfg.iterations):
        batch = tasks.batch(it, cfg.meta_batch).to(cfg.device)
        opt.zero_grad(set_to_none=True)
        res = algo.meta_backward(batch)
        opt.step()
        losses.append(res.loss.item())
        if res.accuracy is not None:
            accs.append(res.accuracy.mean().item())
        done = it + 1
        if done % cfg.log_every == 0 or done == cfg.iterations:
            writer.writerow({
                "iteration": done, "loss": sum(losses) / len(losses),
                "accuracy": sum(accs) / len(accs) if accs else "", "seconds": round(time.perf_counter() - t0, 3),
            })  # fmt: skip
            log_file.flush()
            if bar is not None:
                bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}")
            losses, accs = [], []
        out_of_time = cfg.max_seconds > 0 and time.perf_counter() - t0 > cfg.max_seconds
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations or out_of_time:
            save(done)
        if out_of_time:
            if losses:
                writer.writerow({"iteration": done, "loss": sum(losses) / len(losses),
                                 "accuracy": sum(accs) / len(accs) if accs else "",
                                 "seconds": round(time.perf_counter() - t0, 3)})  # fmt: skip
            break
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    log_file.close()
    if start >= cfg.iterations and not ckpt_path.exists():
        save(cfg.iterations)
    if not evaluate:
        return {}
    return evaluate_run(cfg, algo)


def eval_step_counts(cfg: MetaConfig) -> list[int]:
    return sorted({0, 1, cfg.steps, cfg.test_steps})


def evaluate_run(cfg: MetaConfig, algo: MAML | None = None, split: str = "test") -> dict[str, Any]:
    """Evaluate on the fixed ``cfg.eval_tasks`` tasks of ``split``; write ``metrics.json`` and the plots."""
    out = Path(cfg.out)
    if algo is None:
        algo, _ = build(cfg)
        ckpt = torch.load(out / "checkpoint.pt", map_location=cfg.device, weights_only=False)
        algo.load_state_dict(ckpt["model"])
    tasks = build_tasks(cfg, split)
    counts = eval_step_counts(cfg)
    per_step: dict[int, list[torch.Tensor]] = {s: [] for s in counts}
    for b in range(0, cfg.eval_tasks, cfg.eval_batch):
        n = min(cfg.eval_batch, cfg.eval_tasks - b)
        batch = tasks.eval_batch(b, n).to(cfg.device)
        losses, acc = algo.evaluate(batch, counts)
        for j, s in enumerate(counts):
            per_step[s].append((acc if acc is not None else losses)[:, j].cpu())
    metric = "mse" if cfg.task == "sinusoid" else "accuracy"
    metrics: dict[str, Any] = {"split": split, "eval_tasks": cfg.eval_tasks, "metric": metric, "steps": {}}
    for s in counts:
        m, ci = mean_ci95(torch.cat(per_step[s]))
        metrics["steps"][str(s)] = {"mean": m, "ci95": ci}
    _atomic_json(metrics, out / "metrics.json")
    try:
        from innerloop.meta.plots import plot_learning_curve, plot_sinusoid

        plot_learning_curve(out / "log.csv", out / "learning_curve.png")
        if cfg.task == "sinusoid":
            plot_sinusoid(algo, cfg, out / "sinusoid.png")
    except ImportError:  # matplotlib is optional
        pass
    return metrics
