"""Atomic checkpoints: ``<dir>/step_<N>/{model.safetensors, trainer.pt}`` plus a ``latest`` pointer file.

A checkpoint is written into a temporary directory which is renamed into place (``os.replace``), then the ``latest``
pointer is replaced the same way. A process killed at any moment therefore leaves ``latest`` naming a complete
checkpoint (or no pointer at all); leftover ``*.tmp`` directories are ignored and cleaned up on the next save.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["atomic_write_text", "capture_rng", "latest_checkpoint", "load_checkpoint", "restore_rng", "save_checkpoint"]

MODEL_FILE, STATE_FILE, POINTER = "model.safetensors", "trainer.pt", "latest"


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("checkpoints need safetensors: pip install 'innerloop[train]' (or safetensors)") from e
    return st


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (never a half-written file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA, if initialised) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, step: int, model: nn.Module, state: dict[str, Any], keep: int = 2) -> Path:
    """Write the weights (safetensors) and ``state`` (optimizer, RNG, data position, ...) for ``step`` atomically.

    Args:
        directory (str | Path): checkpoint folder of the run (``<out>/checkpoints``).
        step (int): optimizer steps done.
        model (nn.Module): weights saved with ``safetensors.torch.save_model`` (tied weights handled).
        state (dict): anything ``torch.save`` can write.
        keep (int, Optional): how many most recent checkpoints to keep (>= 1). Default: 2.
    Returns:
        Path: the checkpoint directory.
    """
    st = _safetensors()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.tmp"):  # debris of a process killed mid-save
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    final = directory / f"step_{step:08d}"
    tmp = directory / f"step_{step:08d}.tmp"
    tmp.mkdir()
    st.save_model(model, str(tmp / MODEL_FILE))
    torch.save({**state, "step": step}, tmp / STATE_FILE)
    if final.exists():  # re-saving the same step (e.g. a resumed run that ends where it started)
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(directory / POINTER, final.name + "\n")
    done = sorted(p for p in directory.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[: max(len(done) - max(keep, 1), 0)]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint named by ``<directory>/latest``, or None when there is none."""
    pointer = Path(directory) / POINTER
    if not pointer.is_file():
        return None
    path = Path(directory) / pointer.read_text().strip()
    if not (path / MODEL_FILE).is_file() or not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{pointer} names {path}, which is not a complete checkpoint")
    return path


def load_checkpoint(path: str | Path, model: nn.Module, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load the weights of checkpoint ``path`` into ``model`` (strict) and return its state dict.

    A model whose parameter names or shapes differ from the checkpoint's gets an error naming them.
    """
    st = _safetensors()
    path = Path(path)
    saved = st.load_file(str(path / MODEL_FILE))
    own = model.state_dict()
    # Tied weights are stored once by save_model; compare only names present on both sides for shapes.
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in saved.items() if k in own and own[k].shape != v.shape]  # fmt: skip
    unknown = sorted(set(saved) - set(own))
    if bad or unknown:
        raise ValueError(f"checkpoint {path} does not fit this model (different config?): "
                         f"shape mismatches {bad[:5]}, unexpected keys {unknown[:5]}")  # fmt: skip
    missing, unexpected = st.load_model(model, str(path / MODEL_FILE), strict=False, device=str(map_location))
    shared = {k for k in missing if any(own[k] is own[j] or own[k].data_ptr() == own[j].data_ptr()
                                        for j in saved)}  # fmt: skip
    missing = sorted(set(missing) - shared)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit this model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return torch.load(path / STATE_FILE, map_location=map_location, weights_only=False)


def read_json(path: str | Path) -> dict[str, Any]:
    """``json.loads`` of a file, with an error naming it when it is unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e
