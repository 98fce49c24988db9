"""The comparison: every learner, every number of shots, one task distribution, an equal budget; one table and a plot.

Equal budget means the same meta-training tasks: every learner takes ``steps`` meta-updates of ``meta_batch`` tasks
each, and meta-batch ``i`` is the same set of tasks (same functions, same support and query points) for all of them.
Compute per task is *not* equal (a 1-step MAML update and a 2-layer sequence model cost differently); the table
reports each learner's training seconds and its time per new task at test, so the cost is visible beside the error.

Each (shots, learner) pair is an ordinary run directory ``out/runs/<task>-<K>shot-<learner>`` (Omniglot:
``omniglot-<N>way<K>shot-<learner>``) on the run scaffold, so an interrupted comparison resumes where it stopped when
run again with the same flags; a learner whose run folder already holds a finished run of the very same config and
test set (``metrics.json``) is neither trained nor evaluated again.

Regression tasks are scored by the query MSE (columns ``mse_in``, ``mse_ood``); Omniglot by the query accuracy
(``acc_in``, ``acc_ood``, in [0, 1]) with the cross-entropy beside it. Plots: ``error_vs_shots.png`` (MSE or accuracy
vs K, in and out of distribution, one panel each) and ``cost.png`` (training seconds and milliseconds per new task).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from innerloop._io import atomic_write_text, pyplot, read_json, write_csv
from innerloop.data.fewshot import mean_ci95
from innerloop.runs import config_diff, read_config

from .trainer import ICLConfig, train, upgrade_config

__all__ = ["CLASSIFICATION_FIELDS", "FIELDS", "baseline_rows", "budget_text", "compare", "fields", "finished_metrics",
           "markdown_table", "short_budget_text"]  # fmt: skip

FIELDS = ["task", "shots", "learner", "kind", "params", "train_tasks", "train_seconds", "mse_in", "ci95_in",
          "mse_ood", "ci95_ood", "ms_per_task"]  # fmt: skip
CLASSIFICATION_FIELDS = ["task", "shots", "learner", "kind", "params", "train_tasks", "train_seconds", "acc_in",
                         "ci95_in", "acc_ood", "ci95_ood", "loss_in", "loss_ood", "ms_per_task"]  # fmt: skip


def fields(cfg: ICLConfig) -> list[str]:
    """The CSV columns of a comparison on ``cfg.task``: :data:`FIELDS` (MSE) or :data:`CLASSIFICATION_FIELDS`."""
    return CLASSIFICATION_FIELDS if cfg.classes else FIELDS


def budget_text(cfg: ICLConfig) -> str:
    """One sentence saying what "equal budget" means for this comparison."""
    q = cfg.query_shots or cfg.shots
    points = (f"{cfg.ways} classes x (K support + {q if cfg.query_shots else 'K'} query images)" if cfg.classes
              else f"K support + {q if cfg.query_shots else 'K'} query points")  # fmt: skip
    return (f"Equal budget = the same {cfg.steps * cfg.meta_batch} meta-training tasks for every learner ({cfg.steps} "
            f"Adam updates x {cfg.meta_batch} tasks, {points} each, identical tasks across learners, seed "
            f"{cfg.seed}); compute per task differs (see train_seconds).")


def short_budget_text(rows: Sequence[dict[str, Any]], cfg: ICLConfig) -> str:
    """A sentence naming the trained learners of ``rows`` that saw fewer meta-training tasks than ``cfg``'s budget
    (a run stopped early by ``--max-seconds``), or ``""`` when every one had the full budget."""
    planned = cfg.steps * cfg.meta_batch
    short = [f"{r['learner']} (K={r['shots']}) {r['train_tasks']}" for r in rows
             if r["kind"] != "baseline" and int(r["train_tasks"]) < planned]  # fmt: skip
    if not short:
        return ""
    return (f"NOT an equal budget: stopped early (time budget) after fewer than the {planned} tasks: "
            f"{', '.join(short)} tasks; run the same command again to finish them.")


def _task_label(cfg: ICLConfig) -> str:
    if cfg.task == "linear":
        return f"linear d={cfg.dim}" + (f" noise={cfg.noise:g}" if cfg.noise else "")
    if cfg.task == "omniglot":
        return f"omniglot {cfg.ways}-way"
    return cfg.task


def _run_name(cfg: ICLConfig) -> str:
    if cfg.task == "omniglot":
        return f"omniglot-{cfg.ways}way{cfg.shots}shot-{cfg.learner}"
    return f"{cfg.task}-{cfg.shots}shot-{cfg.learner}"


def _budget(rows: Sequence[dict[str, Any]], cfg: ICLConfig) -> str:
    """:func:`budget_text`, followed by :func:`short_budget_text` where some learner did not get the budget."""
    short = short_budget_text(rows, cfg)
    return budget_text(cfg) + (f" **{short}**" if short else "")


def _table_row(r: dict[str, Any], scores: str) -> str:
    """One row of the comparison table: K, learner, kind, cost cells (``-`` for untrained baselines), ``scores``."""
    trained = r["kind"] != "baseline"
    cost = f"{r['params']} | {r['train_seconds']:.0f}" if trained else "- | -"
    ms = f"{r['ms_per_task']:.2f}" if trained else "-"
    return f"| {r['shots']} | {r['learner']} | {r['kind']} | {cost} | {scores} | {ms} |"


def _classification_table(rows: Sequence[dict[str, Any]], cfg: ICLConfig) -> str:
    lines = [
        f"Task: Omniglot {cfg.ways}-way K-shot, {cfg.image_size}x{cfg.image_size}. {_budget(rows, cfg)}",
        f"Test: {cfg.eval_tasks} fixed tasks (seed 2000), K support + {cfg.test_points} query images per class; query "
        f"accuracy +- 95% CI over tasks. In distribution: held-out characters of the training (background) alphabets; "
        f"OOD: the 20 evaluation alphabets. Gradient learners: MAML's Omniglot CNN (4 x 64 filters, batch-statistic "
        f"norm), inner lr {cfg.inner_lr}, {cfg.inner_steps} inner step(s) in training, {cfg.test_steps} at test. "
        f"In-context learners: conv encoder (4 x {cfg.channels} filters, GroupNorm) + {cfg.num_layers} blocks of "
        f"width {cfg.hidden_size}, {cfg.num_heads} heads. Chance: {100 / cfg.ways:.0f}%.",
        "",
        "| K | learner | kind | params | train s | accuracy % (in) | accuracy % (OOD) | ms / new task |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(_table_row(r, f"{100 * r['acc_in']:.1f} +- {100 * r['ci95_in']:.1f} | {100 * r['acc_ood']:.1f} "
                                   f"+- {100 * r['ci95_ood']:.1f}"))  # fmt: skip
    return "\n".join(lines) + "\n"


def markdown_table(rows: Sequence[dict[str, Any]], cfg: ICLConfig) -> str:
    """The comparison as a markdown table with the budget and the evaluation stated above it."""
    if cfg.classes:
        return _classification_table(rows, cfg)
    ood = ("amplitude U[5, 10], phase U[pi, 2 pi]" if cfg.task == "sinusoid" else "w scaled by 3")
    lines = [
        f"Task: {_task_label(cfg)}. {_budget(rows, cfg)}",
        f"Test: {cfg.eval_tasks} fixed tasks (seed 2000), K support + {cfg.test_points} query points; MSE +- 95% CI "
        f"over tasks. OOD: {ood}. Gradient learners: MLP 1-40-40-1 (d-40-40-1), inner lr {cfg.inner_lr}, "
        f"{cfg.inner_steps} inner step(s) in training, {cfg.test_steps} at test. In-context learners: "
        f"{cfg.num_layers} blocks of width {cfg.hidden_size}, {cfg.num_heads} heads.",
        "",
        "| K | learner | kind | params | train s | test MSE (in) | test MSE (OOD) | ms / new task |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(_table_row(r, f"{r['mse_in']:.3g} +- {r['ci95_in']:.2g} | {r['mse_ood']:.3g} +- "
                                   f"{r['ci95_ood']:.2g}"))  # fmt: skip
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


def _nearest_pixel_accuracy(batch: Any) -> torch.Tensor:
    """Per-task accuracy ``[N]`` of 1-nearest-neighbour in pixel space: each query takes the label of the support
    image at the smallest Euclidean distance (no learning; depends only on the support set and that query)."""
    sx, qx = batch.support_x.flatten(2).double(), batch.query_x.flatten(2).double()  # [N, K, P], [N, Q, P]
    nearest = torch.cdist(qx, sx).argmin(-1)  # [N, Q]
    return (batch.support_y.gather(1, nearest) == batch.query_y).double().mean(1)


def baseline_rows(cfg: ICLConfig) -> list[dict[str, Any]]:
    """Table rows of the baselines on ``cfg``'s fixed test tasks: ``zero`` always, ``least_squares`` for linear;
    ``nearest_pixel`` (1-nearest-neighbour on raw pixels) for omniglot."""
    rows = []
    if cfg.classes:
        res = {}
        for tag, ood in (("in", False), ("ood", True)):
            tasks, accs = cfg.tasks("test", ood), []
            for start in range(0, cfg.eval_tasks, cfg.eval_batch):
                accs.append(_nearest_pixel_accuracy(tasks.eval_batch(start, min(cfg.eval_batch,
                                                                                cfg.eval_tasks - start))))
            res[tag] = mean_ci95(torch.cat(accs))
        return [{"task": _task_label(cfg), "shots": cfg.shots, "learner": "nearest_pixel", "kind": "baseline",
                 "params": 0, "train_tasks": 0, "train_seconds": 0.0, "acc_in": res["in"][0], "ci95_in": res["in"][1],
                 "acc_ood": res["ood"][0], "ci95_ood": res["ood"][1], "loss_in": float("nan"),
                 "loss_ood": float("nan"), "ms_per_task": float("nan")}]  # fmt: skip
    for name in ("zero", "least_squares") if cfg.task == "linear" else ("zero",):
        res = {}
        for tag, ood in (("in", False), ("ood", True)):
            batch = cfg.tasks("test", ood).eval_batch(0, cfg.eval_tasks)
            res[tag] = mean_ci95(_baseline_mse(name, batch))
        rows.append({"task": _task_label(cfg), "shots": cfg.shots, "learner": name, "kind": "baseline", "params": 0,
                     "train_tasks": 0, "train_seconds": 0.0, "mse_in": res["in"][0], "ci95_in": res["in"][1],
                     "mse_ood": res["ood"][0], "ci95_ood": res["ood"][1], "ms_per_task": float("nan")})  # fmt: skip
    return rows


def _plot(rows: Sequence[dict[str, Any]], path: Path, title: str, classification: bool) -> None:
    """Error (MSE, log scale) or accuracy (%) vs shots: one panel in distribution, one out of it."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    metric = "acc" if classification else "mse"
    scale = 100.0 if classification else 1.0
    for ax, tag, where in zip(axes, ("in", "ood"), ("in distribution", "out of distribution")):
        for learner in dict.fromkeys(r["learner"] for r in rows):
            pts = sorted((r["shots"], scale * r[f"{metric}_{tag}"], scale * r[f"ci95_{tag}"]) for r in rows
                         if r["learner"] == learner)  # fmt: skip
            kind = next(r for r in rows if r["learner"] == learner)["kind"]
            style = {"in-context": "-o", "gradient": "--s"}.get(kind, ":x")
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=style,
                        label=learner, capsize=3)  # fmt: skip
        ylabel = f"test accuracy % ({where})" if classification else f"test MSE ({where})"
        ax.set(xlabel="shots K" + (" (per class)" if classification else " (support points)"), ylabel=ylabel,
               yscale="linear" if classification else "log", title=f"{title}, {where}")  # fmt: skip
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_cost(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Training seconds and milliseconds per new task of every trained learner, grouped by K (log scale)."""
    plt = pyplot()
    trained = [r for r in rows if r["kind"] != "baseline"]
    learners = list(dict.fromkeys(r["learner"] for r in trained))
    shots = sorted({r["shots"] for r in trained})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(shots))
    for ax, key, label in zip(axes, ("train_seconds", "ms_per_task"), ("training seconds", "ms per new task")):
        for j, k in enumerate(shots):
            by = {r["learner"]: r[key] for r in trained if r["shots"] == k}
            xs = [i + (j - (len(shots) - 1) / 2) * width for i in range(len(learners))]
            ax.bar(xs, [by.get(n, float("nan")) for n in learners], width, label=f"K={k}")
        ax.set_xticks(range(len(learners)), learners, rotation=30, fontsize=8)
        ax.set(ylabel=label, yscale="log", title=f"{title}: {label}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# config keys that change neither what a finished run computed nor what its metrics.json measured
_REPORT_ONLY = frozenset({"out", "log_every", "checkpoint_every", "max_seconds", "eval_batch", "data_root"})


def finished_metrics(cfg: ICLConfig) -> dict[str, Any] | None:
    """The ``metrics.json`` of ``cfg.out`` if it holds a finished run of ``cfg`` (every config key equal but where
    the run is, how it logs and how many test tasks are batched at once), else None."""
    path = Path(cfg.out) / "metrics.json"
    if not path.is_file() or not (Path(cfg.out) / "config.json").is_file():
        return None
    saved, _ = read_config(cfg.out, "innerloop icl compare")
    saved = upgrade_config(saved)  # runs made before a field existed, at the value they trained with
    if config_diff(saved, dataclasses.asdict(cfg), _REPORT_ONLY):
        return None
    metrics = read_json(path)
    done = metrics.get("steps") == cfg.steps and not metrics.get("stopped_early")
    return metrics if done and "in" in metrics and "ood" in metrics else None


def compare(task: str, shots: Sequence[int], learners: Sequence[str], out: str | Path, *, steps: int = 500,
            meta_batch: int = 25, progress: bool = False, fresh: bool = False, extend: bool = False,
            **options: Any) -> list[dict[str, Any]]:  # fmt: skip
    """Train and test every learner at every number of shots on ``task``; write the table and the plots.

    Args:
        task (str): ``"sinusoid"``, ``"linear"`` or ``"omniglot"``.
        shots (Sequence[int]): support sizes K (a separate run per K and learner).
        learners (Sequence[str]): mixers (in-context) and meta-learning algorithms (gradient-based).
        out (str | Path): writes ``compare.csv``, ``compare.md``, ``error_vs_shots.png``, ``cost.png`` and
            ``runs/<...>/``.
        steps (int): meta-updates per learner. Default: 500.
        meta_batch (int): tasks per meta-update. Default: 25.
        progress (bool): progress bars. Default: False.
        **options: other :class:`ICLConfig` fields (``dim``, ``noise``, ``ways``, ``eval_tasks``, ...).

    Returns:
        list[dict]: one row per (shots, learner) with the :func:`fields` of the task, and after each K the baselines
        of :func:`baseline_rows` (kind ``"baseline"``: no training, ``ms_per_task`` NaN).
    """
    out = Path(out)
    if not shots or not learners:
        raise ValueError("compare needs at least one value of shots and one learner")
    known = {f.name for f in dataclasses.fields(ICLConfig)}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown ICLConfig options {sorted(unknown)}; known: {sorted(known)}")
    cfgs = [ICLConfig(**{**options, "task": task, "shots": k, "learner": name, "steps": steps,
                         "meta_batch": meta_batch})
            for k in shots for name in learners]  # fmt: skip  (all configs checked before any training)
    cfgs = [dataclasses.replace(c, out=str(out / "runs" / _run_name(c))) for c in cfgs]
    rows = []
    for i, cfg in enumerate(cfgs):
        m = None if fresh or extend else finished_metrics(cfg)
        m = m or train(cfg, progress=progress, fresh=fresh, extend=extend)
        row = {"task": _task_label(cfg), "shots": cfg.shots, "learner": cfg.learner, "kind": m["kind"],
               "params": m["params"], "train_tasks": m["train_tasks"], "train_seconds": m["train_seconds"],
               "ci95_in": m["in"]["ci95"], "ci95_ood": m["ood"]["ci95"], "ms_per_task": 1000 * m["seconds_per_task"]}
        if cfg.classes:
            row.update(acc_in=m["in"]["acc"], acc_ood=m["ood"]["acc"], loss_in=m["in"]["loss"],
                       loss_ood=m["ood"]["loss"])  # fmt: skip
        else:
            row.update(mse_in=m["in"]["mse"], mse_ood=m["ood"]["mse"])
        rows.append(row)
        if i == len(cfgs) - 1 or cfgs[i + 1].shots != cfg.shots:  # after the learners of each K
            rows.extend(baseline_rows(cfg))
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "compare.csv", fields(cfgs[0]))
    atomic_write_text(out / "compare.md", markdown_table(rows, cfgs[0]))
    with contextlib.suppress(ImportError):  # matplotlib is optional
        what = "accuracy" if cfgs[0].classes else "error"
        _plot(rows, out / "error_vs_shots.png", f"{_task_label(cfgs[0])}: {what} vs shots", bool(cfgs[0].classes))
        _plot_cost(rows, out / "cost.png", _task_label(cfgs[0]))
    return rows
