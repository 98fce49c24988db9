"""Atomic, checksummed checkpoints: ``<dir>/step_<N>/{model.safetensors, trainer.pt, manifest.json}`` + ``latest``.

A checkpoint is written into ``step_<N>.tmp/``, each file flushed to disk, a manifest with every file's size and
SHA-256 written last, then the folder is renamed into place and the ``latest`` pointer replaced, both with
``os.replace``. A process killed at any moment leaves ``latest`` naming a complete checkpoint (or no pointer at all);
``*.tmp`` debris is ignored and removed by the next save.

Reading is defensive: :func:`latest_checkpoint` verifies the manifest of the newest checkpoint and, when it is
damaged (truncated, overwritten, a file missing), warns with its path and the reason and falls back to the previous
intact one; a checkpoint is never loaded as good when its bytes are not the bytes that were saved. Checkpoints from
before manifests existed are accepted when their files are present and load.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from innerloop._io import atomic_write_json, atomic_write_text, read_json, sha256_file

__all__ = [
    "CorruptCheckpointError", "capture_rng", "checkpoint_steps", "latest_checkpoint", "load_checkpoint",
    "load_latest_weights", "load_state", "load_weights", "restore_rng", "save_checkpoint", "verify_checkpoint",
]  # fmt: skip

MODEL_FILE, STATE_FILE, MANIFEST, POINTER = "model.safetensors", "trainer.pt", "manifest.json", "latest"


class CorruptCheckpointError(RuntimeError):
    """A checkpoint whose files are missing, truncated or do not match their recorded checksums."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"checkpoint {path} is damaged: {reason}")
        self.path, self.reason = Path(path), reason


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError as e:  # pragma: no cover - a base dependency; only a broken install lacks it
        raise ImportError("checkpoints need safetensors: pip install safetensors") from e
    return st


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA, if initialised) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`.

    The generator states may come back on another device (a checkpoint loaded with ``map_location="cuda"`` moves
    every tensor there); torch takes them only as CPU byte tensors, so they are moved back first.
    """
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _is_write_error(e: BaseException) -> bool:
    """Whether ``e`` raised while writing a checkpoint is the file system refusing the write (full, quota, read-only,
    permissions), whichever library reported it."""
    if isinstance(e, OSError):
        return True
    text = str(e).lower()
    return any(s in text for s in ("i/o error", "os error", "failed writing", "no space", "file too large",
                                   "unexpected pos", "permission denied"))  # fmt: skip


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(directory: str | Path, step: int, model: nn.Module, state: dict[str, Any], keep: int = 2) -> Path:
    """Write the weights (safetensors) and ``state`` (optimizer, RNG, data position, ...) for ``step`` atomically.

    Args:
        directory (str | Path): the run's checkpoint folder.
        step (int): the number of completed steps; the folder is ``step_<step>``.
        model (nn.Module): its ``state_dict`` is saved (tied tensors once).
        state (dict): anything ``torch.save`` can write; ``step`` is added.
        keep (int, Optional): checkpoints kept (the newest ones); 0 or less keeps every one. Default: 2.

    Returns:
        Path: the checkpoint folder.
    """
    st = _safetensors()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.tmp"):  # debris of a process killed mid-save
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    final = directory / f"step_{step:08d}"
    tmp = directory / f"step_{step:08d}.tmp"
    tmp.mkdir()
    try:
        st.save_model(model, str(tmp / MODEL_FILE))
        torch.save({**state, "step": step}, tmp / STATE_FILE)
        files = {}
        for name in (MODEL_FILE, STATE_FILE):
            _fsync(tmp / name)
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
        atomic_write_json(tmp / MANIFEST, {"step": step, "files": files})
    except Exception as e:
        # a full disk or quota surfaces as OSError, safetensors' SafetensorError or torch's RuntimeError
        if not _is_write_error(e):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        kept = "no earlier checkpoint exists"
        if (directory / POINTER).is_file():
            kept = f"the newest checkpoint {directory / (directory / POINTER).read_text().strip()} is kept"
        raise OSError(f"cannot write checkpoint {final} ({type(e).__name__}: {e}); {kept}. Free disk space (or "
                      f"check the folder's permissions) and run the same command again to resume") from e  # fmt: skip
    if final.exists():  # re-saving the same step (e.g. a finished run evaluated again with other settings)
        # moved aside, not deleted first: a process killed meanwhile leaves *.tmp debris, not a half-deleted checkpoint
        old = directory / f"{final.name}.old.tmp"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    atomic_write_text(directory / POINTER, final.name + "\n")
    done = checkpoint_steps(directory) if keep > 0 else []
    for old in done[: max(len(done) - keep, 0)]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_steps(directory: str | Path) -> list[Path]:
    """The completed checkpoint folders of ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))


def verify_checkpoint(path: str | Path) -> None:
    """Raise :class:`CorruptCheckpointError` unless every file of checkpoint ``path`` is present and, when the
    checkpoint has a manifest, has the recorded size and SHA-256."""
    path = Path(path)
    for name in (MODEL_FILE, STATE_FILE):
        if not (path / name).is_file():
            raise CorruptCheckpointError(path, f"{name} is missing")
    if not (path / MANIFEST).is_file():
        return  # written before manifests existed: the loaders' own checks are all there is
    try:
        files = read_json(path / MANIFEST)["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(path, f"{MANIFEST} is unreadable ({e})") from None
    for name, want in files.items():
        size = (path / name).stat().st_size if (path / name).is_file() else None
        if size != want["bytes"]:
            raise CorruptCheckpointError(path, f"{name} has {size} bytes, {want['bytes']} were saved (truncated?)")
        if sha256_file(path / name) != want["sha256"]:
            raise CorruptCheckpointError(path, f"{name} does not match its saved SHA-256 (overwritten or damaged)")


def latest_checkpoint(directory: str | Path, skip: Sequence[CorruptCheckpointError] = ()) -> Path | None:
    """The newest intact checkpoint of ``directory``, or None when there is none at all.

    The checkpoint named by ``latest`` is tried first, then the others from newest to oldest. A damaged one is
    reported with a warning naming its path and what is wrong; when every checkpoint is damaged the error lists them.

    Args:
        directory (str | Path): the checkpoint folder.
        skip (Sequence[CorruptCheckpointError], Optional): checkpoints already found damaged by a loader (files
            that pass the manifest check but do not load, e.g. from before manifests); they are skipped and
            reported like the others. Default: ().
    """
    directory = Path(directory)
    candidates = list(reversed(checkpoint_steps(directory)))
    pointer = directory / POINTER
    if pointer.is_file():
        named = directory / pointer.read_text().strip()
        candidates = [named] + [c for c in candidates if c != named]
    if not candidates:
        return None
    damaged = list(skip)
    known = {e.path for e in skip}
    for path in candidates:
        if path in known:
            continue
        try:
            if not path.is_dir():
                raise CorruptCheckpointError(path, f"{POINTER} names it but it does not exist")
            verify_checkpoint(path)
        except CorruptCheckpointError as e:
            damaged.append(e)
            continue
        for e in damaged:
            warnings.warn(f"{e}; using the previous intact checkpoint {path}", stacklevel=2)
        return path
    raise CorruptCheckpointError(directory, "no intact checkpoint: " + "; ".join(e.reason + f" ({e.path.name})"
                                                                           for e in damaged))  # fmt: skip


def load_latest_weights(directory: str | Path, model: nn.Module,
                        map_location: str | torch.device = "cpu") -> Path | None:  # fmt: skip
    """Load the newest intact checkpoint's weights of ``directory`` into ``model``; its path (None: no checkpoint).

    Damaged checkpoints are skipped with a warning naming them (see :func:`latest_checkpoint`).
    """
    skip: list[CorruptCheckpointError] = []
    while (path := latest_checkpoint(directory, skip)) is not None:
        try:
            load_weights(path, model, map_location)
            return path
        except CorruptCheckpointError as e:
            skip.append(e)
    return None


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The ``trainer.pt`` dict of checkpoint ``path`` (optimizer, RNG, step, config, ...)."""
    path = Path(path)
    try:
        return torch.load(path / STATE_FILE, map_location=map_location, weights_only=False)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as e:
        raise CorruptCheckpointError(path, f"{STATE_FILE} cannot be read ({type(e).__name__}: {e})") from None


def load_checkpoint(path: str | Path, model: nn.Module, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load the weights of checkpoint ``path`` into ``model`` (strict) and return its state dict.

    A model whose parameter names or shapes differ from the checkpoint's gets an error naming them; unreadable files
    raise :class:`CorruptCheckpointError` naming the checkpoint.
    """
    load_weights(path, model, map_location)
    return load_state(path, map_location)


def load_weights(path: str | Path, model: nn.Module, map_location: str | torch.device = "cpu") -> None:
    """Load the weights of checkpoint ``path`` into ``model`` (strict), as :func:`load_checkpoint` without the state."""
    st = _safetensors()
    path = Path(path)
    verify_checkpoint(path)
    try:
        saved = st.load_file(str(path / MODEL_FILE))
    except Exception as e:  # safetensors raises its own SafetensorError (no common base class to name)
        raise CorruptCheckpointError(path, f"{MODEL_FILE} cannot be read ({type(e).__name__}: {e})") from None
    own = model.state_dict()
    # Tied weights are stored once by save_model; compare only names present on both sides for shapes.
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in saved.items() if k in own and own[k].shape != v.shape]  # fmt: skip
    unknown = sorted(set(saved) - set(own))
    if bad or unknown:
        raise ValueError(f"checkpoint {path} does not fit this model (different config?): "
                         f"shape mismatches {bad[:5]}, unexpected keys {unknown[:5]}")  # fmt: skip
    device = torch.device(map_location)
    device = "cpu" if device.type == "cpu" else str(device)  # safetensors refuses "cpu:0"
    missing, unexpected = st.load_model(model, str(path / MODEL_FILE), strict=False, device=device)
    shared = {k for k in missing if any(own[k] is own[j] or own[k].data_ptr() == own[j].data_ptr()
                                        for j in saved)}  # fmt: skip
    missing = sorted(set(missing) - shared)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit this model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
