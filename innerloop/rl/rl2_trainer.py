"""Training RL² with PPO + GAE on the run scaffold: one step = one batch of trials and a few epochs of PPO.

Step ``i`` rolls out ``trials`` new trials (tasks and action draws seeded by ``(seed, i)``, so a step is a pure
function of the weights and its index), computes GAE advantages over each whole trial (the trial is the RL²
episode: no cut at the episodes inside it), then runs ``epochs`` passes over ``minibatches`` minibatches of trials,
re-running each trial in one parallel forward of the policy. A run directory holds ``config.json``, ``log.csv``
(mean total reward per trial of the training batch, PPO diagnostics, and ``val_return`` on the fixed test trials),
``checkpoints/`` (a killed run resumes exactly) and ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from innerloop._io import atomic_write_json
from innerloop.data.fewshot import mean_ci95
from innerloop.errors import check_choice
from innerloop.layers import MIXERS
from innerloop.models import count_params
from innerloop.runs import (
    Callback,
    Run,
    TrainingDivergedError,
    TrainLoop,
    check_finite,
    fill_added_fields,
    load_latest_weights,
    load_state,
    load_weights,
    read_config,
    torch_threads,
)

from .envs import BernoulliBandit, TabularMDP
from .evaluate import BASELINES, run_bandit_trials, run_mdp_trials
from .ppo import ValueNormalizer, gae, normalize, ppo_loss
from .rl2 import RL2Policy, rollout
from .trial import TrialEnv

__all__ = ["EVAL_SEED", "RL2_ENVS", "RL2Config", "RL2Trainer", "build_rl2", "evaluate_rl2", "load_rl2", "train_rl2"]

RL2_ENVS = ("bandit", "mdp")
EVAL_SEED = 2000  # the fixed test trials: tasks and action draws from this seed, never seen in training


@dataclass
class RL2Config:
    """One RL² training run (saved as ``config.json``; trailing comments are the flags' ``--help``)."""

    CHOICES: ClassVar[dict[str, Collection[str]]] = {"env": RL2_ENVS, "mixer": MIXERS}

    env: str = "bandit"  # task distribution: bandit (k Bernoulli arms) or mdp (random tabular MDPs)
    arms: int = 5  # bandit: arms k
    episodes: int = 10  # episodes per trial n (bandits: pulls)
    states: int = 10  # mdp: states
    actions: int = 5  # mdp: actions
    horizon: int = 10  # mdp: steps per episode
    prev_obs: bool = False  # also feed the previous observation: each input is a whole transition (s, a, r, s')
    time_input: bool = False  # also feed the fraction of the trial left to play (the paper's input has no clock)
    mixer: str = "gru"  # the policy's memory: any registered mixer
    hidden_size: int = 256  # policy width
    num_layers: int = 1  # policy blocks
    num_heads: int = 4  # heads of attention and TTT memories
    mlp_ratio: int = 0  # SwiGLU after each mixer, width mlp_ratio * hidden_size; 0 = none
    steps: int = 300  # PPO iterations (one batch of trials each)
    trials: int = 256  # trials per PPO iteration
    epochs: int = 4  # PPO epochs over each batch
    minibatches: int = 4  # minibatches of trials per epoch
    lr: float = 1e-3  # Adam learning rate
    lr_anneal: bool = False  # decay the learning rate linearly from --lr to 0 over --steps (PPO practice)
    clip: float = 0.2  # PPO ratio clip
    value_coef: float = 0.5  # weight of the value loss
    entropy_coef: float = 0.01  # weight of the entropy bonus
    max_grad_norm: float = 0.5  # gradient clipping (global norm); 0 = none
    gamma: float = 0.99  # discount over the trial
    lam: float = 0.3  # GAE lambda
    value_norm: bool = False  # the value head predicts standardised returns (running mean/std of the targets)
    separate_critic: bool = False  # the values come from a second network with its own memory (no shared memory)
    init_from: str = ""  # fine-tune: start from this checkpoint folder's weights and value statistics (new optimizer)
    eval_trials: int = 1000  # fixed test trials (seed 2000) for val_return and metrics.json
    eval_every: int = 50  # steps between evaluations (0 = only at the end)
    log_every: int = 10  # steps between log.csv rows
    checkpoint_every: int = 50  # steps between checkpoints (also at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (0 = every one, to test any of them later)
    seed: int = 0  # seed of the initialisation, training tasks and action draws
    device: str = "cpu"  # cpu or cuda
    threads: int = 0  # torch CPU threads for the run (0 = leave torch's default)
    max_seconds: float = 0.0  # stop early after this much training time (0 = no limit); resumable
    out: str = "runs/rl/rl2"  # run folder: config.json, log.csv, checkpoints/, metrics.json

    def __post_init__(self) -> None:
        for name, allowed in self.CHOICES.items():
            check_choice(name, getattr(self, name), allowed)
        if self.env == "bandit" and self.arms < 2:
            raise ValueError(f"a bandit needs k >= 2 arms to choose between: use --arms 2 or more, got {self.arms}")
        if self.env == "mdp" and (self.states < 1 or self.actions < 2 or self.horizon < 1):
            raise ValueError(f"an MDP needs --states >= 1, --actions >= 2 and --horizon >= 1, got {self.states}, "
                             f"{self.actions}, {self.horizon}")  # fmt: skip
        for name in ("episodes", "hidden_size", "num_layers", "num_heads", "steps", "trials", "epochs",
                     "minibatches", "eval_trials", "log_every"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("mlp_ratio", "value_coef", "entropy_coef", "max_grad_norm", "eval_every", "checkpoint_every",
                     "keep_checkpoints", "max_seconds", "threads"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.minibatches > self.trials:
            raise ValueError(f"--minibatches {self.minibatches} > --trials {self.trials}: use at most one "
                             f"minibatch per trial")  # fmt: skip
        if not (self.lr > 0 and self.clip > 0 and 0 < self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError(f"need lr > 0, clip > 0, 0 < gamma <= 1, 0 <= lam <= 1; got {self.lr}, {self.clip}, "
                             f"{self.gamma}, {self.lam}")  # fmt: skip
        from innerloop.train.distributed import resolve_device

        resolve_device(self.device)  # a clear error for a typo ("gpu") or for cuda without a GPU

    def make_trials(self, batch_size: int) -> TrialEnv:
        """``batch_size`` trials of this config's task distribution (seeded later, by :func:`rollout`)."""
        if self.env == "bandit":
            env = BernoulliBandit(self.arms, batch_size, device=self.device)
        else:
            env = TabularMDP(self.states, self.actions, self.horizon, batch_size, device=self.device)
        return TrialEnv(env, self.episodes, self.prev_obs, self.time_input)

    def describe(self) -> str:
        if self.env == "bandit":
            return f"bandit k={self.arms} n={self.episodes}"
        return f"mdp S={self.states} A={self.actions} H={self.horizon} n={self.episodes}"


def build_rl2(cfg: RL2Config) -> tuple[RL2Policy, torch.optim.Optimizer]:
    """The policy (seeded init, on ``cfg.device``) and its Adam optimizer."""
    torch.manual_seed(cfg.seed)
    trials = cfg.make_trials(1)
    policy = RL2Policy(trials.input_size, trials.env.num_actions, cfg.mixer, cfg.hidden_size, cfg.num_layers,
                       cfg.num_heads, cfg.mlp_ratio, separate_critic=cfg.separate_critic).to(cfg.device)  # fmt: skip
    return policy, torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)


# change how a run is reported, not what it computes: allowed to differ on resume
RESUME_FREE_KEYS = frozenset({"out", "log_every", "checkpoint_every", "keep_checkpoints", "max_seconds", "eval_trials",
                              "eval_every", "threads"})  # fmt: skip
# the resume-free keys ``val_return`` depends on: a finished run run again with another value is evaluated again
# (``eval_every`` only adds evaluations during training; ``threads`` changes at most rounding)
EVAL_KEYS = ("eval_trials",)
LOG_FIELDS = ["step", "loss", "return", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction",
              "val_return", "train_seconds"]  # fmt: skip


# fields added after the first runs, with the value that reproduces those runs: an old run resumes and loads as before
ADDED_FIELDS = {"prev_obs": False, "value_norm": False, "separate_critic": False, "threads": 0, "lr_anneal": False,
                "init_from": "", "time_input": False}
upgrade_config = fill_added_fields(ADDED_FIELDS)  # a config.json from before a field existed, in today's form


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 1) % (2**62)


def _training_step_of(cfg: RL2Config, seed: int) -> int | None:
    """The training step whose tasks ``seed`` draws (:func:`_step_seed` of ``cfg.seed``), or None if none does."""
    offset = (seed - _step_seed(cfg.seed, 0)) % (2**62)
    return offset // 7919 if offset % 7919 == 0 and offset // 7919 < cfg.steps else None


class RL2Trainer(TrainLoop):
    """One step: a rollout of ``cfg.trials`` trials, GAE, and ``epochs x minibatches`` PPO updates.

    Args:
        cfg (RL2Config): the run.
        policy (RL2Policy), opt (torch.optim.Optimizer): from :func:`build_rl2`.
        fresh, extend (bool, Optional): see :class:`innerloop.runs.Run`. Default: False.
        callbacks (Sequence[Callback], Optional): Default: ().
        progress (bool, Optional): a progress bar. Default: False.
        run (bool, Optional): keep a run directory at ``cfg.out``; False trains in memory. Default: True.
    """

    def __init__(self, cfg: RL2Config, policy: RL2Policy, opt: torch.optim.Optimizer, *, fresh: bool = False,
                 extend: bool = False, callbacks: Sequence[Callback] = (), progress: bool = False,
                 run: bool = True) -> None:  # fmt: skip
        self.cfg, self.policy, self.opt = cfg, policy, opt
        self.trials = cfg.make_trials(cfg.trials)
        self.generator = torch.Generator(cfg.device)
        self.value_norm = ValueNormalizer() if cfg.value_norm else None
        stateful: dict[str, Any] = {"optimizer": opt}
        if self.value_norm is not None:
            stateful["value_norm"] = self.value_norm
        the_run = None
        if run:
            the_run = Run(cfg.out, dataclasses.asdict(cfg), steps_key="steps", resume_free=RESUME_FREE_KEYS,
                          fresh=fresh, extend=extend, command="innerloop rl train --algo rl2",
                          upgrade=upgrade_config, keep=cfg.keep_checkpoints)  # fmt: skip
        if cfg.init_from:
            self._init_from(Path(cfg.init_from))
        super().__init__(policy, the_run, cfg.steps, stateful=stateful, log_fields=LOG_FIELDS,
                         average=("loss", "return"), log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                         eval_every=cfg.eval_every, max_seconds=cfg.max_seconds, callbacks=callbacks,
                         progress=progress, desc=f"RL² {cfg.mixer} {cfg.describe()}", eval_keys=EVAL_KEYS,
                         diverged_hint=f"Try a lower --lr (now {cfg.lr}) or --max-grad-norm.")  # fmt: skip

    def _init_from(self, path: Path) -> None:
        """Weights (and the value normaliser's statistics) of checkpoint ``path``; a resumed run overwrites them."""
        if not path.is_dir():
            raise FileNotFoundError(f"--init-from {path}: no such checkpoint folder (give a run's "
                                    f"checkpoints/step_NNNNNNNN)")  # fmt: skip
        load_weights(path, self.policy, self.cfg.device)
        saved = load_state(path).get("stateful", {}).get("value_norm")
        if self.value_norm is not None and saved is not None:
            self.value_norm.load_state_dict(saved)

    def resolved_config(self) -> dict[str, Any]:
        return {"algo": "rl2", "params": count_params(self.policy), "steps_per_trial": self.trials.steps_per_trial,
                "input_size": self.trials.input_size, "planned_env_steps": self.cfg.steps * self.cfg.trials
                * self.trials.steps_per_trial}  # fmt: skip

    def learning_rate(self, step: int) -> float:
        """The Adam learning rate of (0-based) ``step``: ``lr``, or ``lr * (1 - step / steps)`` with ``lr_anneal``.

        A pure function of the step, so a resumed run continues the same schedule; ``--extend`` stretches the rest of
        it over the new ``--steps``.
        """
        cfg = self.cfg
        return cfg.lr * (1.0 - step / cfg.steps) if cfg.lr_anneal else cfg.lr

    def train_step(self, step: int) -> dict[str, float]:
        cfg, seed = self.cfg, _step_seed(self.cfg.seed, step)
        for group in self.opt.param_groups:
            group["lr"] = self.learning_rate(step)
        self.generator.manual_seed(seed)
        ro = rollout(self.policy, self.trials, seed, self.generator)
        vn = self.value_norm
        values = ro.values if vn is None else vn.denormalize(ro.values)  # the head predicts standardised returns
        adv, ret = gae(ro.rewards, values, gamma=cfg.gamma, lam=cfg.lam)
        if vn is not None:
            vn.update(ret)
            ret = vn.normalize(ret)
        adv = normalize(adv)
        sums: dict[str, float] = {}
        n = 0
        for _ in range(cfg.epochs):
            perm = torch.randperm(cfg.trials, generator=self.generator, device=cfg.device)
            for idx in torch.tensor_split(perm, cfg.minibatches):
                logits, values, _ = self.policy(ro.inputs[idx])
                terms = ppo_loss(logits, values, ro.actions[idx], ro.logp[idx], adv[idx], ret[idx], cfg.clip,
                                 cfg.value_coef, cfg.entropy_coef)  # fmt: skip
                self.opt.zero_grad(set_to_none=True)
                terms.total.backward()
                # separate actor and critic are clipped one by one, so a large value gradient never shrinks the actor's
                norm = sum(torch.nn.utils.clip_grad_norm_(group, cfg.max_grad_norm if cfg.max_grad_norm > 0
                                                          else math.inf) for group in self.policy.parameter_groups())
                try:
                    check_finite(float(terms.total.detach()) + float(norm), "PPO loss / gradient norm", self, step)
                except TrainingDivergedError:
                    self.opt.zero_grad(set_to_none=True)
                    raise
                self.opt.step()
                for k, v in terms._asdict().items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                n += 1
        logs = {("loss" if k == "total" else ("policy_loss" if k == "policy" else
                 "value_loss" if k == "value" else k)): v / n for k, v in sums.items()}  # fmt: skip
        return {**logs, "return": float(ro.returns.mean())}

    def evaluate_metrics(self) -> dict[str, float]:
        return {"return": evaluate_rl2(self.cfg, self.policy)["mean"]}


def evaluate_rl2(cfg: RL2Config, policy: RL2Policy, greedy: bool = False, seed: int = EVAL_SEED,
                 paired: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
    """Total reward per trial on ``cfg.eval_trials`` fixed test trials: mean, 95% CI, and timing.

    Args:
        seed (int, Optional): seed of the test tasks and action draws. Default: :data:`EVAL_SEED`, the trials the
            run's ``val_return`` is measured on; another seed gives trials independent of them (for a checkpoint
            chosen by its ``val_return``). Training never draws from either (:func:`_step_seed` of a step).
        paired (Sequence[str], Optional): classic baselines (``innerloop.rl.BASELINES[cfg.env]``) played on the
            *same* trials: the same tasks and the same stream of random outcomes (the env seeded alike), so the
            per-trial difference ``agent - baseline`` has far less variance than two independent means. Default: ().

    Returns:
        dict: ``mean``, ``ci95``, ``trials``, ``greedy``, ``seed``, ``seconds`` (the rollout's wall time) and, with
        ``paired``, ``paired: {name: {"mean": baseline mean, "diff": mean of agent - baseline, "diff_ci95": ...}}``.
    """
    names = list(paired)
    for name in names:
        check_choice(f"{cfg.env} baseline", name, BASELINES[cfg.env])
    step = _training_step_of(cfg, seed)
    if step is not None:
        raise ValueError(f"eval seed {seed} is the seed of training step {step} (seed {cfg.seed}): its test trials "
                         f"would be tasks the agent trained on; choose another --eval-seed")  # fmt: skip
    trials = cfg.make_trials(cfg.eval_trials)
    g = torch.Generator(cfg.device)
    g.manual_seed(seed)
    was = policy.training
    policy.eval()
    t0 = time.perf_counter()
    ro = rollout(policy, trials, seed, g, greedy=greedy)
    seconds = time.perf_counter() - t0
    policy.train(was)
    r = ro.returns.double().cpu()
    mean, ci = mean_ci95(r)
    out = {"mean": mean, "ci95": ci, "trials": len(r), "greedy": greedy, "seed": seed, "seconds": seconds}
    if names:
        out["paired"] = {name: _paired(cfg, r, name, seed) for name in names}
    return out


def _paired(cfg: RL2Config, returns: torch.Tensor, name: str, seed: int) -> dict[str, float]:
    """Baseline ``name`` on the trials of ``seed`` (one batch, as the agent's) and the per-trial difference.

    The baseline's env is seeded as the agent's and lives on the same device (a seed draws other tasks and outcomes
    on a GPU than on the CPU), so both play the very same trials."""
    n = len(returns)
    if cfg.env == "bandit":
        base = run_bandit_trials(name, cfg.arms, cfg.episodes, n, seed, device=cfg.device)
    else:
        base = run_mdp_trials(name, cfg.episodes, n, seed, cfg.states, cfg.actions, cfg.horizon, device=cfg.device)
    b = torch.from_numpy(base).double()
    (mean, ci), (diff, diff_ci) = mean_ci95(b), mean_ci95(returns - b)
    return {"mean": mean, "ci95": ci, "diff": diff, "diff_ci95": diff_ci}


def train_rl2(cfg: RL2Config, *, evaluate_after: bool = True, fresh: bool = False, extend: bool = False,
              callbacks: Sequence[Callback] = (), progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Train ``cfg.out`` with PPO (resuming from its newest intact checkpoint), then evaluate into ``metrics.json``.

    Returns:
        dict: the training summary (``train_seconds``, ``steps``, ``val_return``, ...), ``params`` and, with
        ``evaluate_after``, ``test`` (sampled actions) and ``test_greedy`` (argmax actions) from :func:`evaluate_rl2`.
    """
    with torch_threads(cfg.threads):
        policy, opt = build_rl2(cfg)
        trainer = RL2Trainer(cfg, policy, opt, fresh=fresh, extend=extend, callbacks=callbacks, progress=progress)
        summary = {**trainer.fit(), **trainer.resolved_config()}
        summary["env_steps"] = summary["steps"] * cfg.trials * trainer.trials.steps_per_trial  # done, not planned
        if not evaluate_after:
            return summary
        metrics = {**summary, "env": cfg.describe(), "mixer": cfg.mixer, "test": evaluate_rl2(cfg, policy),
                   "test_greedy": evaluate_rl2(cfg, policy, greedy=True)}  # fmt: skip
    atomic_write_json(Path(cfg.out) / "metrics.json", metrics)
    return metrics


def load_rl2(out: str | Path, checkpoint: str | Path | None = None, **overrides: Any) -> tuple[RL2Config, RL2Policy,
                                                                                             Path]:  # fmt: skip
    """The config and trained policy of run directory ``out`` (its newest intact checkpoint, or ``checkpoint``).

    Args:
        out (str | Path): a run directory made by ``innerloop rl train --algo rl2``.
        checkpoint (str | Path, Optional): a checkpoint folder of this run (``<out>/checkpoints/step_...`` or a copy
            kept elsewhere) to load instead of the newest. Default: None.
        **overrides: config fields to change for evaluation (``eval_trials``, ``device``, ...).

    Returns:
        tuple: ``(config, policy, checkpoint path)``.

    Raises:
        FileNotFoundError: no ``config.json`` or no checkpoint in ``out``.
    """
    saved, resolved = read_config(out, "innerloop rl train --algo rl2")
    if resolved.get("algo", "rl2") != "rl2":
        raise ValueError(f"{out} holds a {resolved['algo']} run: evaluate it with --algo {resolved['algo']}")
    known = {f.name for f in dataclasses.fields(RL2Config)}
    cfg = RL2Config(**{**{k: v for k, v in saved.items() if k in known}, "out": str(out), **overrides})
    policy, _ = build_rl2(cfg)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_dir():
            raise FileNotFoundError(f"--checkpoint {path}: no such checkpoint folder (they are "
                                    f"{Path(out) / 'checkpoints'}/step_NNNNNNNN)")  # fmt: skip
        load_weights(path, policy, cfg.device)
        return cfg, policy, path
    path = load_latest_weights(Path(out) / "checkpoints", policy, cfg.device)
    if path is None:
        raise FileNotFoundError(f"{out}/checkpoints holds no checkpoint: train it first with "
                                f"`innerloop rl train --algo rl2 --out {out}`")
    return cfg, policy, path
