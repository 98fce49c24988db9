"""Token caches on disk: a corpus encoded once into a memory-mapped ``.bin`` plus a small JSON index.

``<cache_dir>/<name>-<key>.bin`` holds every document's tokens back to back (uint8 for vocab <= 256, else uint16 or
uint32); ``<name>-<key>.json`` holds the document offsets, the tokenizer id, the source files' paths, sizes, mtimes
and sha256, and the ``.bin``'s size and sha256. ``key`` hashes the source path, the Gutenberg flag and the tokenizer id.

:func:`open_cache` re-uses a cache whose source files and tokenizer are unchanged (same size and mtime, or same
checksum) and whose ``.bin`` is whole; anything else (missing, stale, truncated, corrupted, unreadable index) is
rebuilt. Builds stream one document at a time into a temporary file and ``os.replace`` it; the index is written last,
so a build killed at any moment leaves either the old cache or none. Readers only ever see complete files.

Training and evaluation read windows straight from the memmap (:mod:`innerloop.data.text.windows`), so a big corpus
never has to fit in RAM. Where caches live by default: :func:`default_cache_dir` (one folder shared by every run).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from innerloop.data._io import atomic_write_bytes, user_cache_dir

from .corpus import GUTENBERG_RULES, corpus_files, num_val_docs, read_document
from .tokenizer import Tokenizer

__all__ = ["TokenCache", "default_cache_dir", "open_cache", "split_cache"]

VERSION = 1
_HASH_BLOCK = 1 << 22


def default_cache_dir() -> Path:
    """The token caches shared by every run of this user: ``$INNERLOOP_CACHE/tokens`` (default
    ``~/.cache/innerloop/tokens``). Files are keyed by corpus path, Gutenberg flag and tokenizer, so runs on the same
    corpus and tokenizer encode it once."""
    return user_cache_dir("tokens")


def _dtype_for(vocab_size: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _file_entry(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256_file(path)}


@dataclass
class TokenCache:
    """An opened cache: ``tokens`` ``[N]`` (read-only memmap), ``doc_offsets`` ``[D + 1]`` (int64), the index.

    ``status`` is ``"reused"`` or ``"built"``; ``reason`` says why a cache was (re)built.
    """

    tokens: np.ndarray
    doc_offsets: np.ndarray
    index: dict[str, Any]
    bin_path: Path
    status: str = "reused"
    reason: str = ""
    docs: list[np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        o = self.doc_offsets
        self.docs = [self.tokens[o[i] : o[i + 1]] for i in range(len(o) - 1)]


def _paths(cache_dir: Path, source: str | Path | None, gutenberg: bool, tok: Tokenizer) -> tuple[Path, Path]:
    src = "<bundled tiny-shakespeare>" if source is None or str(source) == "" else str(Path(source).resolve())
    key = hashlib.sha256(json.dumps([src, gutenberg, tok.ident]).encode()).hexdigest()[:16]
    stem = "tinyshakespeare" if src.startswith("<") else (Path(src).stem or "corpus")
    return cache_dir / f"{stem}-{key}.bin", cache_dir / f"{stem}-{key}.json"


def _stale_reason(index_path: Path, bin_path: Path, files: list[Path], gutenberg: bool, tok: Tokenizer) -> str:
    """Why the cache at ``index_path`` cannot be re-used (``""`` if it can)."""
    if not index_path.is_file():
        return "no cache yet"
    try:
        index = json.loads(index_path.read_text())
        if index.get("version") != VERSION:
            return f"cache version {index.get('version')} != {VERSION}"
        if index["tokenizer"] != tok.ident:
            return f"tokenizer changed ({index['tokenizer']} -> {tok.ident})"
        if index["gutenberg"] != gutenberg:
            return "gutenberg flag changed"
        if gutenberg and index.get("gutenberg_rules") != GUTENBERG_RULES:
            return "the Gutenberg header stripping changed"
        saved = index["files"]
        if [e["path"] for e in saved] != [str(f.resolve()) for f in files]:
            return "the corpus's files changed (added, removed or renamed)"
        for e, f in zip(saved, files, strict=True):
            st = f.stat()
            if st.st_size != e["size"]:
                return f"{f} changed size"
            if st.st_mtime_ns != e["mtime_ns"] and _sha256_file(f) != e["sha256"]:
                return f"{f} changed content"
        if not bin_path.is_file():
            return f"{bin_path.name} is missing"
        size = bin_path.stat().st_size
        if size != index["n_tokens"] * np.dtype(index["dtype"]).itemsize or size != index["bin_size"]:
            return f"{bin_path.name} is truncated or has the wrong size"
        if _sha256_file(bin_path) != index["bin_sha256"]:
            return f"{bin_path.name} is corrupted (checksum mismatch)"
    except (ValueError, KeyError, TypeError, OSError) as e:
        return f"unreadable index ({type(e).__name__}: {e})"
    return ""


def _build(bin_path: Path, index_path: Path, source: str | Path | None, files: list[Path], gutenberg: bool,
           tok: Tokenizer) -> None:  # fmt: skip
    dtype = _dtype_for(tok.vocab_size)
    tmp = bin_path.with_name(f".{bin_path.name}.{os.getpid()}.tmp")
    try:
        bin_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(tmp, "wb")  # noqa: SIM115 (closed by the with below)
    except OSError as e:
        raise OSError(f"cannot write the token cache in {bin_path.parent} ({type(e).__name__}: {e}); give a "
                      f"writable --cache-dir") from e  # fmt: skip
    offsets, names, entries, h = [0], [], [], hashlib.sha256()
    try:
        with out as f:
            for file in files:
                raw = read_document(file, gutenberg)
                entries.append(_file_entry(file))
                if not raw:
                    continue
                data = tok.encode(raw).astype(dtype).tobytes()
                f.write(data)
                h.update(data)
                offsets.append(offsets[-1] + len(data) // dtype.itemsize)
                names.append(str(file))
            f.flush()
            os.fsync(f.fileno())
        if len(offsets) == 1:
            raise ValueError(f"text corpus {source or 'tiny-shakespeare'} is empty")
        os.replace(tmp, bin_path)
    finally:
        tmp.unlink(missing_ok=True)
    index = {
        "version": VERSION, "tokenizer": tok.ident, "tokenizer_name": tok.name, "vocab_size": tok.vocab_size,
        "dtype": dtype.name, "n_tokens": offsets[-1], "bin_size": offsets[-1] * dtype.itemsize,
        "bin_sha256": h.hexdigest(), "source": str(source or ""), "gutenberg": gutenberg,
        "gutenberg_rules": GUTENBERG_RULES, "files": entries, "doc_names": names, "doc_offsets": offsets,
    }  # fmt: skip
    atomic_write_bytes(index_path, (json.dumps(index, indent=1) + "\n").encode())


def open_cache(source: str | Path | None, tokenizer: Tokenizer, cache_dir: str | Path,
               gutenberg: bool = False) -> TokenCache:  # fmt: skip
    """Token cache of corpus ``source`` (``None``/``""`` = bundled tiny-shakespeare, a file, or a folder of ``.txt``
    documents) under ``tokenizer``: re-used if valid, else (re)built.

    Args:
        source (str | Path | None): the corpus, as for :func:`innerloop.data.text.corpus.load_documents`.
        tokenizer (Tokenizer): encodes each document.
        cache_dir (str | Path): folder of the cache files (created if missing).
        gutenberg (bool, Optional): strip Project Gutenberg headers/footers first. Default: False.
    Returns:
        TokenCache: memory-mapped tokens ``[N]`` and document offsets ``[D + 1]`` (empty documents skipped).
    """
    files = corpus_files(source)
    bin_path, index_path = _paths(Path(cache_dir), source, gutenberg, tokenizer)
    reason = _stale_reason(index_path, bin_path, files, gutenberg, tokenizer)
    if reason:
        _build(bin_path, index_path, source, files, gutenberg, tokenizer)
    index = json.loads(index_path.read_text())
    tokens = np.memmap(bin_path, dtype=np.dtype(index["dtype"]), mode="r", shape=(index["n_tokens"],))
    offsets = np.asarray(index["doc_offsets"], dtype=np.int64)
    return TokenCache(tokens, offsets, index, bin_path, "built" if reason else "reused", reason)


def _tokens_within(doc: np.ndarray, token_lengths: np.ndarray, val_fraction: float, block: int = 1 << 22) -> int:
    """How many leading tokens of ``doc`` end within its first ``int(bytes * (1 - val_fraction))`` bytes (read in
    blocks: a corpus of billions of tokens never needs an array of their lengths)."""
    lengths = np.asarray(token_lengths, dtype=np.int64)
    starts = range(0, len(doc), block)
    sums = [int(lengths[doc[i : i + block]].sum()) for i in starts]  # bytes per block: the one full pass
    cut, seen = int(sum(sums) * (1 - val_fraction)), 0
    for i, size in zip(starts, sums):
        if seen + size > cut:  # the cut falls in this block: find the token
            return i + int(np.searchsorted(seen + np.cumsum(lengths[doc[i : i + block]]), cut, side="right"))
        seen += size
    return len(doc)


def split_cache(
    cache: TokenCache, val_fraction: float = 0.1, token_lengths: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Train tokens, validation tokens and validation documents, as views of the memmap.

    Same rule as :func:`innerloop.data.text.corpus.split_corpus`: one document is split by bytes (the first
    ``1 - val_fraction`` of its bytes for training, the text a BPE tokenizer was trained on:
    :func:`innerloop.data.text.corpus.training_text`); several are split by document (the last ``num_val_docs`` held
    out), so no window of one split ever holds tokens of the other.

    Args:
        cache (TokenCache): the corpus's tokens.
        val_fraction (float, Optional): held-out fraction. Default: 0.1.
        token_lengths (np.ndarray, Optional): ``[V]`` bytes per token (``Tokenizer.token_lengths``); a one-document
            corpus is then cut after the last token that ends within the training bytes (a token across the cut goes
            to validation). Default: None (one byte per token).
    """
    n_docs = len(cache.docs)
    if n_docs == 1:
        num_val_docs(2, val_fraction)  # validates val_fraction
        doc = cache.docs[0]
        if token_lengths is None:
            n = int(len(doc) * (1 - val_fraction))
        else:
            n = _tokens_within(doc, token_lengths, val_fraction)
        return doc[:n], doc[n:], [doc[n:]]
    cut = int(cache.doc_offsets[n_docs - num_val_docs(n_docs, val_fraction)])
    val_docs = cache.docs[n_docs - num_val_docs(n_docs, val_fraction) :]
    return cache.tokens[:cut], cache.tokens[cut:], val_docs
