"""Data-parallel helpers for ``torchrun`` (gloo on CPU, nccl on GPU).

Launch any ``innerloop lm train`` run on N processes of one machine with::

    torchrun --standalone --nproc_per_node=N -m innerloop lm train --batch-size 32 --out runs/lm/ddp

``batch_size`` stays the *global* batch: each rank trains on its own ``batch_size / N`` rows of the same global batch,
gradients are averaged by DDP, so the run computes what one process with the whole batch computes (up to float
summation order). Only rank 0 logs, evaluates and writes checkpoints. ``--parallel fsdp`` shards the weights,
gradients and optimizer state instead of replicating them (:mod:`innerloop.train.fsdp`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "cleanup_distributed", "setup_distributed"]


@dataclass(frozen=True)
class DistInfo:
    """``rank``/``world_size`` of this process (0/1 without torchrun) and its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str) -> str:
    """``'auto'`` -> ``'cuda'`` if available else ``'cpu'``; a name torch does not know (``gpu``), a device type
    other than cpu/cuda, and an unavailable CUDA device are clear errors. ``cpu:N`` is ``cpu``.

    Examples:
        >>> resolve_device("cpu:0")
        'cpu'
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use --device cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return "cpu" if kind == "cpu" else device  # one CPU device; "cpu:0" is refused by safetensors' loader


def setup_distributed(device: str = "auto") -> DistInfo:
    """Initialise the process group when launched by ``torchrun`` (``RANK`` set); otherwise a single process."""
    device = resolve_device(device)
    if "RANK" not in os.environ:
        return DistInfo(device=device)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(rank, world, local, device)


def cleanup_distributed() -> None:
    """Tear the process group down once every rank has reached this point (a gloo rank whose peer tears the group
    down first can abort with "terminate called without an active exception": seen once in CI)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
