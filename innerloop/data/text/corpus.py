"""Text corpora as byte documents: one file, a folder of ``.txt`` files (one document each), document-aware splits.

Documents are raw bytes, so any encoding works, UTF-8 or not; :mod:`innerloop.data.text.tokenizer` turns them into
tokens and :mod:`innerloop.data.text.cache` stores the tokens on disk. The bundled tiny-shakespeare is read
checksum-verified (:func:`load_bytes`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "TINY_SHAKESPEARE", "corpus_files", "load_bytes", "load_documents", "num_val_docs", "read_document", "split",
    "split_corpus", "strip_gutenberg", "training_text",
]  # fmt: skip

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


# "*** START OF THE PROJECT GUTENBERG EBOOK ..." and the older "***START OF THE ..." (no space) of many files
_PG_START = re.compile(rb"\*\*\*[ \t]*START OF")
_PG_END = re.compile(rb"\*\*\*[ \t]*END OF")
# the "End of (the) Project Gutenberg('s) EBook of ..." line(s) that end the body of most files, before the END marker
_PG_END_LINE = re.compile(rb"(?im)^[ \t]*End of (?:the )?Project Gutenberg")
_PG_TAIL = 1000  # that line is searched for in the body's last bytes only
GUTENBERG_RULES = 2  # bump when strip_gutenberg changes: token caches built with --gutenberg are then rebuilt


def strip_gutenberg(raw: bytes) -> bytes:
    """Body of a Project Gutenberg file: the bytes between the ``*** START OF`` and ``*** END OF`` lines (if any;
    also without the space, ``***START OF``), less a closing "End of the Project Gutenberg EBook of ..." line."""
    start = _PG_START.search(raw)
    if start:
        nl = raw.find(b"\n", start.start())
        raw = raw[nl + 1 :] if nl >= 0 else raw
    end = _PG_END.search(raw)
    if end:
        raw = raw[: end.start()]
    tail = max(len(raw) - _PG_TAIL, 0)
    line = _PG_END_LINE.search(raw, tail)
    return raw[: line.start()] if line else raw


def corpus_files(path: str | Path | None = None) -> list[Path]:
    """The files of a corpus, in document order: the bundled tiny-shakespeare (``None`` or ``""``), one file, or every
    ``*.txt`` file of a folder (sorted by name, recursively)."""
    if path is None or str(path) == "":
        return [TINY_SHAKESPEARE]
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise FileNotFoundError(f"folder {path} holds no .txt files")
        return files
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"text corpus {path} does not exist (give a .txt file or a folder of .txt files)")


def read_document(file: Path, gutenberg: bool = False) -> bytes:
    """Bytes of one document (the bundled tiny-shakespeare is checksum-verified); maybe Gutenberg-stripped."""
    raw = bytes(load_bytes(None).numpy()) if file == TINY_SHAKESPEARE else file.read_bytes()
    return strip_gutenberg(raw) if gutenberg else raw


def load_documents(path: str | Path | None = None, gutenberg: bool = False) -> list[Tensor]:
    """Documents as ``[N_i]`` uint8 tensors: the bundled tiny-shakespeare (``None``), one file, or every ``*.txt``
    file of a folder (sorted by name, recursively). Empty documents are skipped.

    Args:
        path (str | Path, Optional): file or folder. Default: None (bundled tiny-shakespeare).
        gutenberg (bool, Optional): strip Project Gutenberg headers/licence footers. Default: False.
    """
    docs = []
    for f in corpus_files(path):
        raw = read_document(f, gutenberg)
        if raw:
            docs.append(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    if not docs:
        raise ValueError(f"text corpus {path} is empty")
    return docs


def num_val_docs(num_docs: int, val_fraction: float) -> int:
    """Documents held out for validation when a corpus has ``num_docs > 1``: ``max(1, round(n * val_fraction))``,
    at most ``n - 1``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    return min(max(1, round(num_docs * val_fraction)), num_docs - 1)


def training_text(docs: list[bytes], val_fraction: float = 0.1) -> list[bytes]:
    """The training side of :func:`split_corpus` as bytes (what a BPE tokenizer is trained on): the first
    ``1 - val_fraction`` of one document, or the documents not held out."""
    if len(docs) == 1:
        num_val_docs(2, val_fraction)  # validates val_fraction
        return [docs[0][: int(len(docs[0]) * (1 - val_fraction))]]
    return docs[: -num_val_docs(len(docs), val_fraction)]


def split_corpus(docs: list[Tensor], val_fraction: float = 0.1) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Train tokens, validation tokens and validation documents.

    One document is split by bytes (first ``1 - val_fraction`` for training). Several documents are split by
    document (the last ``max(1, round(n * val_fraction))`` are held out), so no document is in both splits.
    """
    if len(docs) == 1:
        train, val = split(docs[0], val_fraction)
        return train, val, [val]
    n_val = num_val_docs(len(docs), val_fraction)
    val_docs = docs[-n_val:]
    return torch.cat(docs[:-n_val]), torch.cat(val_docs), val_docs
