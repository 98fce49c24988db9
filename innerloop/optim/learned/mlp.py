"""A per-parameter MLP learned optimizer in the style of Metz et al. (learned_optimization's ``mlp_lopt``, the
optimizer of "Understanding and correcting pathologies in the training of learned optimizers", 2019).

Every coordinate is described by a feature vector; one small MLP, shared by all coordinates, maps it to a direction
``d`` and a log-magnitude ``m``, and the update is ``d * exp(a * m) * b`` (``a = exp_mult``, ``b = step_mult``).
Two parametrisations of ``d`` (``base``):

- ``"none"``: ``d`` is the MLP's output alone, as in ``mlp_lopt`` (with ``a = b = 1e-3`` there). The untrained
  rule is then a random linear map of the features: its steps point nowhere in particular, ~1e-3 long, and the
  magnitude head can lengthen them only through ``exp(1e-3 * m)``. On the digits MLP (tuned Adam takes steps of
  ~0.03) meta-training this rule did not get off the ground in 20 minutes.
- ``"adam"`` (default): ``d = MLP(x) + s . x``, a learned linear skip from the features whose weight starts at
  ``-1`` on the RMS-normalised Adam-like column ``m_j / r`` (``beta_j`` the decay closest to 0.9) and 0 elsewhere,
  with the MLP's output layer started at 1/100 of PyTorch's default scale. The untrained rule is so a (per-tensor
  normalised) Adam step of length ~``b`` (default 1e-2) that already reduces the loss (where ``g^2 (1 - beta_v)`` is
  below ``eps``, i.e. ``|g| < ~3e-3`` with the defaults, ``r`` is ~constant and the step is per-tensor normalised
  momentum instead); meta-training learns the correction to it and, through ``s``, the step length (the residual
  design of learned optimizers built on a hand-designed one).

Features of coordinate ``i`` of tensor ``k`` at step ``t``:

- per coordinate: the gradient ``g``, the parameter ``theta``, momenta ``m_j = beta_j m_j + (1 - beta_j) g`` for
  each ``beta_j`` in ``momentum_decays``, the RMS ``r = sqrt(v + eps)`` with ``v = beta_v v + (1 - beta_v) g^2``, and
  the RMS-normalised ``g / r`` and ``m_j / r`` (Adam-like directions);
- each of these columns is divided by its root-mean-square over the tensor's coordinates (``x / sqrt(mean(x^2) +
  norm_eps)``), so the MLP sees O(1) inputs whatever the tensor's scale; a zero column stays exactly zero;
- then training-progress features, equal for all coordinates: ``tanh(t / s - 1)`` for each time scale ``s`` in
  ``timescales`` and, when ``horizon`` is given, ``2 * min(t / horizon, 1) - 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

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

__all__ = ["BASES", "MLPRule"]

BASES = ("adam", "none")  # MLPRule's parametrisations of the direction (see the module docstring)


class MLPRule(LearnedRule):
    """Per-parameter MLP learned optimizer with momentum, RMS and training-progress features.

    State (from :meth:`init`): ``{name: {"m": [numel, len(momentum_decays)], "v": [numel, 1]}}``, zeros, in the
    compute dtype (float32; float64 for float64 parameters); float16/bfloat16 parameters are computed in float32 and
    their updates cast back.

    Args:
        hidden_size (int): width of each hidden layer. Default: 32.
        num_layers (int): hidden layers (ReLU). Default: 2.
        momentum_decays (Sequence[float]): the momentum time scales. Default: (0.5, 0.9, 0.99).
        rms_decay (float): decay of the second-moment estimate. Default: 0.999.
        timescales (Sequence[float]): step counts of the tanh progress embedding.
            Default: (1, 3, 10, 30, 100, 300, 1000, 3000, 10000).
        horizon (int, Optional): the number of steps the optimizer is meant to run; adds the feature
            ``2 * min(step / horizon, 1) - 1``. Default: None.
        exp_mult (float): ``a`` in ``d * exp(a * m) * b``. Default: 1e-3.
        step_mult (float): ``b`` in ``d * exp(a * m) * b``. Default: None (1e-2 with ``base="adam"``, 1e-3 with
            ``"none"``).
        base (str): ``"adam"`` (the untrained rule is an Adam-like step, see above) or ``"none"`` (``mlp_lopt``'s
            plain MLP output; rules saved before this option existed are ``"none"``). Default: ``"adam"``.
        eps (float): added to ``v`` inside the square root. Default: 1e-8.
        norm_eps (float): added to the per-tensor mean square of each feature column. Default: 1e-12.
        check_finite (bool): raise on NaN/inf gradients (one device sync per update; skipped under ``vmap``).
            Default: True.
        batch_dims (int): 1 when every tensor is a stack of independent instances ``[n, ...]`` (meta-training over
            a batch of optimizees): the feature RMS is then taken per instance, over all but the leading dimension,
            so each instance gets exactly the update it would get alone. 0 (one model's tensors): over the whole
            tensor. It says how the rule is called, not what it learned, so it is left out of ``config``: a saved
            rule loads with 0, for one model. Default: 0.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> rule = MLPRule()
        >>> params = {"w": torch.randn(3, 2)}
        >>> state = rule.init(params)
        >>> updates, state = rule.update({"w": torch.ones(3, 2)}, state, params, step=0)
        >>> updates["w"].shape, state["w"]["m"].shape, rule.num_features
        (torch.Size([3, 2]), torch.Size([6, 3]), 19)
    """

    # constructor arguments added after rules were first saved, with the value that rebuilds those rules
    ADDED_KWARGS: ClassVar[dict[str, Any]] = {"base": "none"}

    def __init__(
        self,
        hidden_size: int = 32,
        num_layers: int = 2,
        momentum_decays: Sequence[float] = (0.5, 0.9, 0.99),
        rms_decay: float = 0.999,
        timescales: Sequence[float] = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000),
        horizon: int | None = None,
        exp_mult: float = 1e-3,
        step_mult: float | None = None,
        eps: float = 1e-8,
        norm_eps: float = 1e-12,
        check_finite: bool = True,
        batch_dims: int = 0,
        base: str = "adam",
    ) -> None:
        super().__init__()
        if base not in BASES:
            raise ValueError(f"MLPRule: unknown base {base!r}; choose from {', '.join(BASES)}")
        if step_mult is None:
            step_mult = 1e-2 if base == "adam" else 1e-3
        if batch_dims not in (0, 1):
            raise ValueError(f"MLPRule: batch_dims must be 0 or 1, got {batch_dims}")
        decays = [float(b) for b in momentum_decays]
        if any(not 0 <= b < 1 for b in [*decays, rms_decay]):
            raise ValueError(f"MLPRule: decays must be in [0, 1), got {decays} and rms_decay={rms_decay}")
        if any(s <= 0 for s in timescales):
            raise ValueError(f"MLPRule: timescales must be > 0, got {list(timescales)}")
        if horizon is not None and horizon < 1:
            raise ValueError(f"MLPRule: horizon must be >= 1 or None, got {horizon}")
        if hidden_size < 1 or num_layers < 0:
            raise ValueError(f"MLPRule: need hidden_size >= 1 and num_layers >= 0, got {hidden_size}, {num_layers}")
        self.config = {
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "momentum_decays": decays,
            "rms_decay": rms_decay,
            "timescales": [float(s) for s in timescales],
            "horizon": horizon,
            "exp_mult": exp_mult,
            "step_mult": step_mult,
            "eps": eps,
            "norm_eps": norm_eps,
            "check_finite": check_finite,
            "base": base,
        }
        self.decays, self.rms_decay = decays, rms_decay
        self.timescales, self.horizon = self.config["timescales"], horizon
        self.exp_mult, self.step_mult, self.eps, self.norm_eps = exp_mult, step_mult, eps, norm_eps
        self.check_finite, self.batch_dims = check_finite, batch_dims
        self.num_tensor_features = 4 + 2 * len(decays)  # g, theta, m_j, r, g / r, m_j / r
        self.num_features = self.num_tensor_features + len(self.timescales) + (horizon is not None)
        sizes = [self.num_features] + [hidden_size] * num_layers + [2]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.base = base
        if base == "adam":
            # the untrained rule: -(m_j / r) normalised, the Adam-like direction; the MLP adds a small correction
            j = min(range(len(decays)), key=lambda i: abs(decays[i] - 0.9)) if decays else None
            self.skip = nn.Linear(self.num_features, 2, bias=False)
            with torch.no_grad():
                self.skip.weight.zero_()
                if j is not None:
                    self.skip.weight[0, 4 + len(decays) + j] = -1.0
                else:  # no momentum: the RMS-normalised gradient g / r
                    self.skip.weight[0, 3] = -1.0
                self.layers[-1].weight.mul_(0.01)
                self.layers[-1].bias.mul_(0.01)

    def init(self, params: Params) -> dict[str, dict[str, Tensor]]:
        """Zero momenta ``[numel, len(momentum_decays)]`` and second moments ``[numel, 1]`` per parameter."""
        return moment_state("MLPRule", params, len(self.decays))

    def progress(self, step: int, like: Tensor) -> Tensor:
        """The training-progress features of ``step``, ``[len(timescales) (+1 with horizon)]``."""
        values = [math.tanh(step / s - 1.0) for s in self.timescales]
        if self.horizon is not None:
            values.append(2.0 * min(step / self.horizon, 1.0) - 1.0)
        return torch.tensor(values, dtype=like.dtype, device=like.device)

    def tensor_features(self, g: Tensor, theta: Tensor, m: Tensor, v: Tensor, groups: int = 1) -> Tensor:
        """Normalised per-coordinate features of one tensor (or of ``groups`` stacked instances of it).

        Args:
            g (Tensor): ``[n]`` gradient; theta (Tensor): ``[n]`` parameter; m (Tensor): ``[n, J]`` updated momenta;
            v (Tensor): ``[n, 1]`` updated second moment.
            groups (int): the ``n`` coordinates are ``groups`` consecutive equal blocks (instance-major), each
                normalised on its own. Default: 1.

        Returns:
            Tensor: ``[n, num_tensor_features]``, each column divided by its RMS over its block's coordinates.
        """
        r = torch.sqrt(v + self.eps)  # [n, 1]
        cols = torch.cat([g.unsqueeze(-1), theta.unsqueeze(-1), m, r, g.unsqueeze(-1) / r, m / r], dim=-1)
        blocks = cols.reshape(groups, -1, cols.shape[-1])  # [groups, n / groups, F]
        normed = blocks * torch.rsqrt((blocks * blocks).mean(dim=1, keepdim=True) + self.norm_eps)
        return normed.reshape(cols.shape)

    def update(
        self, grads: Params, state: dict[str, dict[str, Tensor]], params: Params, step: int
    ) -> tuple[Params, dict[str, dict[str, Tensor]]]:
        """One step for every coordinate at once: ``updates[k]`` has ``params[k]``'s shape and dtype.

        Args:
            grads (dict[str, Tensor]): gradients, same names and shapes as the adapted ``params``.
            state (dict): from :meth:`init` or the previous update (entries for other names pass through).
            params (dict[str, Tensor]): the current parameters (a feature).
            step (int): the step counter from 0 (the progress features).

        Returns:
            (dict[str, Tensor], dict): the updates (new parameters are ``params + updates``) and the new state.
        """
        check_update_inputs("MLPRule", grads, state, params)
        if self.check_finite:
            check_finite("MLPRule", grads)
        if not grads:
            return {}, state
        names = list(grads)
        dtype = compute_dtype(grads)
        decays = torch.tensor(self.decays, dtype=dtype, device=grads[names[0]].device)  # [J]
        new_state, feats = dict(state), []
        for k in names:
            g, theta = grads[k].reshape(-1).to(dtype), params[k].reshape(-1).to(dtype)  # [n]
            m_old, v_old = state[k]["m"].to(dtype), state[k]["v"].to(dtype)
            if m_old.shape != (g.numel(), len(self.decays)) or v_old.shape != (g.numel(), 1):
                raise ValueError(
                    f"MLPRule: state of {k!r} has shapes {tuple(m_old.shape)}, {tuple(v_old.shape)} but the parameter "
                    f"has {g.numel()} coordinates; call rule.init on the parameters you update"
                )
            m = decays * m_old + (1 - decays) * g.unsqueeze(-1)  # [n, J]
            v = self.rms_decay * v_old + (1 - self.rms_decay) * (g * g).unsqueeze(-1)  # [n, 1]
            new_state[k] = {"m": m, "v": v}
            feats.append(self.tensor_features(g, theta, m, v, self._groups(k, grads[k])))
        x = torch.cat(feats)  # [P, num_tensor_features]
        prog = self.progress(step, x).expand(x.shape[0], -1)  # [P, len(timescales) (+1)]
        x = torch.cat([x, prog], dim=-1)  # [P, num_features]
        skip = F.linear(x, cast_weight(self.skip.weight, x)) if self.base == "adam" else None  # [P, 2]
        for i, layer in enumerate(self.layers):
            x = F.linear(x, cast_weight(layer.weight, x), cast_weight(layer.bias, x))
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        if skip is not None:
            x = x + skip
        direction, magnitude = x[:, 0], x[:, 1]  # [P]
        out = direction * torch.exp(magnitude * self.exp_mult) * self.step_mult
        sizes = [grads[k].numel() for k in names]
        updates = {k: u.reshape(grads[k].shape).to(params[k].dtype) for k, u in zip(names, split(out, sizes))}
        return updates, new_state

    def extra_repr(self) -> str:
        return (f"features={self.num_features}, base={self.base}, exp_mult={self.exp_mult}, "
                f"step_mult={self.step_mult}")
