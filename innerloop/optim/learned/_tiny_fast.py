"""TinyRule's no-autograd step: one C kernel call per tensor (``_tiny_kernel.c``, built on first use by
:mod:`innerloop.ops._cbuild`), two passes over the tensor, no intermediates in memory.

Pass 1 (``tiny_sums``) reads the gradient and the state and sums the squares of the features; pass 2 (``tiny_apply``)
writes the new state and the update (or the parameter, in place). The kernel runs where it applies: CPU tensors,
parameter, gradient and state all float32 or all float64, the rule called on one model's tensors (``batch_dims == 0``),
and a C compiler present (``INNERLOOP_NO_KERNEL=1`` turns it off). Anywhere else the tensor goes through
:meth:`TinyRule.update` under ``no_grad`` (the same numbers, slower).
"""

from __future__ import annotations

import ctypes
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from innerloop.ops._cbuild import load
from innerloop.optim.learned._common import check_finite

_SRC = Path(__file__).with_name("_tiny_kernel.c")
_C_TYPES = {torch.float32: "float", torch.float64: "double"}


def _library(dtype: torch.dtype, momenta: int, hidden: int) -> ctypes.CDLL:
    real = _C_TYPES[dtype]

    def declare(dll: ctypes.CDLL) -> None:
        dll.tiny_sums.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 5
        dll.tiny_sums.restype = None
        dll.tiny_apply.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 11
        dll.tiny_apply.restype = None

    defines = [f"-DREAL={real}", f"-DREAL_IS_DOUBLE={int(real == 'double')}", f"-DNM={momenta}", f"-DHID={hidden}"]
    return load(_SRC, defines, f"tiny_rule_{real}_m{momenta}_h{hidden}", "the TinyRule C kernel", declare)


def kernel_available(rule: Any, dtype: torch.dtype = torch.float32) -> bool:
    """True if the kernel for ``rule``'s sizes and ``dtype`` builds and loads here (builds it on the first call)."""
    try:
        _library(dtype, len(rule.decays), rule.hidden.out_features)
    except RuntimeError:
        return False
    return True


def _fits(rule: Any, g: Tensor, p: Tensor, st: dict[str, Tensor], in_place: bool) -> bool:
    dtype = p.dtype
    return (
        dtype in _C_TYPES
        and rule.batch_dims == 0
        and p.device.type == "cpu"
        and g.device.type == "cpu"
        and g.dtype == dtype
        and all(t.dtype == dtype and t.device.type == "cpu" and t.is_contiguous() for t in st.values())
        and (p.is_contiguous() or not in_place)
        and kernel_available(rule, dtype)
    )


def tiny_step(
    rule: Any, grads: dict[str, Tensor], state: dict[str, dict[str, Tensor]], params: dict[str, Tensor], step: int,
    scale: float | None,
) -> dict[str, Tensor]:
    """Advance ``state`` in place for every tensor of ``grads`` (shapes checked by the caller).

    Pass 1 (the feature sums) runs on every tensor before pass 2 writes anything, so a non-finite gradient is
    refused (with ``rule.check_finite``) before any state or parameter changes; pass 1 finds it for free.

    Args:
        rule (TinyRule): the rule; grads, params (dict[str, Tensor]): same names and shapes; state (dict):
            ``{name: {"m": [n, J], "v": [n, 1]}}``, modified in place.
        step (int): the step counter (progress features).
        scale (float | None): None: return the updates; a float: add ``scale * update`` to ``params`` in place and
            return ``{}``.

    Returns:
        dict[str, Tensor]: the updates (``params[k]``'s shape and dtype), or ``{}`` when ``scale`` is given.
    """
    updates: dict[str, Tensor] = {}
    consts: dict[torch.dtype, tuple[dict[str, Tensor], Tensor]] = {}
    fast, slow = [], []
    for k, g in grads.items():
        (fast if _fits(rule, g, params[k], state[k], scale is not None) else slow).append(k)
    if slow and rule.check_finite:
        check_finite("TinyRule", {k: grads[k] for k in slow})
    sums, gcs = {}, {}
    for k in fast:
        dtype = params[k].dtype
        if dtype not in consts:
            c = torch.tensor([*rule.decays, rule.rms_decay, rule.eps, rule.norm_eps, rule.exp_mult, rule.step_mult,
                              1.0 if scale is None else scale, scale is not None, 1 - rule.rms_decay],
                             dtype=dtype)  # fmt: skip
            consts[dtype] = (rule.kernel_weights(step, dtype), c)
        gcs[k] = grads[k].contiguous()
        sums[k] = torch.empty(rule.num_features, dtype=torch.float64)
        st = state[k]
        _library(dtype, len(rule.decays), rule.hidden.out_features).tiny_sums(
            gcs[k].numel(), gcs[k].data_ptr(), st["m"].data_ptr(), st["v"].data_ptr(), consts[dtype][1].data_ptr(),
            sums[k].data_ptr())  # fmt: skip
    if rule.check_finite:
        suspect = [k for k in fast if not math.isfinite(sums[k][0])]  # sum of g^2: inf/nan iff a gradient is
        if suspect:  # (or float64 overflow: the exact check decides)
            check_finite("TinyRule", {k: grads[k] for k in suspect})
    for k in fast:
        p, st, dtype = params[k], state[k], params[k].dtype
        w, c = consts[dtype]
        out = p if scale is not None else torch.empty(p.shape, dtype=dtype)
        _library(dtype, len(rule.decays), rule.hidden.out_features).tiny_apply(
            gcs[k].numel(), gcs[k].data_ptr(), st["m"].data_ptr(), st["v"].data_ptr(), out.data_ptr(),
            w["w1"].data_ptr(), w["b1"].data_ptr(), w["w2"].data_ptr(), w["b2"].data_ptr(), w["skip"].data_ptr(),
            c.data_ptr(), sums[k].data_ptr())  # fmt: skip
        if scale is None:
            updates[k] = out
        else:  # written from C: tell autograd the parameter changed, as an in-place torch op would
            torch.autograd.graph.increment_version(p)
    for k in slow:
        p, st = params[k], state[k]
        u, new = rule.update({k: grads[k]}, {k: st}, {k: p}, step)
        st["m"].copy_(new[k]["m"])
        st["v"].copy_(new[k]["v"])
        if scale is None:
            updates[k] = u[k]
        else:
            p.add_(u[k].to(p.dtype), alpha=scale)
    return updates
