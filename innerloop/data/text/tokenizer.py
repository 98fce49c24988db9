"""Tokenizers for the LM workbench: bytes (vocab 256, the default) and a byte-level BPE trained locally.

Both map raw ``bytes`` to token ids and back exactly, whatever the encoding (UTF-8 or not). The BPE one is trained with
the HuggingFace ``tokenizers`` package (the ``bpe`` extra) on the corpus's training text and saved as
``tokenizer.json`` in the run directory, so ``lm eval`` / ``lm generate`` of a run use the tokenizer it trained with.

How the BPE sees bytes: every byte ``b`` is the character ``chr(b)`` (the latin-1 view), so the base alphabet is exactly
the 256 bytes, nothing is ever unknown, and a token decodes to bytes by ``token.encode("latin-1")``. A pre-tokenizer
splits words (ASCII letters and any byte >= 0x80, so UTF-8 letters stay inside words), numbers, punctuation runs and
whitespace runs, GPT-2 style; merges never cross those pieces.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from innerloop.data._io import atomic_write_bytes

__all__ = ["BPETokenizer", "ByteTokenizer", "Tokenizer", "load_tokenizer", "make_tokenizer", "train_bpe"]

TOKENIZER_FILE = "tokenizer.json"
_WS = " \t\n\r\x0b\x0c"
_HI = "\u0080-\u00ff"  # bytes >= 0x80 (UTF-8 lead/continuation bytes) count as letters
_PATTERN = f" ?[A-Za-z{_HI}]+| ?[0-9]+| ?[^{_WS}A-Za-z0-9{_HI}]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"
_CHUNK = 1 << 20  # encode long documents in ~1 MiB pieces cut at pre-token boundaries (exact, see _pieces)


class Tokenizer:
    """Interface: ``encode(bytes) -> [N]`` int64 ids, ``decode(ids) -> bytes``, ``token_bytes(id)``, ``vocab_size``.

    ``ident`` names the tokenizer and changes with its content (token caches key on it).
    """

    name: str = ""
    vocab_size: int = 0

    @property
    def ident(self) -> str:
        raise NotImplementedError

    def encode(self, data: bytes) -> np.ndarray:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.token_bytes(int(i)) for i in ids)

    def token_bytes(self, token_id: int) -> bytes:
        raise NotImplementedError

    def token_lengths(self) -> np.ndarray:
        """``[V]`` int64 bytes per token (bits per byte = total bits / bytes of the predicted tokens)."""
        return np.array([len(self.token_bytes(i)) for i in range(self.vocab_size)], dtype=np.int64)

    def save(self, directory: str | Path) -> None:
        """Write what :func:`load_tokenizer` needs into ``directory`` (nothing for bytes)."""


class ByteTokenizer(Tokenizer):
    """Token = byte, vocab 256: no training, no download, any language or binary text."""

    name, vocab_size = "bytes", 256

    @property
    def ident(self) -> str:
        return "bytes"

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Iterable[int]) -> bytes:
        return bytes(int(i) for i in ids)

    def token_bytes(self, token_id: int) -> bytes:
        return bytes([token_id])

    def token_lengths(self) -> np.ndarray:
        return np.ones(256, dtype=np.int64)


def _require_tokenizers():
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError("--tokenizer bpe needs the HuggingFace tokenizers package: pip install 'innerloop[bpe]' "
                          "(or use --tokenizer bytes)") from e  # fmt: skip
    return tokenizers


def _pieces(data: bytes) -> list[str]:
    """``data`` as latin-1 text cut into ~``_CHUNK`` pieces, each cut after a newline followed by a non-whitespace
    byte: the pre-tokenizer always splits there, so encoding the pieces one by one equals encoding the whole."""
    text = data.decode("latin-1")
    out, start = [], 0
    while len(text) - start > _CHUNK:
        cut = start + _CHUNK
        while cut < len(text) and not (text[cut - 1] == "\n" and text[cut] not in _WS):
            cut += 1
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


class BPETokenizer(Tokenizer):
    """Byte-level BPE (HuggingFace ``tokenizers``) over the 256 bytes; build with :func:`train_bpe` or load."""

    name = "bpe"

    def __init__(self, tok) -> None:
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()
        self._bytes = [tok.id_to_token(i).encode("latin-1") for i in range(self.vocab_size)]
        self._ident = "bpe-" + hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]

    @property
    def ident(self) -> str:
        return self._ident

    def encode(self, data: bytes) -> np.ndarray:
        if not data:
            return np.zeros(0, dtype=np.int64)
        encs = self._tok.encode_batch(_pieces(data), add_special_tokens=False)
        return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encs])

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def save(self, directory: str | Path) -> None:
        atomic_write_bytes(Path(directory) / TOKENIZER_FILE, self._tok.to_str(pretty=True).encode())

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        tk = _require_tokenizers()
        return cls(tk.Tokenizer.from_file(str(path)))


def train_bpe(texts: Iterable[bytes], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
    """Train a byte-level BPE of at most ``vocab_size`` tokens (256 bytes + merges) on ``texts``.

    Args:
        texts (Iterable[bytes]): training documents (raw bytes, any encoding).
        vocab_size (int): > 256. Fewer tokens result when the text has no more pairs seen ``min_frequency`` times.
        min_frequency (int, Optional): minimum count of a merged pair. Default: 2.
    """
    if vocab_size <= 256:
        raise ValueError(f"BPE vocab_size must be > 256 (256 byte tokens + merges), got {vocab_size}")
    tk = _require_tokenizers()
    from tokenizers import Regex, models, pre_tokenizers, trainers

    tok = tk.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_PATTERN), behavior="isolated")
    alphabet = [chr(b) for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, initial_alphabet=alphabet,
                                  limit_alphabet=256, show_progress=False, special_tokens=[])  # fmt: skip
    tok.train_from_iterator((p for t in texts for p in _pieces(t)), trainer=trainer)
    return BPETokenizer(tok)


def load_tokenizer(kind: str, directory: str | Path | None = None) -> Tokenizer:
    """The tokenizer of a run: ``bytes``, or ``bpe`` read from ``directory/tokenizer.json``."""
    if kind == "bytes":
        return ByteTokenizer()
    if kind != "bpe":
        raise ValueError(f"tokenizer must be 'bytes' or 'bpe', got {kind!r}")
    path = Path(directory or ".") / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a --tokenizer bpe run keeps its trained tokenizer there")
    return BPETokenizer.load(path)


def make_tokenizer(kind: str, vocab_size: int, directory: str | Path | None,
                   train_texts: Callable[[], Iterable[bytes]]) -> Tokenizer:  # fmt: skip
    """Load the run's tokenizer from ``directory`` if saved there, else build it (BPE: train on ``train_texts()``)
    and save it into ``directory``."""
    if kind == "bytes":
        return ByteTokenizer()
    if directory is not None and (Path(directory) / TOKENIZER_FILE).is_file():
        tok = load_tokenizer(kind, directory)
        return tok
    tok = train_bpe(train_texts(), vocab_size)
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
        tok.save(directory)
    return tok


def describe(tok: Tokenizer) -> str:
    return json.dumps({"name": tok.name, "vocab_size": tok.vocab_size, "ident": tok.ident})
