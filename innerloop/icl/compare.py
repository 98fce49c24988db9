"""The comparison: every learner, every number of shots, one task distribution, an equal budget; one table and a plot.

Equal budget means the same meta-training tasks: every learner takes ``steps`` meta-updates of ``meta_batch`` tasks
each, and meta-batch ``i`` is the same set of tasks (same functions, same support and query points) for all of them.
Compute per task is *not* equal (a 1-step MAML update and a 2-layer sequence model cost differently); the table
reports each learner's training seconds and its time per new task at test, so the cost is visible beside the error.

Each (shots, learner) pair is an ordinary run directory ``out/runs/<task>-<K>shot-<learner>`` on the run scaffold, so
an interrupted comparison resumes where it stopped when run again with the same flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from innerloop._io import atomic_write_text, pyplot, write_csv
from innerloop.data.fewshot import TEST_SEED, mean_ci95

from .trainer import ICLConfig, train

__all__ = ["FIELDS", "baseline_rows", "budget_text", "compare", "markdown_table"]

FIELDS = ["task", "shots", "learner", "kind", "params", "train_tasks", "train_seconds", "mse_in", "ci95_in",
          "mse_ood", "ci95_ood", "ms_per_task"]  # fmt: skip


def budget_text(cfg: ICLConfig) -> str:
    """One sentence saying what "equal budget" means for this comparison."""
    q = cfg.query_shots or cfg.shots
    return (f"Equal budget = the same {cfg.steps * cfg.meta_batch} meta-training tasks for every learner ({cfg.steps} "
            f"Adam updates x {cfg.meta_batch} tasks, K support + {q if cfg.query_shots else 'K'} query points each, "
            f"identical tasks across learners, seed {cfg.seed}); compute per task differs (see train_seconds).")


def _task_label(cfg: ICLConfig) -> str:
    if cfg.task == "linear":
        return f"linear d={cfg.dim}" + (f" noise={cfg.noise:g}" if cfg.noise else "")
    return cfg.task


def markdown_table(rows: Sequence[dict[str, Any]], cfg: ICLConfig) -> str:
    """The comparison as a markdown table with the budget and the evaluation stated above it."""
    ood = ("amplitude U[5, 10], phase U[pi, 2 pi]" if cfg.task == "sinusoid" else "w scaled by 3")
    lines = [
        f"Task: {_task_label(cfg)}. {budget_text(cfg)}",
        f"Test: {cfg.eval_tasks} fixed tasks (seed 2000), K support + {cfg.eval_points} query points; MSE +- 95% CI "
        f"over tasks. OOD: {ood}. Gradient learners: MLP 1-40-40-1 (d-40-40-1), inner lr {cfg.inner_lr}, "
        f"{cfg.inner_steps} inner step(s) in training, {cfg.test_steps} at test. In-context learners: "
        f"{cfg.num_layers} blocks of width {cfg.hidden_size}, {cfg.num_heads} heads.",
        "",
        "| K | learner | kind | params | train s | test MSE (in) | test MSE (OOD) | ms / new task |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        trained = r["kind"] != "baseline"
        cost = f"{r['params']} | {r['train_seconds']:.0f}" if trained else "- | -"
        ms = f"{r['ms_per_task']:.2f}" if trained else "-"
        lines.append(f"| {r['shots']} | {r['learner']} | {r['kind']} | {cost} | {r['mse_in']:.3g} +- "
                     f"{r['ci95_in']:.2g} | {r['mse_ood']:.3g} +- {r['ci95_ood']:.2g} | {ms} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _baseline_mse(name: str, batch: Any) -> torch.Tensor:
    """Per-task query MSE ``[N]`` of a learner-free baseline: ``zero`` predicts 0; ``least_squares`` fits
    ``y = w . x`` to the support set (minimum-norm solution when K < d), the optimum for noiseless linear tasks."""
    if name == "zero":
        pred = torch.zeros_like(batch.query_y)
    else:
        sx, sy = batch.support_x.double(), batch.support_y.double()
        pred = batch.query_x.double() @ (torch.linalg.pinv(sx) @ sy)  # [N, Q, d] @ [N, d, 1]
    return (pred - batch.query_y.double()).pow(2).flatten(1).mean(1)


def baseline_rows(cfg: ICLConfig) -> list[dict[str, Any]]:
    """Table rows of the baselines on ``cfg``'s fixed test tasks: ``zero`` always, ``least_squares`` for linear."""
    rows = []
    for name in ("zero", "least_squares") if cfg.task == "linear" else ("zero",):
        res = {}
        for tag, ood in (("in", False), ("ood", True)):
            batch = cfg.tasks(cfg.eval_points, TEST_SEED, ood).eval_batch(0, cfg.eval_tasks)
            res[tag] = mean_ci95(_baseline_mse(name, batch))
        rows.append({"task": _task_label(cfg), "shots": cfg.shots, "learner": name, "kind": "baseline", "params": 0,
                     "train_tasks": 0, "train_seconds": 0.0, "mse_in": res["in"][0], "ci95_in": res["in"][1],
                     "mse_ood": res["ood"][0], "ci95_ood": res["ood"][1], "ms_per_task": float("nan")})  # fmt: skip
    return rows


def _plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for learner in dict.fromkeys(r["learner"] for r in rows):
        pts = sorted((r["shots"], r["mse_in"], r["ci95_in"]) for r in rows if r["learner"] == learner)
        kind = next(r for r in rows if r["learner"] == learner)["kind"]
        style = {"in-context": "-o", "gradient": "--s"}.get(kind, ":x")
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=style, label=learner,
                    capsize=3)  # fmt: skip
    ax.set(xlabel="shots K (support points)", ylabel="test MSE (in distribution)", yscale="log", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(task: str, shots: Sequence[int], learners: Sequence[str], out: str | Path, *, steps: int = 500,
            meta_batch: int = 25, progress: bool = False, fresh: bool = False, extend: bool = False,
            **options: Any) -> list[dict[str, Any]]:  # fmt: skip
    """Train and test every learner at every number of shots on ``task``; write the table and the plot.

    Args:
        task (str): ``"sinusoid"`` or ``"linear"``.
        shots (Sequence[int]): support sizes K (a separate run per K and learner).
        learners (Sequence[str]): mixers (in-context) and meta-learning algorithms (gradient-based).
        out (str | Path): writes ``compare.csv``, ``compare.md``, ``error_vs_shots.png`` and ``runs/<...>/``.
        steps (int): meta-updates per learner. Default: 500.
        meta_batch (int): tasks per meta-update. Default: 25.
        progress (bool): progress bars. Default: False.
        **options: other :class:`ICLConfig` fields (``dim``, ``noise``, ``eval_tasks``, ``hidden_size``, ...).

    Returns:
        list[dict]: one row per (shots, learner) with the :data:`FIELDS`, and after each K the baselines of
        :func:`baseline_rows` (kind ``"baseline"``: no training, ``ms_per_task`` NaN).
    """
    out = Path(out)
    if not shots or not learners:
        raise ValueError("compare needs at least one value of shots and one learner")
    known = {f.name for f in dataclasses.fields(ICLConfig)}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown ICLConfig options {sorted(unknown)}; known: {sorted(known)}")
    cfgs = [ICLConfig(**{**options, "task": task, "shots": k, "learner": name, "steps": steps,
                         "meta_batch": meta_batch, "out": str(out / "runs" / f"{task}-{k}shot-{name}")})
            for k in shots for name in learners]  # fmt: skip  (all configs checked before any training)
    rows = []
    for i, cfg in enumerate(cfgs):
        m = train(cfg, progress=progress, fresh=fresh, extend=extend)
        rows.append({"task": _task_label(cfg), "shots": cfg.shots, "learner": cfg.learner, "kind": m["kind"],
                     "params": m["params"], "train_tasks": m["train_tasks"], "train_seconds": m["train_seconds"],
                     "mse_in": m["in"]["mse"], "ci95_in": m["in"]["ci95"], "mse_ood": m["ood"]["mse"],
                     "ci95_ood": m["ood"]["ci95"], "ms_per_task": 1000 * m["seconds_per_task"]})  # fmt: skip
        if i == len(cfgs) - 1 or cfgs[i + 1].shots != cfg.shots:  # after the learners of each K
            rows.extend(baseline_rows(cfg))
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "compare.csv", FIELDS)
    atomic_write_text(out / "compare.md", markdown_table(rows, cfgs[0]))
    with contextlib.suppress(ImportError):  # matplotlib is optional
        _plot(rows, out / "error_vs_shots.png", f"{_task_label(cfgs[0])}: error vs shots")
    return rows
