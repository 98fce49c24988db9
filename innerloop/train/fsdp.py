"""Fully sharded data parallelism (FSDP2, ``torch.distributed.fsdp.fully_shard``) for the :class:`Trainer`.

With ``--parallel fsdp`` under ``torchrun`` every process keeps only its ``1/N`` slice of each parameter, of its
gradient and of the AdamW state. Each block of the LM (``model.layers[i]``) is one sharding unit: its full weights
are all-gathered just before its forward (and again before its backward) and freed right after, and its gradients
are reduce-scattered (averaged) as soon as its backward ends; the root unit holds the rest (embedding, final norm,
the tied ``lm_head``). The batch is split across processes exactly as under DDP, so the run computes what one
process with the whole global batch computes, up to float summation order.

Precision: with bf16 autocast (``--dtype bf16``, or ``auto`` on a GPU) the blocks also get a
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``: weights are all-gathered in bf16 (half the traffic),
gradients are averaged in fp32, and the sharded master weights and the optimizer state stay fp32; autocast stays on
for the ops it keeps in fp32 (softmax, norms, the loss).

Checkpoints keep the single-process layout: the full weights and a plain-``AdamW``-shaped optimizer state (params
numbered in param-group order, full tensors) are gathered to rank 0 (``torch.distributed.checkpoint.state_dict``
with ``full_state_dict=True, cpu_offload=True``) and written by the usual atomic writer, so a run trained with FSDP
resumes under FSDP, DDP or one process, and ``lm eval``/``lm generate`` read it as any run. Resuming under FSDP loads
the checkpoint into the whole model on every rank *before* sharding it (the model is built whole on every rank
anyway) and hands each rank its slice of the optimizer state.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PARALLEL", "FullOptimizerState", "StateDictModule", "check_parallel", "full_model_state",
           "shard_model", "tied_aliases", "total_norm"]  # fmt: skip

PARALLEL = ("ddp", "fsdp")
_IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")
_LAUNCH = "torchrun --standalone --nproc_per_node=N -m innerloop lm train --parallel fsdp ..."


def check_parallel(parallel: str, world_size: int) -> None:
    """Refuse a ``parallel`` mode that cannot run with ``world_size`` processes, naming the fix."""
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be 'ddp' or 'fsdp', got {parallel!r}")
    if parallel == "fsdp" and world_size < 2:
        raise ValueError(f"--parallel fsdp shards the model over several processes, but this is {world_size} "
                         f"process (no torchrun launch, or --nproc_per_node=1). Launch it with `{_LAUNCH}`, or drop "
                         f"--parallel fsdp to train in one process.")  # fmt: skip


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one before the root: the blocks of ``model.layers`` (none if it has no such list)."""
    layers = getattr(model, "layers", None)
    return list(layers) if isinstance(layers, nn.ModuleList) else []


def shard_model(model: nn.Module, param_dtype: torch.dtype | None = None) -> nn.Module:
    """``fully_shard`` every block of ``model.layers``, then the root (in place; returns ``model``).

    Args:
        model (nn.Module): a whole model, the same on every rank, on this rank's device.
        param_dtype (torch.dtype, Optional): all-gather (and compute) dtype of the weights, e.g. ``torch.bfloat16``;
            gradients are then reduced in fp32. Default: None (the parameters' own dtype).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    # The blocks return their recurrent/KV state alongside h (views, in some mixers). FSDP2 warns that an in-place op
    # on such a view would skip its backward hook; CausalLM never modifies a block's outputs in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(.*\) returned a view tensor")
    for block in shard_units(model):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: name}`` of parameters shared under several names (e.g. ``lm_head.weight -> embed_tokens.weight``);
    ``name`` is the one ``named_parameters`` (and the optimizer) use."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def _full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module, aliases: dict[str, str]) -> dict[str, Tensor]:
    """The whole ``state_dict`` of a sharded ``model`` on rank 0 (CPU tensors; ``{}`` on the other ranks).

    A collective: every rank must call it. Tied names are tied again (one tensor under both names), so the
    checkpoint writer stores them once, as it does for an unsharded model.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_full_options())
    for alias, name in aliases.items():
        if name in state:
            state[alias] = state[name]
    return state


class StateDictModule(nn.Module):
    """Stands in for a sharded model where a checkpoint is written: its ``state_dict()`` is a given (gathered) one."""

    def __init__(self, state: dict[str, Tensor]) -> None:
        super().__init__()
        self._state = state

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:  # type: ignore[override]
        return dict(self._state)


class FullOptimizerState:
    """The optimizer of a sharded model as a checkpointable object with the layout of a plain optimizer's
    ``state_dict()`` (parameters numbered in param-group order, whole tensors), so checkpoints do not depend on how
    a run was trained.

    The state can be loaded before the optimizer exists (a resume happens before the model is sharded); it is
    handed to the optimizer, each rank its slice, by :meth:`attach`.

    Args:
        groups (list[list[str]]): the parameter names of each param group, in the optimizer's order.
    """

    def __init__(self, groups: list[list[str]]) -> None:
        self.groups = [list(g) for g in groups]
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending: dict[str, Any] | None = None

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Use ``optimizer`` of the sharded ``model`` from now on (and load any state read before it existed)."""
        self.model, self.optimizer = model, optimizer
        if self._pending is not None:
            self._set(self._pending)
            self._pending = None

    def state_dict(self) -> dict[str, Any]:
        """A collective: the whole state on rank 0 (``{}`` on the other ranks)."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        if self.optimizer is None:
            raise RuntimeError("the model is not sharded yet: no optimizer state to save")
        full = get_optimizer_state_dict(self.model, self.optimizer, options=_full_options())
        if not full:
            return {}
        index = {name: i for i, name in enumerate(n for g in self.groups for n in g)}
        groups = [{**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]]
        return {"state": {index[n]: s for n, s in full["state"].items()}, "param_groups": groups}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a plain optimizer ``state_dict`` (this run's, or one written by DDP or a single process)."""
        sizes = [len(g["params"]) for g in state["param_groups"]]
        if sizes != [len(g) for g in self.groups]:
            raise ValueError(f"the saved optimizer has param groups of sizes {sizes}, this model "
                             f"{[len(g) for g in self.groups]}")  # fmt: skip
        if self.optimizer is None:
            self._pending = state
        else:
            self._set(state)

    def _set(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = [n for g in self.groups for n in g]
        # hyperparameters as saved; the implementation (fused/foreach, chosen per device) stays this optimizer's
        impl = [{k: g[k] for k in _IMPLEMENTATION if k in g} for g in self.optimizer.param_groups]
        groups = [{**saved, **own_impl, "params": list(own)}
                  for saved, own, own_impl in zip(state["param_groups"], self.groups, impl)]  # fmt: skip
        full = {"state": {names[int(i)]: s for i, s in state["state"].items()}, "param_groups": groups}
        set_optimizer_state_dict(self.model, self.optimizer, full, options=StateDictOptions(full_state_dict=True))


def total_norm(grads: list[Tensor]) -> float:
    """The 2-norm of all ``grads`` together (sharded DTensors or plain tensors), the same on every rank."""
    if not grads:
        return 0.0
    return as_float(torch.nn.utils.get_total_norm(grads, 2.0))


def as_float(value: Tensor) -> float:
    """A scalar tensor as a float; a DTensor is made whole first (its norm is partial on each shard)."""
    full = getattr(value, "full_tensor", None)
    return float(full() if full is not None else value)
