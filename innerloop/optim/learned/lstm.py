"""The coordinatewise LSTM optimizer of Andrychowicz et al. 2016 ("Learning to learn by gradient descent by gradient
descent") as an update rule on the ``(init, update)`` seam.

One small LSTM (default 2 layers x 20 units) is shared by every coordinate of every adapted tensor; each coordinate
keeps its own hidden and cell state. Per step and coordinate ``i``::

    x_i = preprocess(g_i)                       # [2] for LogAndSign, [1] for "none"
    (h_i, c_i) = LSTM(x_i, (h_i, c_i))          # per layer l: h, c in R^20
    update_i = scale * (w_out . h_i[last] + b_out)   # scale = 0.01; new theta_i = theta_i + update_i

All coordinates run as one batch ``[P, features]`` (``P`` = total coordinates), so there is no Python loop over
coordinates, and the computation is differentiable (no in-place ops, no ``.item()``): in an unrolled optimisation
the meta-gradient reaches every LSTM weight, and the rule runs inside ``torch.func.grad`` and ``vmap``
(MAML's vectorised inner loop).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from innerloop.optim.learned._common import (
    LearnedRule,
    Params,
    cast_weight,
    check_finite,
    check_params,
    check_update_inputs,
    compute_dtype,
    flatten,
    split,
)
from innerloop.optim.learned._lstm_fast import lstm_step_inference

__all__ = ["PREPROCESS", "LSTMRule", "log_and_sign"]

PREPROCESS = ("log_and_sign", "none")


def log_and_sign(g: Tensor, p: float = 10.0) -> Tensor:
    """Gradient preprocessing of Andrychowicz et al. 2016, Appendix A: two features per coordinate.

    ``(log(|g|) / p, sign(g))`` if ``|g| >= e^-p``, else ``(-1, e^p * g)``. Written as
    ``(log(max(|g|, e^-p)) / p, clamp(e^p * g, -1, 1))``, which is the same function with no ``eps`` (the released
    TensorFlow code adds machine epsilon inside the log, which moves the values near the threshold slightly), and
    finite at ``g = 0``. Its derivative (used by second-order meta-training) is the paper's, piece by piece:
    ``(1 / (p g), 0)`` above the threshold, ``(0, e^p)`` below it, ``g = 0`` included.

    Args:
        g (Tensor): gradients, any shape ``[*]``.
        p (float): the threshold exponent; the paper uses 10, the released code 5. Default: 10.

    Returns:
        Tensor: ``[*, 2]``, the log feature then the sign feature.

    Examples:
        >>> log_and_sign(torch.tensor([1.0, 0.0, -1e-6]), p=10.0)
        tensor([[ 0.0000,  1.0000],
                [-1.0000,  0.0000],
                [-1.0000, -0.0220]])
    """
    if p <= 0:
        raise ValueError(f"log_and_sign: p must be > 0, got {p}")
    log = torch.clamp(g.abs(), min=math.exp(-p)).log() / p
    sign = torch.clamp(g * math.exp(p), -1.0, 1.0)
    return torch.stack([log, sign], dim=-1)


def _lstm_cell(x: Tensor, h: Tensor, c: Tensor, cell: nn.LSTMCell) -> tuple[Tensor, Tensor]:
    """One LSTM step for a batch ``x [P, in], h, c [P, H]``, torch's gate order (input, forget, cell, output)."""
    gates = F.linear(x, cast_weight(cell.weight_ih, x), cast_weight(cell.bias_ih, x)) + F.linear(
        h, cast_weight(cell.weight_hh, x), cast_weight(cell.bias_hh, x)
    )  # [P, 4H]
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class LSTMRule(LearnedRule):
    """Coordinatewise LSTM learned optimizer (Andrychowicz et al. 2016) over parameter dicts.

    State (from :meth:`init`): ``{name: {"h": [numel, num_layers, hidden_size], "c": same}}``, zeros, in the compute
    dtype (float32; float64 for float64 parameters). float16/bfloat16 parameters are computed in float32 and their
    updates cast back to the parameter's dtype.

    Args:
        hidden_size (int): units per LSTM layer. Default: 20 (the paper's).
        num_layers (int): LSTM layers. Default: 2.
        preprocess (str): ``"log_and_sign"`` (:func:`log_and_sign`, 2 input features) or ``"none"`` (the raw
            gradient, 1 feature). Default: "log_and_sign".
        p (float): the LogAndSign exponent. The paper uses p = 10 "in all experiments"; the released code
            (deepmind/learning-to-learn) defaults to k = 5. Default: 10.
        scale (float): the update is ``scale`` times the linear output. Default: 0.01 (the released code's
            ``scale``; the paper's text gives no value that has been checked).
        forget_bias (float): added to the forget-gate bias at initialisation, as Sonnet's LSTM does. Default: 1.0.
        check_finite (bool): raise on NaN/inf gradients (one device sync per update; skipped under ``vmap``).
            Default: True.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> rule = LSTMRule()
        >>> params = {"w": torch.randn(3, 2), "b": torch.zeros(2)}
        >>> state = rule.init(params)
        >>> state["w"]["h"].shape
        torch.Size([6, 2, 20])
        >>> updates, state = rule.update({k: torch.ones_like(v) for k, v in params.items()}, state, params, step=0)
        >>> updates["w"].shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        hidden_size: int = 20,
        num_layers: int = 2,
        preprocess: str = "log_and_sign",
        p: float = 10.0,
        scale: float = 0.01,
        forget_bias: float = 1.0,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if preprocess not in PREPROCESS:
            raise ValueError(f"LSTMRule: unknown preprocess {preprocess!r}; choose from {', '.join(PREPROCESS)}")
        if hidden_size < 1 or num_layers < 1:
            raise ValueError(f"LSTMRule: hidden_size and num_layers must be >= 1, got {hidden_size}, {num_layers}")
        if p <= 0:
            raise ValueError(f"LSTMRule: p must be > 0, got {p}")
        self.config = {
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "preprocess": preprocess,
            "p": p,
            "scale": scale,
            "forget_bias": forget_bias,
            "check_finite": check_finite,
        }
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.preprocess, self.p, self.scale, self.check_finite = preprocess, p, scale, check_finite
        n_in = 2 if preprocess == "log_and_sign" else 1
        self.cells = nn.ModuleList(nn.LSTMCell(n_in if i == 0 else hidden_size, hidden_size) for i in range(num_layers))
        self.out = nn.Linear(hidden_size, 1)
        with torch.no_grad():
            for cell in self.cells:
                cell.bias_ih[hidden_size : 2 * hidden_size] += forget_bias

    def features(self, g: Tensor) -> Tensor:
        """Preprocessed gradients: ``g [P] -> [P, 2]`` (log_and_sign) or ``[P, 1]`` (none)."""
        return log_and_sign(g, self.p) if self.preprocess == "log_and_sign" else g.unsqueeze(-1)

    def init(self, params: Params) -> dict[str, dict[str, Tensor]]:
        """Zero hidden and cell states, ``[numel, num_layers, hidden_size]`` per parameter."""
        check_params("LSTMRule", params)
        def zeros(v: Tensor) -> Tensor:
            dtype = compute_dtype({"": v})
            return torch.zeros(v.numel(), self.num_layers, self.hidden_size, dtype=dtype, device=v.device)

        return {k: {"h": zeros(v), "c": zeros(v)} for k, v in params.items()}

    def update(
        self, grads: Params, state: dict[str, dict[str, Tensor]], params: Params, step: int
    ) -> tuple[Params, dict[str, dict[str, Tensor]]]:
        """One step for every coordinate at once: ``updates[k]`` has ``params[k]``'s shape and dtype.

        Args:
            grads (dict[str, Tensor]): gradients, same names and shapes as the adapted ``params``.
            state (dict): from :meth:`init` or the previous update (entries for other names pass through).
            params (dict[str, Tensor]): the current parameters (only their shapes and dtypes are used).
            step (int): the step counter (unused: the LSTM's state carries the history).

        Returns:
            (dict[str, Tensor], dict): the updates (new parameters are ``params + updates``) and the new state.
        """
        if not self._check(grads, state, params):
            return {}, state
        names = list(grads)
        dtype = compute_dtype(grads)
        sizes = [grads[k].numel() for k in names]
        x = self.features(flatten([grads[k] for k in names], dtype))  # [P, F]
        h = torch.cat([state[k]["h"].to(dtype) for k in names])  # [P, L, H]
        c = torch.cat([state[k]["c"].to(dtype) for k in names])  # [P, L, H]
        hs, cs = [], []
        for layer, cell in enumerate(self.cells):
            x, c_l = _lstm_cell(x, h[:, layer], c[:, layer], cell)
            hs.append(x)
            cs.append(c_l)
        out = F.linear(x, cast_weight(self.out.weight, x), cast_weight(self.out.bias, x)).squeeze(-1)  # [P]
        out = out * self.scale
        new_h, new_c = torch.stack(hs, dim=1), torch.stack(cs, dim=1)  # [P, L, H]
        updates = {k: u.reshape(grads[k].shape).to(params[k].dtype) for k, u in zip(names, split(out, sizes))}
        new_state = dict(state)
        for k, hk, ck in zip(names, split(new_h, sizes), split(new_c, sizes)):
            new_state[k] = {"h": hk, "c": ck}
        return updates, new_state

    def inference_update(
        self, grads: Params, state: dict[str, dict[str, Tensor]], params: Params, step: int
    ) -> tuple[Params, dict[str, dict[str, Tensor]]]:
        """:meth:`update` without autograd, faster (what :class:`innerloop.optim.LearnedOptimizer` runs).

        Fused gate matmuls, chunked over coordinates, in place (see :mod:`innerloop.optim.learned._lstm_fast`); the
        same numbers as :meth:`update` up to rounding (sums regrouped). Nothing is differentiable: meta-train with
        :meth:`update`. Arguments and results as :meth:`update`.
        """
        if not self._check(grads, state, params):
            return {}, state
        return lstm_step_inference(self, grads, state, params)

    def _check(self, grads: Params, state: dict[str, dict[str, Tensor]], params: Params) -> bool:
        """Validate the inputs of an update; False when there is nothing to update."""
        check_update_inputs("LSTMRule", grads, state, params)
        if self.check_finite:
            check_finite("LSTMRule", grads)
        for k in grads:
            if state[k]["h"].shape[0] != grads[k].numel():
                raise ValueError(
                    f"LSTMRule: state of {k!r} holds {state[k]['h'].shape[0]} coordinates but the parameter has "
                    f"{grads[k].numel()}; call rule.init on the parameters you update"
                )
        return bool(grads)

    def extra_repr(self) -> str:
        return f"preprocess={self.preprocess!r}, p={self.p}, scale={self.scale}"
