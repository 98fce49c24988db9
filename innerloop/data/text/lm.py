"""The data of a language-model run: its tokenizer, its token cache, and the training / validation split.

Everything here takes plain arguments (the trainer and ``innerloop lm eval`` pass their config's fields), so loading a
finished run's data for evaluation needs nothing from :mod:`innerloop.train`.

Where the token cache lives (:func:`cache_dir_of`): the ``--cache-dir`` of the run if given; else ``<run>/cache`` for a
run made before caches were shared (it already holds its cache); else the user cache
(:func:`innerloop.data.text.cache.default_cache_dir`), shared by every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .cache import default_cache_dir, open_cache, split_cache
from .corpus import corpus_files, read_document, training_text
from .tokenizer import ByteTokenizer, Tokenizer, make_tokenizer

__all__ = ["LMData", "cache_dir_of", "load_data", "run_tokenizer", "token_bytes_of"]


@dataclass
class LMData:
    """Training/validation tokens ``[N]`` (read-only memmaps of the token cache, or tensors), the validation
    documents, the tokenizer, the corpus's name (for messages) and the cache file the tokens were read from."""

    train: np.ndarray | Tensor
    val: np.ndarray | Tensor
    val_docs: list[np.ndarray | Tensor]
    tokenizer: Tokenizer = field(default_factory=ByteTokenizer)
    source: str = "tiny-shakespeare"
    cache_file: Path | None = None

    def check_context(self, context: int) -> None:
        """Raise ``ValueError`` unless both splits hold more than one window of ``context + 1`` tokens."""
        unit = "bytes" if self.tokenizer.name == "bytes" else "tokens"
        for split, t in (("training", self.train), ("validation", self.val)):
            if len(t) <= context + 1:
                raise ValueError(f"the {split} split of {self.source} has {len(t)} {unit}, not more than one context "
                                 f"window of {context} + 1; use a larger corpus or a smaller --context")  # fmt: skip


def run_tokenizer(kind: str, vocab_size: int, run_dir: str | Path, data: str = "", gutenberg: bool = False,
                  val_fraction: float = 0.1) -> Tokenizer:  # fmt: skip
    """The tokenizer of the run in ``run_dir``: bytes, or the BPE saved there (on the first call trained on the
    training split of ``data`` and saved there as ``tokenizer.json``).

    Args:
        kind (str): ``"bytes"`` or ``"bpe"``.
        vocab_size (int): BPE vocabulary to train (ignored for bytes).
        run_dir (str | Path): the run directory.
        data (str, Optional): the corpus (``""`` = bundled tiny-shakespeare). Default: "".
        gutenberg (bool, Optional): strip Project Gutenberg headers/footers first. Default: False.
        val_fraction (float, Optional): held-out fraction; BPE never sees it. Default: 0.1.
    """

    def texts() -> list[bytes]:
        docs = [d for d in (read_document(f, gutenberg) for f in corpus_files(data or None)) if d]
        if not docs:
            raise ValueError(f"text corpus {data} is empty")
        return training_text(docs, val_fraction)

    return make_tokenizer(kind, vocab_size, run_dir, texts)


def cache_dir_of(run_dir: str | Path | None, cache_dir: str | Path | None = None) -> Path:
    """The token-cache folder of a run: ``cache_dir`` if given, else ``<run_dir>/cache`` if it exists (runs made
    before caches were shared), else :func:`innerloop.data.text.cache.default_cache_dir`."""
    if cache_dir:
        return Path(cache_dir)
    if run_dir is not None and (Path(run_dir) / "cache").is_dir():
        return Path(run_dir) / "cache"
    return default_cache_dir()


def load_data(data: str, tokenizer: Tokenizer, cache_dir: str | Path, gutenberg: bool = False,
              val_fraction: float = 0.1) -> LMData:  # fmt: skip
    """Tokens of corpus ``data`` from its token cache under ``cache_dir`` (built there if missing or stale), split as
    :func:`innerloop.data.text.cache.split_cache`. Check the split sizes with :meth:`LMData.check_context`.

    Args:
        data (str): a ``.txt`` file, a folder of them, or ``""`` (bundled tiny-shakespeare).
        tokenizer (Tokenizer): encodes the corpus (the run's, see :func:`run_tokenizer`).
        cache_dir (str | Path): the token-cache folder (see :func:`cache_dir_of`).
        gutenberg (bool, Optional): strip Project Gutenberg headers/footers first. Default: False.
        val_fraction (float, Optional): held-out fraction (of the bytes, or of the documents). Default: 0.1.
    """
    cache = open_cache(data or None, tokenizer, cache_dir, gutenberg)
    lengths = None if tokenizer.name == "bytes" else tokenizer.token_lengths()  # BPE: cut where its training text ends
    train, val, val_docs = split_cache(cache, val_fraction, lengths)
    return LMData(train, val, val_docs, tokenizer, data or "tiny-shakespeare", cache.bin_path)


def token_bytes_of(tok: Tokenizer) -> Tensor | None:
    """``[V]`` bytes per token for bits per byte (None for byte tokens: 1 each)."""
    return None if tok.name == "bytes" else torch.from_numpy(tok.token_lengths())
