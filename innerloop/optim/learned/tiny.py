"""A tiny per-coordinate MLP learned optimizer, cheap enough to cost about an Adam step (the design studied by Metz
et al. 2022, "Practical tradeoffs between memory, compute, and performance in learned optimizers": small MLPs over
a few per-coordinate features).

Per step and coordinate ``i`` of tensor ``k`` (state: momenta ``m_j``, one per decay ``beta_j``, and ``v``)::

    m_j = beta_j m_j + (1 - beta_j) g        v = beta_v v + (1 - beta_v) g^2        r = sqrt(v + eps)
    x = [g, m_1..m_J, r, g / r, m_1 / r .. m_J / r]         # 3 + 2J features (7 with the default J = 2)
    x = x / sqrt(mean_k(x^2) + norm_eps)                    # each column by its RMS over the tensor's coordinates
    h = relu(W1 [x, progress] + b1)                         # hidden_size units (default 4)
    (d, mag) = W2 h + b2 + S x                              # S: the linear skip (base "adam")
    update = d * exp(exp_mult * mag) * step_mult

``progress`` holds ``tanh(t / s - 1)`` for each time scale ``s`` (equal for every coordinate, so it only moves the
hidden biases). With ``base="adam"`` (default) the skip ``S`` starts at ``-1`` on the normalised ``m_j / r`` column
whose decay is closest to 0.9 and the MLP's output layer at 1/100 of PyTorch's default scale: the untrained rule is a
per-tensor normalised Adam-like step of RMS length ``step_mult`` that already reduces the loss, and meta-training
learns the correction (as :class:`~innerloop.optim.MLPRule`'s ``base="adam"``). ``base="none"`` drops the skip.

Cost per coordinate: ~50 multiply-adds, one ``exp``, two ``sqrt``, 3 floats of state (``J + 1``). The no-autograd
path (:meth:`TinyRule.inference_update`, and :meth:`TinyRule.inference_apply_`, which
:class:`~innerloop.optim.LearnedOptimizer` runs) is a small C kernel making two passes over each tensor (pass 1: new
state and the feature sums of squares; pass 2: features, MLP, update written into the parameter), see
:mod:`innerloop.optim.learned._tiny_fast`. :meth:`TinyRule.update` is the differentiable reference used in
meta-training; the two agree up to rounding (``tests/optim/test_tiny.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from innerloop.optim.learned._common import (
    LearnedRule,
    Params,
    cast_weight,
    check_finite,
    check_update_inputs,
    compute_dtype,
    moment_state,
    split,
)

__all__ = ["TINY_BASES", "TinyRule"]

TINY_BASES = ("adam", "none")
MAX_MOMENTA = 3  # the C kernel's limit


class TinyRule(LearnedRule):
    """Per-coordinate tiny-MLP learned optimizer: a few normalised features, ``hidden_size`` ReLU units, an Adam-like
    linear skip; about as cheap as an Adam step with its fast path.

    State (from :meth:`init`): ``{name: {"m": [numel, len(momentum_decays)], "v": [numel, 1]}}``, zeros, in the
    compute dtype (float32; float64 for float64 parameters); float16/bfloat16 parameters are computed in float32 and
    their updates cast back.

    Args:
        hidden_size (int): hidden ReLU units. Default: 4.
        momentum_decays (Sequence[float]): 1 to 3 momentum decays. Default: (0.9, 0.99).
        rms_decay (float): decay of the second-moment estimate. Default: 0.999.
        timescales (Sequence[float]): step counts of the tanh progress features. Default: (10, 100, 1000).
        exp_mult (float): ``a`` in ``d * exp(a * mag) * b``. Default: 1.0.
        step_mult (float): ``b``, the RMS step length of the untrained ``base="adam"`` rule. Default: 1e-2.
        base (str): ``"adam"`` (learned linear skip started as the normalised Adam-like direction) or ``"none"``.
            Default: ``"adam"``.
        eps (float): added to ``v`` inside the square root. Default: 1e-8.
        norm_eps (float): added to the per-tensor mean square of each feature column. Default: 1e-12.
        check_finite (bool): raise on NaN/inf gradients (one device sync per update; skipped under ``vmap``).
            Default: True.
        batch_dims (int): 1 when every tensor is a stack of independent instances ``[n, ...]`` (meta-training):
            the feature RMS is then per instance. Not part of ``config`` (a saved rule loads with 0). Default: 0.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> rule = TinyRule()
        >>> params = {"w": torch.randn(3, 2)}
        >>> state = rule.init(params)
        >>> updates, state = rule.update({"w": torch.ones(3, 2)}, state, params, step=0)
        >>> updates["w"].shape, state["w"]["m"].shape, rule.num_features
        (torch.Size([3, 2]), torch.Size([6, 2]), 7)
    """

    def __init__(
        self,
        hidden_size: int = 4,
        momentum_decays: Sequence[float] = (0.9, 0.99),
        rms_decay: float = 0.999,
        timescales: Sequence[float] = (10, 100, 1000),
        exp_mult: float = 1.0,
        step_mult: float = 1e-2,
        base: str = "adam",
        eps: float = 1e-8,
        norm_eps: float = 1e-12,
        check_finite: bool = True,
        batch_dims: int = 0,
    ) -> None:
        super().__init__()
        if base not in TINY_BASES:
            raise ValueError(f"TinyRule: unknown base {base!r}; choose from {', '.join(TINY_BASES)}")
        decays = [float(b) for b in momentum_decays]
        if not 1 <= len(decays) <= MAX_MOMENTA:
            raise ValueError(f"TinyRule: give 1 to {MAX_MOMENTA} momentum decays, got {decays}")
        if any(not 0 <= b < 1 for b in [*decays, rms_decay]):
            raise ValueError(f"TinyRule: decays must be in [0, 1), got {decays} and rms_decay={rms_decay}")
        if any(s <= 0 for s in timescales):
            raise ValueError(f"TinyRule: timescales must be > 0, got {list(timescales)}")
        if hidden_size < 1:
            raise ValueError(f"TinyRule: hidden_size must be >= 1, got {hidden_size}")
        if not step_mult > 0 or not eps > 0 or norm_eps < 0:
            raise ValueError(f"TinyRule: need step_mult > 0, eps > 0, norm_eps >= 0; got {step_mult}, {eps}, "
                             f"{norm_eps}")  # fmt: skip
        if batch_dims not in (0, 1):
            raise ValueError(f"TinyRule: batch_dims must be 0 or 1, got {batch_dims}")
        self.config = {
            "hidden_size": hidden_size,
            "momentum_decays": decays,
            "rms_decay": rms_decay,
            "timescales": [float(s) for s in timescales],
            "exp_mult": exp_mult,
            "step_mult": step_mult,
            "base": base,
            "eps": eps,
            "norm_eps": norm_eps,
            "check_finite": check_finite,
        }
        self.decays, self.rms_decay, self.timescales = decays, rms_decay, self.config["timescales"]
        self.exp_mult, self.step_mult, self.base = exp_mult, step_mult, base
        self.eps, self.norm_eps = eps, norm_eps
        self.check_finite, self.batch_dims = check_finite, batch_dims
        self.num_features = 3 + 2 * len(decays)  # per coordinate; the progress features come on top
        self.hidden = nn.Linear(self.num_features + len(self.timescales), hidden_size)
        self.out = nn.Linear(hidden_size, 2)
        self.skip = nn.Linear(self.num_features, 2, bias=False)
        with torch.no_grad():
            self.skip.weight.zero_()
            if base == "adam":
                j = min(range(len(decays)), key=lambda i: abs(decays[i] - 0.9))
                self.skip.weight[0, 3 + len(decays) + j] = -1.0  # -(m_j / r), normalised
                self.out.weight.mul_(0.01)
                self.out.bias.mul_(0.01)
        if base == "none":
            self.skip.weight.requires_grad_(False)

    def init(self, params: Params) -> dict[str, dict[str, Tensor]]:
        """Zero momenta ``[numel, len(momentum_decays)]`` and second moments ``[numel, 1]`` per parameter."""
        return moment_state("TinyRule", params, len(self.decays))

    def progress(self, step: int, like: Tensor) -> Tensor:
        """``tanh(step / s - 1)`` for each time scale, ``[len(timescales)]``."""
        values = [math.tanh(step / s - 1.0) for s in self.timescales]
        return torch.tensor(values, dtype=like.dtype, device=like.device)

    def features(self, g: Tensor, m: Tensor, v: Tensor, groups: int = 1) -> Tensor:
        """Normalised features ``[n, num_features]`` of ``n`` coordinates (``groups`` equal blocks normalised apart).

        Args:
            g (Tensor): ``[n]`` gradient; m (Tensor): ``[n, J]`` updated momenta; v (Tensor): ``[n, 1]`` updated
                second moment.
            groups (int): the coordinates are ``groups`` consecutive equal blocks (instances). Default: 1.
        """
        r = torch.sqrt(v + self.eps)  # [n, 1]
        cols = torch.cat([g.unsqueeze(-1), m, r, g.unsqueeze(-1) / r, m / r], dim=-1)
        blocks = cols.reshape(groups, -1, cols.shape[-1])
        normed = blocks * torch.rsqrt((blocks * blocks).mean(dim=1, keepdim=True) + self.norm_eps)
        return normed.reshape(cols.shape)

    def update(
        self, grads: Params, state: dict[str, dict[str, Tensor]], params: Params, step: int
    ) -> tuple[Params, dict[str, dict[str, Tensor]]]:
        """One differentiable step for every coordinate (the reference of the fast paths).

        Args:
            grads (dict[str, Tensor]): gradients, same names and shapes as the adapted ``params``.
            state (dict): from :meth:`init` or the previous update (entries for other names pass through).
            params (dict[str, Tensor]): the current parameters (only their shapes and dtypes are used).
            step (int): the step counter from 0 (the progress features).

        Returns:
            (dict[str, Tensor], dict): the updates (new parameters are ``params + updates``) and the new state.
        """
        self._check(grads, state, params)
        if not grads:
            return {}, state
        names = list(grads)
        dtype = compute_dtype(grads)
        decays = torch.tensor(self.decays, dtype=dtype, device=grads[names[0]].device)  # [J]
        new_state, feats = dict(state), []
        for k in names:
            g = grads[k].reshape(-1).to(dtype)  # [n]
            m_old, v_old = state[k]["m"].to(dtype), state[k]["v"].to(dtype)
            m = decays * m_old + (1 - decays) * g.unsqueeze(-1)  # [n, J]
            v = self.rms_decay * v_old + (1 - self.rms_decay) * (g * g).unsqueeze(-1)  # [n, 1]
            new_state[k] = {"m": m, "v": v}
            feats.append(self.features(g, m, v, self._groups(k, grads[k])))
        x = torch.cat(feats)  # [P, num_features]
        prog = self.progress(step, x).expand(x.shape[0], -1)  # [P, len(timescales)]
        h = torch.relu(F.linear(torch.cat([x, prog], dim=-1), cast_weight(self.hidden.weight, x),
                                cast_weight(self.hidden.bias, x)))  # fmt: skip
        y = F.linear(h, cast_weight(self.out.weight, x), cast_weight(self.out.bias, x))  # [P, 2]
        if self.base == "adam":
            y = y + F.linear(x, cast_weight(self.skip.weight, x))
        u = y[:, 0] * torch.exp(y[:, 1] * self.exp_mult) * self.step_mult  # [P]
        sizes = [grads[k].numel() for k in names]
        updates = {k: t.reshape(grads[k].shape).to(params[k].dtype) for k, t in zip(names, split(u, sizes))}
        return updates, new_state

    @torch.no_grad()
    def inference_update(
        self, grads: Params, state: dict[str, dict[str, Tensor]], params: Params, step: int
    ) -> tuple[Params, dict[str, dict[str, Tensor]]]:
        """:meth:`update` without autograd, through the C kernel where it applies (CPU, float32/float64, one model's
        tensors); the inputs are not modified. Same arguments, results and numbers (up to rounding) as :meth:`update`.
        """
        from innerloop.optim.learned._tiny_fast import tiny_step

        self._check(grads, state, params, finite=False)  # tiny_step checks the gradients itself
        new_state = dict(state)
        new_state.update({k: {f: t.clone() for f, t in state[k].items()} for k in grads})
        updates = tiny_step(self, grads, new_state, params, step, scale=None)
        return updates, new_state

    @torch.no_grad()
    def inference_apply_(
        self, grads: Params, state: dict[str, dict[str, Tensor]], params: Params, step: int, scale: float = 1.0
    ) -> dict[str, dict[str, Tensor]]:
        """In place: ``params[k] += scale * update`` and the state advanced, in one kernel call per tensor (what
        :class:`~innerloop.optim.LearnedOptimizer` runs). Returns the state (the same tensors, updated)."""
        from innerloop.optim.learned._tiny_fast import tiny_step

        self._check(grads, state, params, finite=False)
        tiny_step(self, grads, state, params, step, scale=scale)
        return state

    def _check(self, grads: Params, state: dict[str, dict[str, Tensor]], params: Params, finite: bool = True) -> None:
        check_update_inputs("TinyRule", grads, state, params)
        if finite and self.check_finite:
            check_finite("TinyRule", grads)
        for k in grads:
            n, j = grads[k].numel(), len(self.decays)
            m, v = state[k].get("m"), state[k].get("v")
            if m is None or v is None or m.shape != (n, j) or v.shape != (n, 1):
                shapes = [tuple(t.shape) if t is not None else None for t in (m, v)]
                raise ValueError(
                    f"TinyRule: state of {k!r} has m, v of shapes {shapes} but the parameter has {n} coordinates "
                    f"(expected ({n}, {j}) and ({n}, 1)); call rule.init on the parameters you update"
                )

    def extra_repr(self) -> str:
        return (f"features={self.num_features}, hidden={self.hidden.out_features}, base={self.base}, "
                f"exp_mult={self.exp_mult}, step_mult={self.step_mult}")

    def kernel_weights(self, step: int, dtype: torch.dtype) -> dict[str, Any]:
        """The weights as the C kernel takes them, in ``dtype`` on the CPU: ``w1 [H, F]``, ``b1 [H]`` (with the
        progress features of ``step`` folded in), ``w2 [2, H]``, ``b2 [2]``, ``skip [2, F]`` (zeros for base none)."""
        w = self.hidden.weight.detach().to("cpu", dtype)
        f = self.num_features
        prog = self.progress(step, w)
        skip = self.skip.weight.detach().to("cpu", dtype)
        if self.base != "adam":
            skip = torch.zeros_like(skip)
        return {
            "w1": w[:, :f].contiguous(),
            "b1": (self.hidden.bias.detach().to("cpu", dtype) + w[:, f:] @ prog).contiguous(),
            "w2": self.out.weight.detach().to("cpu", dtype).contiguous(),
            "b2": self.out.bias.detach().to("cpu", dtype).contiguous(),
            "skip": skip.contiguous(),
        }
