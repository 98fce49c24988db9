"""Gaussian MLP policy of MAML for RL (Finn et al. 2017 §5.3): ``a ~ N(mu(s), diag(sigma^2))``, ``sigma`` a learned
state-independent vector, used through parameter dicts so that an inner step can replace its weights functionally.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]

__all__ = ["GaussianMLPPolicy", "gaussian_kl", "gaussian_log_prob"]

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class GaussianMLPPolicy(nn.Module):
    """MLP mean ``mu(s)`` and a state-independent log standard deviation (the paper: 2 x 100 ReLU).

    Args:
        obs_size (int): observation size D.
        action_size (int): action size A.
        hidden_sizes (Sequence[int], Optional): widths of the hidden layers; ``()`` gives a linear policy.
            Default: ``(100, 100)``.
        activation (str, Optional): ``"relu"`` or ``"tanh"``. Default: ``"relu"``.
        init_std (float, Optional): initial standard deviation of every action dimension. Default: 1.0.

    ``forward(obs [..., D]) -> (mean [..., A], log_std [A])``.

    Examples:
        >>> pi = GaussianMLPPolicy(2, 2, hidden_sizes=(8,))
        >>> mean, log_std = pi(torch.zeros(5, 2))
        >>> mean.shape, log_std.shape
        (torch.Size([5, 2]), torch.Size([2]))
    """

    def __init__(self, obs_size: int, action_size: int, hidden_sizes: Sequence[int] = (100, 100),
                 activation: str = "relu", init_std: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(sorted(ACTIVATIONS))}")
        if obs_size < 1 or action_size < 1 or any(h < 1 for h in hidden_sizes) or not init_std > 0:
            raise ValueError(f"sizes must be >= 1 and init_std > 0, got obs_size={obs_size}, action_size="
                             f"{action_size}, hidden_sizes={tuple(hidden_sizes)}, init_std={init_std}")  # fmt: skip
        layers: list[nn.Module] = []
        width = obs_size
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, action_size))
        self.mean = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((action_size,), math.log(init_std)))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.mean(obs), self.log_std

    def forward_with(self, params: Params, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``forward`` with the weights ``params`` (a dict like ``dict(self.named_parameters())``)."""
        return functional_call(self, params, (obs,))

    def forward_tasks(self, params: Params, obs: Tensor) -> tuple[Tensor, Tensor]:
        """One parameter set per task: ``params`` stacked ``[M, ...]``, ``obs [M, ..., D]`` ->
        ``(mean [M, ..., A], log_std [M, A])``; batched matrix products, no per-task loop."""
        m = obs.shape[0]
        h = obs.reshape(m, -1, obs.shape[-1])  # [M, N, D]
        for i, layer in enumerate(self.mean):
            if isinstance(layer, nn.Linear):
                w, b = params[f"mean.{i}.weight"], params[f"mean.{i}.bias"]  # [M, out, in], [M, out]
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            else:
                h = layer(h)
        return h.reshape(*obs.shape[:-1], h.shape[-1]), params["log_std"]

def gaussian_log_prob(actions: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Log density of ``actions [..., A]`` under ``N(mean, diag(exp(log_std)^2))``, summed over A: ``[...]``."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """``KL(p || q)`` of diagonal Gaussians, summed over the last dim: ``[...]``.

    Examples:
        >>> m, s = torch.zeros(3, 2), torch.zeros(2)
        >>> gaussian_kl(m, s, m, s)
        tensor([0., 0., 0.])
    """
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5).sum(-1)
