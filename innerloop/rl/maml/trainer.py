"""MAML-RL runs on the run scaffold (:mod:`innerloop.runs`): ``config.json``, ``log.csv``, ``checkpoints/``,
``metrics.json`` and the return-vs-adaptation-steps plot in one directory.

Meta-iteration ``i`` draws its tasks, trajectories and action noise from a generator seeded by ``(seed, i)``, and
the checkpoint holds the policy, so a run killed at any point and started again in the same directory ends with
exactly the weights of an uninterrupted one. ``inner_steps=0`` trains the "pretrained" comparison (the same TRPO on
all tasks jointly, no inner step).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from innerloop._io import atomic_write_json
from innerloop.data.fewshot.tasks import mean_ci95
from innerloop.errors import check_choice
from innerloop.rl.maml.algorithm import adaptation_returns, meta_objective, sample_meta_batch
from innerloop.rl.maml.policy import GaussianMLPPolicy
from innerloop.rl.maml.tasks import FAMILIES, TaskFamily, make_family
from innerloop.rl.maml.trpo import trpo_step
from innerloop.runs import Callback, Run, TrainLoop, check_finite, load_latest_weights, read_config, torch_threads

__all__ = ["MamlRLConfig", "MamlRLTrainer", "build_policy", "evaluate_policies", "evaluate_run", "train"]


@dataclass
class MamlRLConfig:
    """Everything that defines a MAML-RL run (saved as ``config.json``; the CLI flags are generated from it: the
    trailing comments are their ``--help``). Defaults are the 2D-navigation settings of pytorch-maml-rl."""

    CHOICES: ClassVar[dict[str, Collection[str]]] = {"env": FAMILIES, "activation": ("relu", "tanh")}

    env: str = "navigation2d"  # task family: navigation2d, halfcheetah_vel, halfcheetah_dir (cheetahs need mujoco)
    inner_steps: int = 1  # inner policy-gradient steps in meta-training (0 = the jointly pretrained comparison)
    inner_lr: float = 0.1  # inner step size alpha (paper: 0.1 navigation and cheetah)
    first_order: bool = False  # first-order MAML: no second derivatives through the inner step
    trajectories: int = 20  # K trajectories per task per inner step (and for the post-update rollouts)
    meta_batch: int = 20  # tasks per meta-iteration (paper: 20 navigation, 40 cheetah)
    iterations: int = 500  # meta-iterations (TRPO steps)
    horizon: int = 0  # episode length; 0 = the env's (100 navigation, 200 cheetah as the paper)
    hidden_size: int = 100  # policy MLP width (paper: 100)
    num_layers: int = 2  # hidden layers of the policy (paper: 2)
    activation: str = "relu"  # policy nonlinearity (paper: relu)
    init_std: float = 1.0  # initial action standard deviation
    gamma: float = 0.99  # discount of the returns the advantages come from
    normalize_advantages: bool = True  # standardise each task's advantages (inner and outer loss)
    max_kl: float = 0.01  # TRPO trust region: mean KL of the post-update policies
    cg_iters: int = 10  # conjugate-gradient iterations on Fisher-vector products
    cg_damping: float = 1e-5  # Fisher damping
    ls_steps: int = 15  # line-search trials
    ls_backtrack: float = 0.8  # line-search shrink factor per trial
    eval_tasks: int = 40  # held-out tasks of the evaluation (fixed by eval_seed)
    eval_steps: int = 3  # evaluation reports the return after 0..eval_steps inner steps
    eval_seed: int = 12345  # seed of the held-out tasks and their noise (the same for every compared policy)
    threads: int = 0  # torch CPU threads (0 = leave torch's default)
    log_every: int = 1  # iterations between log.csv rows
    checkpoint_every: int = 10  # iterations between checkpoints (also written at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (0 = every one, to evaluate any of them later)
    seed: int = 0  # seed of the initialisation and of the training tasks
    max_seconds: float = 0.0  # stop training early after this wall time (0 = no limit); resumable
    out: str = "runs/maml-rl/default"  # run folder

    def __post_init__(self) -> None:
        for name, allowed in self.CHOICES.items():
            check_choice(name, getattr(self, name), allowed)
        for name in ("trajectories", "meta_batch", "iterations", "hidden_size", "cg_iters", "ls_steps", "eval_tasks",
                     "log_every", "checkpoint_every"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("inner_steps", "horizon", "num_layers", "eval_steps", "threads", "max_seconds", "cg_damping",
                     "keep_checkpoints", "seed", "eval_seed"):  # fmt: skip
            if not getattr(self, name) >= 0:  # `not >=` also refuses nan
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("inner_lr", "max_kl", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("inner_lr", "max_kl", "init_std", "cg_damping"):  # inf passes the checks above, then no step
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        for name in ("seed", "eval_seed"):
            if getattr(self, name) >= 2**64:
                raise ValueError(f"{name} must be < 2**64 (torch.manual_seed's range), got {getattr(self, name)}")
        if not 0 < self.gamma <= 1 or not 0 < self.ls_backtrack < 1:
            raise ValueError(f"need 0 < gamma <= 1 and 0 < ls_backtrack < 1, got {self.gamma}, {self.ls_backtrack}")
        if self.normalize_advantages and self.trajectories == 1 and self.horizon == 1:
            raise ValueError("normalize_advantages standardises each task's trajectories x horizon advantages and "
                             "needs at least 2 of them, got --trajectories 1 --horizon 1: raise one of them or give "
                             "--no-normalize-advantages")  # fmt: skip

    def family(self) -> TaskFamily:
        return make_family(self.env, self.horizon)


def iteration_generator(seed: int, index: int) -> torch.Generator:
    """The generator of meta-iteration ``index`` of a run seeded ``seed``: a pure function of the two."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def build_policy(cfg: MamlRLConfig, family: TaskFamily | None = None) -> GaussianMLPPolicy:
    """The policy of ``cfg``, initialised from ``cfg.seed`` (this is also the "random initialisation" baseline)."""
    family = family or cfg.family()
    torch.manual_seed(cfg.seed)
    return GaussianMLPPolicy(family.obs_size, family.action_size, (cfg.hidden_size,) * cfg.num_layers,
                             cfg.activation, cfg.init_std)  # fmt: skip


# Config keys that may change when a run resumes: how it is run or reported, not what it computes.
RESUME_FREE_KEYS = frozenset({"out", "log_every", "checkpoint_every", "keep_checkpoints", "max_seconds", "eval_tasks",
                              "eval_steps", "eval_seed", "threads"})  # fmt: skip
LOG_FIELDS = ["iteration", "loss", "return_before", "return_after", "kl", "step_fraction", "train_seconds"]


class MamlRLTrainer(TrainLoop):
    """MAML-RL meta-training: one step samples a meta-batch and takes one TRPO step through the inner step.

    Logged per iteration: ``loss`` (the outer surrogate after the step), ``return_before`` / ``return_after`` (mean
    return of the pre- and post-update trajectories of the meta-batch), ``kl`` and ``step_fraction`` of the step.
    """

    def __init__(self, cfg: MamlRLConfig, policy: GaussianMLPPolicy | None = None, progress: bool = False,
                 fresh: bool = False, extend: bool = False, callbacks: Sequence[Callback] = ()) -> None:  # fmt: skip
        self.cfg, self.family = cfg, cfg.family()
        self.policy = policy if policy is not None else build_policy(cfg, self.family)
        run = Run(cfg.out, dataclasses.asdict(cfg), steps_key="iterations", resume_free=RESUME_FREE_KEYS,
                  fresh=fresh, extend=extend, command="innerloop rl maml-train", keep=cfg.keep_checkpoints)  # fmt: skip
        super().__init__(
            self.policy, run, cfg.iterations, log_fields=LOG_FIELDS, average=("loss", "return_before", "return_after"),
            log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, max_seconds=cfg.max_seconds,
            callbacks=callbacks, progress=progress, desc=f"maml-rl {cfg.env}", verbose=progress,
            diverged_hint=f"Try a lower --max-kl (now {cfg.max_kl}) or --inner-lr (now {cfg.inner_lr}).",
        )  # fmt: skip

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        gen = iteration_generator(cfg.seed, step)
        theta = {k: v.detach() for k, v in self.policy.named_parameters()}
        batch = sample_meta_batch(self.policy, theta, self.family, cfg.meta_batch, cfg.trajectories,
                                  cfg.inner_steps, cfg.inner_lr, gen, cfg.gamma, cfg.normalize_advantages)  # fmt: skip
        new, stats = trpo_step(theta, lambda p: meta_objective(self.policy, p, batch, cfg.inner_lr, cfg.first_order),
                               cfg.max_kl, cfg.cg_iters, cfg.cg_damping, cfg.ls_steps, cfg.ls_backtrack)  # fmt: skip
        check_finite(stats.loss_after, "outer surrogate loss", self, step)
        with torch.no_grad():
            for k, p in self.policy.named_parameters():
                p.copy_(new[k])
        before = (batch.train[0] if batch.train else batch.valid).task_returns().mean().item()
        return {"loss": stats.loss_after, "return_before": before,
                "return_after": batch.valid.task_returns().mean().item(), "kl": stats.kl,
                "step_fraction": stats.step_fraction}  # fmt: skip


def train(cfg: MamlRLConfig, progress: bool = True, fresh: bool = False, extend: bool = False,
          callbacks: Sequence[Callback] = ()) -> dict[str, Any]:  # fmt: skip
    """Meta-train ``cfg.out`` (resuming from its newest intact checkpoint); returns the loop's summary."""
    with torch_threads(cfg.threads):
        return MamlRLTrainer(cfg, progress=progress, fresh=fresh, extend=extend, callbacks=callbacks).fit()


def load_policy(out: str | Path) -> tuple[MamlRLConfig, GaussianMLPPolicy]:
    """The config and trained policy of run directory ``out``."""
    saved, _ = read_config(out, "innerloop rl maml-train")
    cfg = MamlRLConfig(**{k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(MamlRLConfig)}})
    policy = build_policy(cfg)
    if load_latest_weights(Path(out) / "checkpoints", policy) is None:
        raise FileNotFoundError(f"{out} has no checkpoint: train it first with `innerloop rl maml-train --out {out}`")
    return cfg, policy


def evaluate_policies(cfg: MamlRLConfig, policies: dict[str, GaussianMLPPolicy]) -> dict[str, Any]:
    """Return after 0..``cfg.eval_steps`` inner steps on ``cfg.eval_tasks`` held-out tasks, for each policy.

    Every policy sees the same tasks and the same noise streams (seeded by ``cfg.eval_seed``), and adapts with
    ``cfg.inner_lr``. The CI is over tasks (95%, normal approximation); ``vs_<name>`` is the paired difference of the
    first policy minus ``<name>`` per step.

    Returns:
        dict: ``{"policies": {name: {"steps": {s: {"mean", "ci95"}}}}, "vs_<name>": ..., settings}``.
    """
    family = cfg.family()
    tasks = family.sample_tasks(cfg.eval_tasks, iteration_generator(cfg.eval_seed, -1 % 2**31))
    curves = {}
    for name, policy in policies.items():
        params = dict(policy.named_parameters())
        curves[name] = adaptation_returns(policy, params, family, tasks, cfg.trajectories, cfg.inner_lr,
                                          cfg.eval_steps, iteration_generator(cfg.eval_seed, 0), cfg.gamma,
                                          cfg.normalize_advantages)  # fmt: skip

    def table(values: torch.Tensor) -> dict[str, dict[str, float]]:
        return {str(s): dict(zip(("mean", "ci95"), mean_ci95(values[:, s]))) for s in range(values.shape[1])}

    metrics: dict[str, Any] = {"env": cfg.env, "eval_tasks": cfg.eval_tasks, "trajectories": cfg.trajectories,
                               "inner_lr": cfg.inner_lr, "horizon": family.horizon,
                               "policies": {n: {"steps": table(c)} for n, c in curves.items()}}  # fmt: skip
    first = next(iter(curves))
    for name, c in curves.items():
        if name != first:
            metrics[f"{first}_minus_{name}"] = table(curves[first] - c)
    return metrics


def evaluate_run(out: str | Path, pretrained: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """Evaluate run ``out`` against the random initialisation (and a pretrained run): ``metrics.json`` + plot.

    Args:
        out (str | Path): a MAML-RL run directory.
        pretrained (str | Path, Optional): a run trained with ``inner_steps=0`` on the same env. Default: None.
        **overrides: evaluation settings to change (``eval_tasks``, ``eval_steps``, ``eval_seed``).
    """
    cfg, policy = load_policy(out)
    cfg = dataclasses.replace(cfg, **overrides)
    policies = {"maml" if cfg.inner_steps else "pretrained": policy}
    if pretrained is not None:
        pcfg, ppolicy = load_policy(pretrained)
        if pcfg.env != cfg.env:
            raise ValueError(f"the pretrained run {pretrained} is on {pcfg.env}, this run on {cfg.env}; give a run "
                             f"of the same env")  # fmt: skip
        # both would be reported as "pretrained": one row would silently replace the other
        if not cfg.inner_steps:
            raise ValueError(f"{out} is itself a pretrained run (trained with --inner-steps 0); evaluate a MAML run "
                             f"with --pretrained {out}, or this run without --pretrained")  # fmt: skip
        if pcfg.inner_steps:
            raise ValueError(f"the pretrained run {pretrained} was trained with --inner-steps {pcfg.inner_steps} (a "
                             f"MAML run); --pretrained takes a run trained with --inner-steps 0")  # fmt: skip
        policies["pretrained"] = ppolicy
    policies["random"] = build_policy(cfg)
    metrics = evaluate_policies(cfg, policies)
    atomic_write_json(Path(out) / "metrics.json", metrics)
    try:
        from innerloop.rl.maml.plots import plot_adaptation

        plot_adaptation(metrics, Path(out) / "adaptation.png")
    except ImportError:  # matplotlib is optional
        pass
    return metrics
