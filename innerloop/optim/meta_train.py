"""Meta-training of learned update rules (Andrychowicz et al. 2016) by truncated backpropagation through optimisation.

An *episode* samples a batch of optimizee instances (:mod:`innerloop.optim.problems`) and optimises them with the
rule for ``steps`` optimizee steps, in unrolls of ``unroll`` steps. One *meta-step* is one unroll: the meta-loss is
the sum over the unroll of the optimizee losses after each update, ``sum_{t=1..unroll} f(theta_t)`` (averaged over
instances; the released code also adds ``f(theta_0)`` of the unroll, a constant there, so the meta-gradient is the
same), or with ``meta_loss="log"`` the mean log loss over the unroll (Metz et al.), and one Adam step on the
rule's weights follows (its meta-gradient optionally clipped to a global norm). The optimizee parameters and the
rule's state are carried to the next unroll of the episode, detached there (the truncation). By default the
optimizee gradients are detached (second derivatives dropped, as in the paper and its released code);
``second_order=True`` keeps them (on the digits MLP the first-order meta-gradient of the MLP rule had the wrong
sign mid-episode: RESULTS.md).

Training runs on the run scaffold (:class:`innerloop.runs.TrainLoop`): the carried parameters, rule state, instances
and the sampling generator are checkpointed with the rule and Adam, so a killed or interrupted run resumes to the
same log as an uninterrupted one. Evaluation against tuned baselines is :mod:`innerloop.optim.meta_eval`.

Rules are looked up by name in :data:`RULES` (name -> factory taking one instance's initial parameters, unbatched,
returning an ``nn.Module`` update rule); rules see parameters stacked over instances, ``[n, ...]``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from innerloop.errors import check_choice
from innerloop.optim.learned import LSTMRule, MLPRule, TinyRule
from innerloop.optim.learned.mlp import BASES
from innerloop.optim.problems import (
    ConvClassifier,
    Instance,
    MLPClassifier,
    Params,
    Problem,
    Quadratic,
    batch_loss,
    digits,
)
from innerloop.optim.problems import sample_instances as _sample
from innerloop.runs import Callback, Run, TrainingDivergedError, TrainLoop, check_finite, fill_added_fields

__all__ = ["BASELINES", "PROBLEMS", "RULES", "LearnedLR", "MetaOptConfig", "MetaOptTrainer", "NonFiniteGradientError",
           "UnrollResult", "build_problem", "build_rule", "train_rule", "unroll"]  # fmt: skip

BASELINES = ("adam", "rmsprop", "sgd", "nag")  # hand-designed optimizers evaluated against the learned rule
LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)  # the baselines' learning rates tried by default


class LearnedLR(nn.Module):
    """Gradient descent with one learnable log-learning-rate per parameter tensor: ``updates[k] = -exp(a_k) * g_k``.

    The simplest learned update rule: a test rule for the meta-training machinery (every weight gets a meta-gradient,
    and meta-training it on quadratics finds a better step size).

    Args:
        names (Iterable[str]): the parameter names it updates.
        lr (float, Optional): the initial learning rate of every tensor. Default: 1e-3.

    Examples:
        >>> import torch
        >>> rule = LearnedLR(["w"], lr=0.1)
        >>> p, g = {"w": torch.ones(2)}, {"w": torch.ones(2)}
        >>> rule.update(g, rule.init(p), p, step=0)[0]["w"]
        tensor([-0.1000, -0.1000], grad_fn=<MulBackward0>)
    """

    def __init__(self, names: Iterable[str], lr: float = 1e-3) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"LearnedLR: lr must be > 0, got {lr}")
        self.names = list(names)
        # ParameterDict keys may not contain "." (module parameter names do): index them by position instead
        self.log_lr = nn.Parameter(torch.full((len(self.names),), math.log(lr)))

    def init(self, params: Params) -> tuple[()]:
        unknown = [k for k in params if k not in self.names]
        if unknown:
            raise KeyError(f"LearnedLR has learning rates for {self.names}, not for {unknown}; build it with "
                           f"LearnedLR(params) for the parameters it updates")  # fmt: skip
        return ()

    def update(self, grads: Params, state: tuple[()], params: Params, step: int) -> tuple[Params, tuple[()]]:
        rates = self.log_lr.exp()
        return {k: -rates[self.names.index(k)] * g for k, g in grads.items()}, state


# rule name -> factory(one instance's initial parameters, unbatched, and the rule's options from the config, see
# make_rule) -> nn.Module rule, which is then called on parameters stacked over instances [n, ...] and must treat
# each instance as if it were alone.
RULES: dict[str, Callable[..., nn.Module]] = {
    "sgd_lr": lambda params: LearnedLR(params),
    "lstm": lambda params: LSTMRule(),  # coordinatewise: stacked instances are just more coordinates
    # its feature RMS is per instance, over all but the leading dim
    "mlp": lambda params, **options: MLPRule(batch_dims=1, **options),
    "tiny": lambda params, **options: TinyRule(batch_dims=1, **options),  # the same, per instance
}
META_LOSSES = ("sum", "log")

PROBLEMS = ("quadratic", "digits_mlp", "digits_conv")
ACTIVATIONS = ("sigmoid", "relu")


@dataclass
class MetaOptConfig:
    """One meta-training run of a learned update rule (saved as ``config.json``; the trailing comments are the CLI
    flags' ``--help``). The defaults are the paper's released code: 100 steps in unrolls of 20, Adam 1e-3."""

    # allowed values of the fields with a fixed set (the command line offers them as choices)
    CHOICES: ClassVar[dict[str, Collection[str]]] = {"problem": PROBLEMS, "rule": RULES, "activation": ACTIVATIONS,
                                                     "meta_loss": META_LOSSES, "mlp_base": BASES}  # fmt: skip

    problem: str = "quadratic"  # optimizee: quadratic ||W theta - y||^2, digits_mlp or digits_conv (innerloop[optim])
    rule: str = "sgd_lr"  # learned rule: sgd_lr (per-tensor rates), lstm (Andrychowicz et al.), mlp (Metz et al.), tiny
    episodes: int = 10000  # meta-training episodes; each samples new instances and optimises them for --steps steps
    steps: int = 100  # optimizee steps per episode
    unroll: int = 20  # optimizee steps per truncated-BPTT unroll = per meta-step; must divide --steps
    batch: int = 128  # independent optimizee instances per meta-step
    meta_lr: float = 1e-3  # Adam learning rate on the rule's weights
    second_order: bool = False  # backpropagate through the optimizee gradients (default off: dropped, as the paper)
    meta_loss: str = "sum"  # per unroll: sum (the paper: sum of the losses) | log (mean log loss, as Metz et al.)
    meta_clip: float = 0.0  # clip the meta-gradient to this global norm before each Adam step (0 = no clipping)
    mlp_base: str = "adam"  # mlp, tiny rules: adam (the untrained rule is an Adam-like step) | none (a plain MLP)
    mlp_step_mult: float = 0.0  # mlp, tiny rules: step length b in d * exp(a m) * b (0 = 1e-2; mlp with none: 1e-3)
    dim: int = 10  # quadratic: dimension of theta
    hidden: int = 20  # digits_mlp: hidden units per layer
    layers: int = 1  # digits_mlp: hidden layers
    train_layers: list[int] = field(default_factory=list)  # digits_mlp: meta-train on these layer counts in turn (1 2)
    activation: str = "sigmoid"  # digits_mlp: sigmoid | relu
    minibatch: int = 128  # digits_mlp, digits_conv: examples per optimizee step
    eval_instances: int = 100  # held-out instances (fixed seed) on which the rule and the baselines are compared
    tune_instances: int = 20  # another fixed set of instances on which the baselines' learning rates are grid-searched
    eval_steps: int = 0  # optimizee steps at evaluation; 0 = --steps
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))  # compared: adam, rmsprop, sgd, nag
    lr_grid: list[float] = field(default_factory=lambda: list(LR_GRID))  # learning rates tried for each baseline
    log_every: int = 10  # meta-steps between log.csv rows
    checkpoint_every: int = 100  # meta-steps between checkpoints (also written at the end)
    init_rule: str = ""  # start from the weights of this pretrained rule (e.g. mlp-quadratic) instead of a random init
    seed: int = 0  # seed of the rule's initialisation and of the training instances (evaluation sets are fixed)
    max_seconds: float = 0.0  # stop training early after this wall time (0 = no limit); resumable
    device: str = "cpu"  # cpu | cuda | cuda:N
    out: str = "runs/optim/default"  # run folder: config.json, log.csv, checkpoints/, metrics.json, eval.csv, eval.png
    eval_out: str = ""  # folder of the evaluation's metrics.json, eval.csv, eval.png ("" = --out)

    def __post_init__(self) -> None:
        for name, allowed in self.CHOICES.items():
            check_choice(name, getattr(self, name), allowed)
        for name in ("episodes", "steps", "unroll", "batch", "dim", "hidden", "layers", "minibatch", "eval_instances",
                     "tune_instances", "log_every", "checkpoint_every"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps % self.unroll:
            raise ValueError(f"--unroll {self.unroll} must divide --steps {self.steps} (an episode is whole unrolls)")
        if self.eval_steps < 0 or self.max_seconds < 0 or not self.meta_lr > 0 or self.meta_clip < 0 \
                or self.mlp_step_mult < 0:
            raise ValueError(f"eval_steps, max_seconds, meta_clip and mlp_step_mult must be >= 0 and meta_lr > 0, got "
                             f"{self.eval_steps}, {self.max_seconds}, {self.meta_clip}, {self.mlp_step_mult}, "
                             f"{self.meta_lr}")  # fmt: skip
        for b in self.baselines:
            check_choice("baseline", b, BASELINES)
        if self.mlp_step_mult and self.rule not in ("mlp", "tiny"):
            raise ValueError(f"--mlp-step-mult sets the mlp and tiny rules' step length; --rule {self.rule} has none. "
                             f"Drop the flag or use --rule mlp or tiny")  # fmt: skip
        if self.train_layers and (self.problem != "digits_mlp" or min(self.train_layers) < 1):
            raise ValueError(f"--train-layers {self.train_layers}: give hidden-layer counts >= 1, with --problem "
                             f"digits_mlp (got --problem {self.problem})")  # fmt: skip
        # settings of another optimizee than --problem would be silently ignored: refuse them
        defaults = {"dim": 10, "hidden": 20, "layers": 1, "activation": "sigmoid", "minibatch": 128}
        applies = {"quadratic": {"dim"}, "digits_mlp": {"hidden", "layers", "activation", "minibatch"},
                   "digits_conv": {"minibatch"}}  # fmt: skip
        unused = [f"--{k}" for k, v in defaults.items() if k not in applies[self.problem] and getattr(self, k) != v]
        if unused:
            raise ValueError(f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not a setting of --problem "
                             f"{self.problem}; drop {'it' if len(unused) == 1 else 'them'}")  # fmt: skip
        if not self.lr_grid or not all(lr > 0 for lr in self.lr_grid):
            raise ValueError(f"lr_grid must be a non-empty list of learning rates > 0, got {self.lr_grid}")

    @property
    def unrolls(self) -> int:
        """Meta-steps per episode."""
        return self.steps // self.unroll

    def resolved_eval_steps(self) -> int:
        return self.eval_steps or self.steps


def build_problem(cfg: MetaOptConfig, split: str = "train", steps: int | None = None) -> Problem:
    """The optimizee problem of ``cfg`` (``split``: the digits' train or test images; ``steps``: the horizon)."""
    check_choice("problem", cfg.problem, PROBLEMS)
    if cfg.problem == "quadratic":
        return Quadratic(cfg.dim)
    images, labels = digits(split)
    horizon = (steps or cfg.steps) + 1
    if cfg.problem == "digits_conv":
        conv = ConvClassifier(images.view(-1, 8, 8), labels, batch_size=cfg.minibatch, horizon=horizon)
        return conv.to(cfg.device)
    return MLPClassifier(images, labels, cfg.hidden, cfg.minibatch, horizon, cfg.activation,
                         layers=cfg.layers).to(cfg.device)  # fmt: skip


def build_rule(name: str, params: Params, **options: Any) -> nn.Module:
    """The rule ``RULES[name]`` for parameters like ``params`` (one instance's, unbatched); ``options`` go to its
    factory."""
    check_choice("rule", name, RULES)
    return RULES[name](params, **options)


def rule_options(cfg: MetaOptConfig) -> dict[str, Any]:
    """The options of ``cfg.rule`` set by the config (the ``--mlp-*`` flags for ``mlp`` and ``tiny``; none for the
    others)."""
    if cfg.rule == "tiny":
        return {"base": cfg.mlp_base, **({"step_mult": cfg.mlp_step_mult} if cfg.mlp_step_mult else {})}
    if cfg.rule != "mlp":
        return {}
    return {"base": cfg.mlp_base, "step_mult": cfg.mlp_step_mult or None}


class NonFiniteGradientError(TrainingDivergedError):
    """An optimizee gradient became NaN or inf during an unroll."""


class UnrollResult(NamedTuple):
    """What :func:`unroll` returns.

    Attributes:
        meta_loss (Tensor): scalar, differentiable in the rule's weights: ``mean_i sum_{t=1..length} f_i(theta_t)``
            (``meta_loss="sum"``) or ``mean_{i,t} log f_i(theta_t)`` (``"log"``).
        losses (Tensor): ``[length, n]`` the optimizee losses after each update.
        params (dict[str, Tensor]): the parameters after the unroll (``[n, ...]``, attached to the graph).
        state (Any): the rule's state after the unroll (attached to the graph).
    """

    meta_loss: Tensor
    losses: Tensor
    params: Params
    state: Any


def stacked(rule: Any) -> Any:
    """``rule`` as called on instances stacked along a leading dimension: a learned rule built for one model
    (``batch_dims=0``, e.g. from :func:`innerloop.optim.load_rule`) is returned as a shallow copy with ``batch_dims=1``
    (same weights), so each instance's per-tensor feature statistics stay its own; other rules are returned as is."""
    if isinstance(rule, nn.Module) and getattr(rule, "batch_dims", None) == 0:
        rule = copy.copy(rule)
        rule.batch_dims = 1
    return rule


def unroll(problem: Problem, rule: Any, instances: Instance, params: Params, state: Any, start: int, length: int,
           second_order: bool = False, meta_loss: str = "sum") -> UnrollResult:  # fmt: skip
    """Optimise a batch of instances with ``rule`` for ``length`` steps from step ``start``, keeping the graph.

    Args:
        problem (Problem): the optimizee problem.
        rule (UpdateRule): the update rule (new params = params + updates); its weights receive the meta-gradient.
        instances (dict[str, Tensor]): stacked instances ``[n, ...]``.
        params (dict[str, Tensor]): the parameters at step ``start``, ``[n, ...]`` (treated as constants: detach
            them at a truncation boundary, or pass them attached to backpropagate further).
        state (Any): the rule's state at step ``start``.
        start (int): the optimizee step of ``params`` (passed to the rule and to the problem's minibatch choice).
        length (int): optimizee steps.
        second_order (bool, Optional): keep the graph of the optimizee gradients (their dependence on the rule's
            weights); False detaches them. Default: False.
        meta_loss (str, Optional): ``"sum"``: the sum of the losses after each update, averaged over instances
            (Andrychowicz et al.); ``"log"``: the mean of their logarithms over steps and instances (Metz et al.:
            every decade of progress counts the same, so late steps at small losses are not drowned by the first
            ones). Default: ``"sum"``.

    Returns:
        UnrollResult: meta-loss, per-step losses, final parameters and rule state.

    Raises:
        NonFiniteGradientError: an optimizee gradient is NaN/inf (the step and the parameter are named).
    """
    rule = stacked(rule)
    names = list(params)
    params = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in params.items()}
    terms = []
    for t in range(start, start + length):
        loss = batch_loss(problem, instances, params, t)  # [n]
        if t > start:
            terms.append(loss)
        grads = torch.autograd.grad(loss.sum(), [params[k] for k in names], create_graph=second_order,
                                    retain_graph=True, allow_unused=True)  # fmt: skip
        grads_d = {k: torch.zeros_like(params[k]) if g is None else g for k, g in zip(names, grads)}
        for k, g in grads_d.items():
            if not bool(torch.isfinite(g).all()):
                raise NonFiniteGradientError(
                    f"the optimizee gradient of {k!r} is not finite at optimizee step {t}: the rule's updates "
                    f"diverged (lower its initial step size or --meta-lr) or the problem's loss is not finite there"
                )  # fmt: skip
        updates, state = rule.update(grads_d, state, params, t)
        params = {k: params[k] + updates[k] for k in names}
    terms.append(batch_loss(problem, instances, params, start + length))
    losses = torch.stack(terms)  # [length, n]
    check_choice("meta_loss", meta_loss, META_LOSSES)
    if meta_loss == "log":
        value = torch.log(losses.clamp_min(torch.finfo(losses.dtype).tiny)).mean()
    else:
        value = losses.sum(0).mean()
    return UnrollResult(value, losses, params, state)


def detach_tree(tree: Any) -> Any:
    """``tree`` (tensors in dicts, lists, tuples) with every tensor detached: the truncation boundary."""
    if isinstance(tree, Tensor):
        return tree.detach()
    if isinstance(tree, dict):
        return {k: detach_tree(v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a NamedTuple
        return type(tree)(*(detach_tree(v) for v in tree))
    if isinstance(tree, list | tuple):
        return type(tree)(detach_tree(v) for v in tree)
    return tree


class EpisodeState:
    """What an episode carries between unrolls, checkpointable: instances, parameters, rule state, the generator."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self.instances: Instance = {}
        self.params: Params = {}
        self.rule_state: Any = None

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "instances": self.instances,
                "params": detach_tree(self.params), "rule_state": detach_tree(self.rule_state)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())  # loaded with map_location=cfg.device: maybe on the GPU
        self.instances, self.params, self.rule_state = state["instances"], state["params"], state["rule_state"]


# Config keys that may change when a run resumes: they change how it is run or reported, not what it computes.
RESUME_FREE_KEYS = frozenset({"out", "eval_out", "log_every", "checkpoint_every", "max_seconds", "eval_instances",
                              "tune_instances", "eval_steps", "baselines", "lr_grid"})  # fmt: skip
LOG_FIELDS = ["meta_step", "episode", "loss", "final_loss", "train_seconds"]
# Config fields added after runs were first made, with the value that reproduces what those runs did.
ADDED_FIELDS = {"layers": 1, "activation": "sigmoid", "init_rule": "", "eval_out": "", "meta_loss": "sum",
                "meta_clip": 0.0, "mlp_base": "none", "mlp_step_mult": 0.0, "train_layers": []}  # fmt: skip
# a config saved before them, in today's form (those fields at their old behaviour), so older runs still resume
upgrade_config = fill_added_fields(ADDED_FIELDS)


class MetaOptTrainer(TrainLoop):
    """Meta-training on the run scaffold: one step is one unroll of a batch of instances and one Adam update.

    Args:
        cfg (MetaOptConfig): the run.
        rule (nn.Module): the learned rule (its weights are trained and checkpointed).
        problem (Problem, Optional): the optimizee problem. Default: None (:func:`build_problem` of ``cfg``).
        progress, fresh, extend, callbacks: as :class:`innerloop.runs.TrainLoop` / :class:`innerloop.runs.Run`.
        run (bool, Optional): use the run directory ``cfg.out``; False trains in memory. Default: True.
    """

    def __init__(self, cfg: MetaOptConfig, rule: nn.Module, problem: Problem | None = None, progress: bool = False,
                 fresh: bool = False, extend: bool = False, callbacks: Sequence[Callback] = (),
                 run: bool = True) -> None:  # fmt: skip
        weights = [p for p in rule.parameters() if p.requires_grad] if isinstance(rule, nn.Module) else []
        if not weights:
            raise ValueError(f"the rule {type(rule).__name__} has no learnable weights to meta-train; give an "
                             f"nn.Module rule with parameters (e.g. --rule sgd_lr)")  # fmt: skip
        self.cfg, self.rule = cfg, rule.to(cfg.device)
        if cfg.train_layers and problem is not None:
            raise ValueError("--train-layers builds its own optimizees; do not also give a problem")
        # the optimizees meta-trained on, one per episode in turn (one, unless --train-layers names several nets)
        self.problems = ([build_problem(dataclasses.replace(cfg, layers=n), "train") for n in cfg.train_layers]
                         or [problem if problem is not None else build_problem(cfg, "train")])  # fmt: skip
        self.problem = self.problems[0]
        self.weights = weights
        self.opt = torch.optim.Adam(weights, lr=cfg.meta_lr)
        self.episode = EpisodeState(torch.Generator().manual_seed(cfg.seed))
        scaffold = Run(cfg.out, dataclasses.asdict(cfg), steps_key="episodes", resume_free=RESUME_FREE_KEYS,
                       fresh=fresh, extend=extend, command="innerloop optim train",
                       upgrade=upgrade_config) if run else None  # fmt: skip
        super().__init__(
            rule, scaffold, cfg.episodes * cfg.unrolls, stateful={"optimizer": self.opt, "episode": self.episode},
            log_fields=LOG_FIELDS, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
            max_seconds=cfg.max_seconds, callbacks=callbacks, progress=progress, desc=f"{cfg.rule} on {cfg.problem}",
            verbose=progress, diverged_hint=f"Try a lower --meta-lr (now {cfg.meta_lr}).",
        )  # fmt: skip

    def start_episode(self) -> None:
        """Sample a new batch of instances, their initial parameters and the rule's initial state."""
        ep = self.episode
        ep.instances, ep.params = _sample(self.problem, self.cfg.batch, ep.generator, self.cfg.device)
        ep.rule_state = self.rule.init(ep.params)

    def train_step(self, step: int) -> dict[str, float]:
        u = step % self.cfg.unrolls
        self.problem = self.problems[(step // self.cfg.unrolls) % len(self.problems)]  # this episode's optimizee
        if u == 0:
            self.start_episode()
        ep = self.episode
        res = unroll(self.problem, self.rule, ep.instances, ep.params, ep.rule_state, u * self.cfg.unroll,
                     self.cfg.unroll, self.cfg.second_order, self.cfg.meta_loss)  # fmt: skip
        logs = {"loss": res.meta_loss.item(), "final_loss": res.losses[-1].mean().item(),
                "episode": step // self.cfg.unrolls + 1}  # fmt: skip
        check_finite(logs["loss"], "meta-loss", self, step)
        self.opt.zero_grad(set_to_none=True)
        res.meta_loss.backward()
        if self.cfg.meta_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.weights, self.cfg.meta_clip)
        self.opt.step()
        ep.params, ep.rule_state = detach_tree(res.params), detach_tree(res.state)
        return logs

    def resolved_config(self) -> dict[str, Any]:
        return {"rule_weights": sum(p.numel() for p in self.rule.parameters()), "meta_steps": self.total_steps}


def train_rule(cfg: MetaOptConfig, rule: nn.Module | None = None, problem: Problem | None = None,
               progress: bool = False, fresh: bool = False, extend: bool = False,
               callbacks: Sequence[Callback] = ()) -> dict[str, Any]:  # fmt: skip
    """Meta-train ``rule`` (default: ``RULES[cfg.rule]``) in ``cfg.out``, resuming from its newest intact checkpoint.

    Args:
        cfg (MetaOptConfig): the run.
        rule (nn.Module | None, Optional): the rule; None builds ``cfg.rule`` (seeded by ``cfg.seed``). Default: None.
        problem (Problem | None, Optional): a custom optimizee problem. Default: None (``cfg.problem``).
        progress (bool, Optional): progress bar and resume messages. Default: False.
        fresh, extend (bool, Optional): see :class:`innerloop.runs.Run`. Default: False.
        callbacks (Sequence[Callback], Optional): :class:`innerloop.runs.Callback` hooks. Default: ().

    Returns:
        dict: the training summary (steps, seconds, final meta-loss, stopped early).
    """
    if rule is None:
        rule = make_rule(cfg, problem if problem is not None else build_problem(cfg, "train"))
    trainer = MetaOptTrainer(cfg, rule, problem, progress, fresh, extend, callbacks)
    return trainer.fit(map_location=cfg.device)


def make_rule(cfg: MetaOptConfig, problem: Problem) -> nn.Module:
    """``RULES[cfg.rule]`` for one instance of ``problem``, initialised under ``cfg.seed``, or with the weights of
    the pretrained rule ``cfg.init_rule`` when one is named (it must be the same kind of rule, built the same way)."""
    example = problem.init_params(problem.sample(torch.Generator().manual_seed(cfg.seed)),
                                  torch.Generator().manual_seed(cfg.seed))  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        rule = build_rule(cfg.rule, example, **rule_options(cfg))
    if cfg.init_rule:
        from innerloop.optim.pretrained import load_rule

        start = load_rule(cfg.init_rule)
        if type(start) is not type(rule) or getattr(start, "config", None) != getattr(rule, "config", None):
            raise ValueError(
                f"--init-rule {cfg.init_rule} is a {type(start).__name__} with {getattr(start, 'config', None)}, "
                f"but --rule {cfg.rule} builds a {type(rule).__name__} with {getattr(rule, 'config', None)}; start "
                f"from a pretrained rule of the same kind (innerloop.optim.available_rules()), with the flags that "
                f"build it (e.g. --mlp-base none for a rule saved with base none)"
            )  # fmt: skip
        rule.load_state_dict(start.state_dict())
    return rule
