"""Evaluation of a learned update rule against hand-designed optimizers with tuned learning rates.

Every optimizer optimises the same ``N`` held-out instances (a fixed seed, never seen in training) for ``steps``
steps; the curve is the mean optimizee loss at each step with a 95% confidence interval over the instances. The
baselines (Adam, RMSprop, SGD, Nesterov momentum) each get the learning rate of ``lr_grid`` with the lowest mean
loss over the whole trajectory, ``theta_0 .. theta_T`` (the meta-loss without the ``f(theta_0)`` term, which is the
same for every optimizer, so the ranking is that of the meta-loss) on a *separate* fixed set of instances, so their
tuning does not see the evaluation set. The paper tuned each baseline's rate, by which criterion is not recorded
in the docs. ``mean_over_steps`` in ``metrics.json`` is this mean over the ``T + 1`` points, the initial loss
included. Written to the run folder: ``eval.csv`` (optimizer,
learning rate, step, mean, ci95), ``eval.png`` (loss vs step, log scale, CI bands) and ``metrics.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from innerloop._io import atomic_write_json, pyplot, write_csv
from innerloop.data.fewshot.tasks import mean_ci95
from innerloop.optim.meta_train import BASELINES, MetaOptConfig, build_problem, make_rule, stacked
from innerloop.optim.problems import Instance, Params, Problem, batch_loss, sample_instances
from innerloop.runs import load_latest_weights

__all__ = ["EVAL_SEED", "TUNE_SEED", "Adam", "NAG", "RMSprop", "baseline", "evaluate_rules", "rollout", "tune_lr"]

EVAL_SEED, TUNE_SEED = 1_000_003, 2_000_003  # the fixed held-out sets: evaluation, and baseline tuning


class Adam:
    """Adam as an update rule over parameter dicts (``betas=(0.9, 0.999)``, ``eps=1e-8``, bias-corrected)."""

    def __init__(self, lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> None:
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps

    def init(self, params: Params) -> tuple[Params, Params]:
        return {k: torch.zeros_like(v) for k, v in params.items()}, {k: torch.zeros_like(v) for k, v in params.items()}

    def update(self, grads: Params, state: tuple[Params, Params], params: Params,
               step: int) -> tuple[Params, tuple[Params, Params]]:  # fmt: skip
        m = {k: self.b1 * state[0][k] + (1 - self.b1) * g for k, g in grads.items()}
        v = {k: self.b2 * state[1][k] + (1 - self.b2) * g * g for k, g in grads.items()}
        c1, c2 = 1 - self.b1 ** (step + 1), 1 - self.b2 ** (step + 1)
        return {k: -self.lr * (m[k] / c1) / ((v[k] / c2).sqrt() + self.eps) for k in grads}, (m, v)


class RMSprop:
    """RMSprop as an update rule (``alpha=0.99``, ``eps=1e-8``, as ``torch.optim.RMSprop``)."""

    def __init__(self, lr: float, alpha: float = 0.99, eps: float = 1e-8) -> None:
        self.lr, self.alpha, self.eps = lr, alpha, eps

    def init(self, params: Params) -> Params:
        return {k: torch.zeros_like(v) for k, v in params.items()}

    def update(self, grads: Params, state: Params, params: Params, step: int) -> tuple[Params, Params]:
        s = {k: self.alpha * state[k] + (1 - self.alpha) * g * g for k, g in grads.items()}
        return {k: -self.lr * g / (s[k].sqrt() + self.eps) for k, g in grads.items()}, s


class NAG:
    """Nesterov momentum as ``torch.optim.SGD(nesterov=True)``: ``b = mu b + g``, update ``-lr (g + mu b)``; with
    ``momentum=0`` plain gradient descent."""

    def __init__(self, lr: float, momentum: float = 0.9) -> None:
        self.lr, self.mu = lr, momentum

    def init(self, params: Params) -> Params:
        return {k: torch.zeros_like(v) for k, v in params.items()}

    def update(self, grads: Params, state: Params, params: Params, step: int) -> tuple[Params, Params]:
        b = {k: self.mu * state[k] + g for k, g in grads.items()}
        return {k: -self.lr * (g + self.mu * b[k]) for k, g in grads.items()}, b


def baseline(name: str, lr: float) -> Any:
    """The baseline optimizer ``name`` (adam, rmsprop, sgd, nag) with learning rate ``lr``, as an update rule."""
    rules = {"adam": lambda: Adam(lr), "rmsprop": lambda: RMSprop(lr), "sgd": lambda: NAG(lr, 0.0),
             "nag": lambda: NAG(lr, 0.9)}  # fmt: skip
    if name not in rules:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(sorted(BASELINES))}")
    return rules[name]()


def rollout(problem: Problem, rule: Any, instances: Instance, params: Params, steps: int) -> Tensor:
    """Optimise the instances with ``rule`` for ``steps`` steps, no meta-gradient; the losses ``[steps + 1, n]``.

    Row ``t`` is the loss at ``theta_t`` (row 0: before any update). A diverging optimizer gives inf/NaN rows
    (nothing is raised: tuning ranks it last).
    """
    rule = stacked(rule)  # the instances are stacked: per-instance feature statistics
    state = rule.init(params)
    losses = []
    for t in range(steps + 1):
        with torch.enable_grad():
            p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            loss = batch_loss(problem, instances, p, t)  # [n]
            if t == steps:
                losses.append(loss.detach())
                break
            grads = torch.autograd.grad(loss.sum(), list(p.values()), allow_unused=True)
        losses.append(loss.detach())
        g = {k: torch.zeros_like(v) if gi is None else gi for (k, v), gi in zip(p.items(), grads)}
        with torch.no_grad():
            updates, state = rule.update(g, state, params, t)
            params = {k: params[k] + updates[k] for k in params}
    return torch.stack(losses)


def _score(losses: Tensor) -> float:
    """Mean loss over steps and instances; inf for a trajectory that diverged."""
    s = losses.double().mean().item()
    return s if math.isfinite(s) else math.inf


def tune_lr(problem: Problem, name: str, grid: list[float], instances: Instance, params: Params,
            steps: int) -> tuple[float, dict[float, float]]:  # fmt: skip
    """The learning rate of ``grid`` with the lowest mean loss for baseline ``name``; also every rate's score."""
    scores = {lr: _score(rollout(problem, baseline(name, lr), instances, params, steps)) for lr in grid}
    best = min(scores, key=lambda lr: (scores[lr], lr))
    if math.isinf(scores[best]):
        raise ValueError(f"baseline {name} diverged at every learning rate of {grid}; add smaller ones to --lr-grid")
    return best, scores


def _load_rule(cfg: MetaOptConfig, problem: Problem) -> nn.Module:
    rule = make_rule(cfg, problem).to(cfg.device)
    if load_latest_weights(Path(cfg.out) / "checkpoints", rule, map_location=cfg.device) is None:
        raise FileNotFoundError(f"{cfg.out} has no checkpoint: train it first with "
                                f"`innerloop optim train --out {cfg.out}`")  # fmt: skip
    return rule


def evaluate_rules(cfg: MetaOptConfig, rule: Any = None, problem: Problem | None = None,
                   plot: bool = True) -> dict[str, Any]:  # fmt: skip
    """Compare the learned rule with the tuned baselines on ``cfg.eval_instances`` held-out instances.

    Args:
        cfg (MetaOptConfig): the run (``out``, problem, evaluation sizes, baselines, learning-rate grid).
        rule (UpdateRule | None, Optional): the learned rule; None loads ``cfg.rule`` from ``cfg.out``'s newest
            checkpoint. Default: None.
        problem (Problem | None, Optional): the optimizee problem; None builds ``cfg.problem`` (the digits' test
            images). Default: None.
        plot (bool, Optional): write ``eval.png`` (needs matplotlib). Default: True.

    Returns:
        dict: per optimizer its learning rate (baselines), final loss mean and CI, and mean loss over the steps;
        also written to ``<out>/metrics.json``, with the curves in ``<out>/eval.csv``.
    """
    steps = cfg.resolved_eval_steps()
    problem = problem if problem is not None else build_problem(cfg, "test", steps)
    rule = rule if rule is not None else _load_rule(cfg, problem)
    tune = sample_instances(problem, cfg.tune_instances, torch.Generator().manual_seed(TUNE_SEED), cfg.device)
    held = sample_instances(problem, cfg.eval_instances, torch.Generator().manual_seed(EVAL_SEED), cfg.device)
    curves: dict[str, tuple[float | None, Tensor]] = {"learned": (None, rollout(problem, rule, *held, steps))}
    tuning: dict[str, dict[str, float]] = {}
    for name in cfg.baselines:
        lr, scores = tune_lr(problem, name, list(cfg.lr_grid), *tune, steps)
        tuning[name] = {str(k): v for k, v in scores.items()}
        curves[name] = (lr, rollout(problem, baseline(name, lr), *held, steps))
    rows, summary = [], {}
    for name, (lr, losses) in curves.items():
        for t in range(losses.shape[0]):
            m, ci = mean_ci95(losses[t])
            rows.append({"optimizer": name, "lr": "" if lr is None else lr, "step": t, "mean": m, "ci95": ci})
        final_m, final_ci = mean_ci95(losses[-1])
        summary[name] = {"lr": lr, "final_mean": final_m, "final_ci95": final_ci, "mean_over_steps": _score(losses)}
    out = Path(cfg.eval_out or cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "eval.csv")
    metrics = {"problem": cfg.problem, "optimizee": describe_problem(cfg), "rule": cfg.rule,
               "eval_instances": cfg.eval_instances, "tune_instances": cfg.tune_instances, "steps": steps,
               "optimizers": summary, "lr_tuning": tuning}  # fmt: skip
    atomic_write_json(out / "metrics.json", metrics)
    if plot:
        _plot(rows, out / "eval.png", f"{describe_problem(cfg)}: {cfg.eval_instances} held-out instances")
    return metrics


def describe_problem(cfg: MetaOptConfig) -> str:
    """A short name of the optimizee of ``cfg``, e.g. ``digits_mlp (40 relu units x 2)``."""
    if cfg.problem != "digits_mlp":
        return cfg.problem
    return f"{cfg.problem} ({cfg.hidden} {cfg.activation} units x {cfg.layers})"


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["optimizer"] for r in rows):
        rs = [r for r in rows if r["optimizer"] == name]
        t = [r["step"] for r in rs]
        m = [r["mean"] for r in rs]
        lo = [max(r["mean"] - r["ci95"], 1e-12) for r in rs]
        hi = [r["mean"] + r["ci95"] for r in rs]
        label = name if rs[0]["lr"] == "" else f"{name} (lr {rs[0]['lr']:g})"
        ax.plot(t, m, label=label)
        ax.fill_between(t, lo, hi, alpha=0.2)
    means = [r["mean"] for r in rows if math.isfinite(r["mean"]) and r["mean"] > 0]
    if means:  # the axis follows the means: a wide band (or a diverged baseline) does not squash the curves
        ax.set_ylim(min(means) / 2, max(means) * 2)
    ax.set(xlabel="optimizee step", ylabel="mean loss (95% CI)", yscale="log", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
