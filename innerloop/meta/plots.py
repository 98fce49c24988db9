"""Plots for meta-learning runs (matplotlib with the Agg backend, imported lazily): the learning curve from
``log.csv`` and the MAML paper's sinusoid figure (true function, pre-update, after 1 and 10 steps, support points)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from innerloop._io import pyplot

__all__ = ["plot_learning_curve", "plot_sinusoid"]


def plot_learning_curve(log_csv: str | Path, out: str | Path) -> Path:
    """Meta-training loss (and accuracy, if logged) against iteration."""
    plt = pyplot()
    with Path(log_csv).open() as f:
        rows = list(csv.DictReader(f))
    it = [int(r["iteration"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(it, [float(r["loss"]) for r in rows], label="query loss")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    if rows and rows[0]["accuracy"]:
        ax2 = ax.twinx()
        ax2.plot(it, [float(r["accuracy"]) for r in rows], color="C1", label="query accuracy")
        ax2.set_ylabel("accuracy")
    ax.set_title("meta-training")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def plot_sinusoid(algo: Any, cfg: Any, out: str | Path, task: int = 0, steps: tuple[int, ...] = (1, 10)) -> Path:
    """The paper's Fig. 2 for one test task: true function, pre-update, after ``steps`` inner steps, support points."""
    from innerloop.data.fewshot.benchmarks import TEST_SEED
    from innerloop.data.fewshot.sinusoid import SinusoidTasks, sinusoid
    from innerloop.meta.functional import forward

    plt = pyplot()
    batch = SinusoidTasks(cfg.shots, 1, TEST_SEED).eval_batch(task, 1)
    grid = torch.linspace(-5, 5, 200).view(200, 1)
    truth = sinusoid(grid.double()[None], batch.info["amplitude"], batch.info["phase"])[0, :, 0]
    params = {k: v.detach() for k, v in algo.params().items()}
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(grid[:, 0], truth, "r", label="ground truth")
    with torch.no_grad():
        ax.plot(grid[:, 0], forward(algo.module, params, grid)[:, 0], ":", color="C2", label="pre-update")
        for i, s in enumerate(steps):
            fast = algo.adapt_params(params, batch.support_x[0], batch.support_y[0], steps=s, first_order=True)
            pred = forward(algo.module, {k: v.detach() for k, v in fast.items()}, grid)[:, 0]
            ax.plot(grid[:, 0], pred, "--", color=f"C{i}", label=f"{s} grad step" + ("s" if s > 1 else ""))
    ax.plot(batch.support_x[0, :, 0], batch.support_y[0, :, 0], "^", color="k", label="used for grad")
    ax.set_title(f"{cfg.algorithm}, K={cfg.shots}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)
