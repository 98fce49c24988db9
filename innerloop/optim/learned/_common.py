"""Input checks and the flatten/split plumbing shared by the learned update rules.

A learned rule sees every coordinate of every adapted tensor as one row of a batch: :func:`flatten` turns a dict of
tensors into one ``[P]`` vector (``P`` = total number of coordinates) in the compute dtype, :func:`split` turns a
``[P, ...]`` result back into per-parameter tensors. Both are plain ``reshape``/``cat``/``split``, so they work
under autograd, ``torch.func.grad`` and ``vmap``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]

# A rule computes in float32, or float64 when an adapted parameter is float64; float16/bfloat16 parameters are
# computed in float32 and their updates cast back.
_MIN_DTYPE = torch.float32


def compute_dtype(tensors: Mapping[str, Tensor]) -> torch.dtype:
    """float64 if any tensor is float64, else float32."""
    dtype = _MIN_DTYPE
    for t in tensors.values():
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def check_params(who: str, params: Mapping[str, Tensor]) -> None:
    """Raise ``TypeError`` naming the first parameter that is not a real floating-point tensor."""
    for k, p in params.items():
        if not isinstance(p, Tensor) or not p.is_floating_point():
            kind = p.dtype if isinstance(p, Tensor) else type(p).__name__
            raise TypeError(
                f"{who}: parameter {k!r} has dtype {kind}; learned rules update floating-point tensors only "
                f"(float16, bfloat16, float32, float64). Leave integer, bool and complex tensors out of the adapted "
                f"parameters."
            )


def check_update_inputs(who: str, grads: Mapping[str, Tensor], state: Mapping[str, object], params: Params) -> None:
    """Check that ``grads``, ``params`` and ``state`` line up: same names, same shapes, floating dtypes."""
    if not isinstance(state, Mapping):
        raise TypeError(
            f"{who}: state must be the dict returned by rule.init(params), got {type(state).__name__}; call "
            f"state = rule.init(params) once before the first update"
        )
    for k, g in grads.items():
        if k not in params:
            raise KeyError(f"{who}: gradient for {k!r} but no parameter of that name; params has {sorted(params)}")
        if k not in state:
            raise KeyError(
                f"{who}: no state for parameter {k!r} (state has {sorted(state)}); call rule.init on the same "
                f"parameters that you update"
            )
        if not isinstance(g, Tensor) or not g.is_floating_point():
            kind = g.dtype if isinstance(g, Tensor) else type(g).__name__
            raise TypeError(f"{who}: gradient of parameter {k!r} has dtype {kind}; it must be floating point")
        if g.shape != params[k].shape:
            raise ValueError(
                f"{who}: gradient of parameter {k!r} has shape {tuple(g.shape)} but the parameter has "
                f"{tuple(params[k].shape)}"
            )
    check_params(who, {k: params[k] for k in grads})
    devices = {str(g.device) for g in grads.values()}
    if len(devices) > 1:
        raise ValueError(
            f"{who}: gradients on several devices ({', '.join(sorted(devices))}); call the rule once per device "
            f"(LearnedOptimizer does this for you)"
        )


def check_finite(who: str, grads: Mapping[str, Tensor]) -> None:
    """Raise ``ValueError`` naming the parameters whose gradient has NaN or inf entries.

    One device sync for all tensors. Under ``vmap`` a tensor cannot be turned into a Python bool: the check is then
    skipped (the caller's eager path, e.g. :class:`innerloop.optim.LearnedOptimizer`, still runs it).
    """
    if not grads:
        return
    flags = torch.stack([torch.isfinite(g).all() for g in grads.values()])
    try:
        ok = bool(flags.all())
    except RuntimeError:  # vmap: data-dependent control flow is not allowed; nothing to check here
        return
    if not ok:
        bad = [k for k, f in zip(grads, flags.tolist()) if not f]
        raise ValueError(
            f"{who}: the gradient of {bad} has NaN or inf entries; a learned rule cannot turn them into an update. "
            f"Check the loss for overflow (lower the learning rate or scale, clip gradients, use float32), or pass "
            f"check_finite=False to skip this check"
        )


def flatten(tensors: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """Concatenate tensors of any shapes into one ``[P]`` vector of ``dtype``."""
    if not tensors:
        return torch.zeros(0, dtype=dtype)
    return torch.cat([t.reshape(-1).to(dtype) for t in tensors])


def split(flat: Tensor, sizes: Sequence[int]) -> tuple[Tensor, ...]:
    """Split ``flat [P, ...]`` into pieces of ``sizes[i]`` rows (the inverse of :func:`flatten` along dim 0)."""
    return torch.split(flat, list(sizes), dim=0)


def cast_weight(w: Tensor, like: Tensor) -> Tensor:
    """``w`` on ``like``'s device and dtype (a differentiable no-op when they already match)."""
    return w.to(device=like.device, dtype=like.dtype)


def instance_count(who: str, batch_dims: int, name: str, g: Tensor) -> int:
    """How many optimizee instances are stacked in ``g``: 1 unless the rule was built with ``batch_dims=1``, then the
    size of ``g``'s first dimension (each instance's tensor gets its own per-tensor normalisation).

    Raises:
        ValueError: ``batch_dims=1`` and ``g`` has no first dimension of size >= 1 (``who`` names the rule).
    """
    if not batch_dims:
        return 1
    if g.dim() < 1 or g.shape[0] < 1:
        raise ValueError(
            f"{who}(batch_dims=1): parameter {name!r} has shape {tuple(g.shape)}; with batch_dims=1 every "
            f"tensor is a stack of instances [n, ...] with n >= 1"
        )
    return g.shape[0]


def moment_state(who: str, params: Params, momenta: int) -> dict[str, dict[str, Tensor]]:
    """Zero momenta ``m [numel, momenta]`` and second moments ``v [numel, 1]`` per parameter, in each parameter's
    compute dtype and on its device: the state of the MLP and Tiny rules (``who`` names the rule in errors)."""
    check_params(who, params)
    return {
        k: {
            "m": torch.zeros(v.numel(), momenta, dtype=compute_dtype({k: v}), device=v.device),
            "v": torch.zeros(v.numel(), 1, dtype=compute_dtype({k: v}), device=v.device),
        }
        for k, v in params.items()
    }


class LearnedRule(nn.Module):
    """The ``nn.Module`` plumbing of the learned rules, which implement :class:`innerloop.optim.UpdateRule`
    (``init`` and ``update``; that protocol is all any rule needs): ``rule(grads, state, params, step)`` is
    :meth:`update`, so ``torch.func.functional_call`` works on the rule's weights, and ``batch_dims`` (0, or 1 when
    every tensor is a stack of independent instances) counts the instances of a gradient."""

    batch_dims: int = 0

    def update(
        self, grads: Params, state: dict[str, dict[str, Tensor]], params: Params, step: int
    ) -> tuple[Params, dict[str, dict[str, Tensor]]]:
        raise NotImplementedError

    def forward(
        self, grads: Params, state: dict[str, dict[str, Tensor]], params: Params, step: int
    ) -> tuple[Params, dict[str, dict[str, Tensor]]]:
        """Same as :meth:`update`."""
        return self.update(grads, state, params, step)

    def _groups(self, name: str, g: Tensor) -> int:
        """The number of instances stacked in ``g`` (1 unless ``batch_dims`` is 1)."""
        return instance_count(type(self).__name__, self.batch_dims, name, g)
