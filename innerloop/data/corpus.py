"""Text corpora as byte documents: one file, a folder of ``.txt`` files (one document each), document-aware splits.

Tokens are bytes (vocab 256), so any encoding works, UTF-8 or not.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .text import load_bytes, split

__all__ = ["load_documents", "split_corpus", "strip_gutenberg"]

_PG_START, _PG_END = b"*** START OF", b"*** END OF"


def strip_gutenberg(raw: bytes) -> bytes:
    """Body of a Project Gutenberg file: the bytes between the ``*** START OF`` and ``*** END OF`` lines (if any)."""
    start = raw.find(_PG_START)
    if start >= 0:
        nl = raw.find(b"\n", start)
        raw = raw[nl + 1 :] if nl >= 0 else raw
    end = raw.find(_PG_END)
    return raw[:end] if end >= 0 else raw


def load_documents(path: str | Path | None = None, gutenberg: bool = False) -> list[Tensor]:
    """Documents as ``[N_i]`` uint8 tensors: the bundled tiny-shakespeare (``None``), one file, or every ``*.txt``
    file of a folder (sorted by name, recursively).

    Args:
        path (str | Path, Optional): file or folder. Default: None (bundled tiny-shakespeare).
        gutenberg (bool, Optional): strip Project Gutenberg headers/licence footers. Default: False.
    """
    if path is None or str(path) == "":
        return [load_bytes(None)]
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise FileNotFoundError(f"folder {path} holds no .txt files")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"text corpus {path} does not exist (give a .txt file or a folder of .txt files)")
    docs = []
    for f in files:
        raw = f.read_bytes()
        if gutenberg:
            raw = strip_gutenberg(raw)
        if raw:
            docs.append(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    if not docs:
        raise ValueError(f"text corpus {path} is empty")
    return docs


def split_corpus(docs: list[Tensor], val_fraction: float = 0.1) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Train tokens, validation tokens and validation documents.

    One document is split by bytes (first ``1 - val_fraction`` for training). Several documents are split by
    document (the last ``max(1, round(n * val_fraction))`` are held out), so no document is in both splits.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(docs) == 1:
        train, val = split(docs[0], val_fraction)
        return train, val, [val]
    n_val = min(max(1, round(len(docs) * val_fraction)), len(docs) - 1)
    val_docs = docs[-n_val:]
    return torch.cat(docs[:-n_val]), torch.cat(val_docs), val_docs
