"""Byte-level text corpora: the bundled tiny-shakespeare and train/validation splits as uint8 token tensors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor

TINY_SHAKESPEARE = Path(__file__).with_name("tinyshakespeare.txt")
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def load_bytes(path: str | Path | None = None, sha256: str | None = None) -> Tensor:
    """Read a text file as a ``[N]`` uint8 tensor of bytes (any encoding works: tokens are bytes, vocab 256).

    Args:
        path (str | Path, Optional): file to read; ``None`` reads the bundled tiny-shakespeare (checksum-verified).
        sha256 (str, Optional): expected checksum of the file. Default: None (not checked for user files).
    """
    if path is None:
        path, sha256 = TINY_SHAKESPEARE, TINY_SHAKESPEARE_SHA256
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text corpus {path} does not exist or is not a file")
    raw = path.read_bytes()
    if not raw:
        raise ValueError(f"text corpus {path} is empty")
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise ValueError(f"checksum mismatch for {path}: expected sha256 {sha256}")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def split(tokens: Tensor, val_fraction: float = 0.1) -> tuple[Tensor, Tensor]:
    """First ``1 - val_fraction`` for training, the rest for validation (the nanoGPT split)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = int(len(tokens) * (1 - val_fraction))
    return tokens[:n], tokens[n:]


def random_windows(tokens: Tensor, batch_size: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Sample ``batch_size`` windows: inputs ``[B, length]`` and next-token targets ``[B, length]`` (int64)."""
    if len(tokens) <= length:
        raise ValueError(f"corpus of {len(tokens)} tokens is smaller than one context window of {length} + 1")
    starts = torch.randint(0, len(tokens) - length - 1, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(length + 1)
    w = tokens[idx].long()
    return w[:, :-1], w[:, 1:]
