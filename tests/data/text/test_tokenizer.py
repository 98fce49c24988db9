"""Tokenizers: bytes, and the local byte-level BPE checked against a plain-Python BPE reference encoder."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

from innerloop.data.text import tokenizer as tkmod
from innerloop.data.text.tokenizer import ByteTokenizer, load_tokenizer, make_tokenizer, train_bpe

TEXT = (b"First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        b"First Citizen:\nYou are all resolved rather to die than to famish?\n\n" * 20
        + "Caf\u00e9 na\u00efve \u65e5\u672c\u8a9e 123 4567!!\n".encode() * 10)  # fmt: skip
ODD = [b"", b"a", b"\xff\xfe\x00abc", b"  \n\n\t x", "\u00e9\u00e9 \U0001f600".encode(), bytes(range(256)),
       b"\x85\xa0 word\x85", b"First Citizen:\n\nSpeak, speak."]  # fmt: skip


def test_bytes():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256 and tok.ident == "bytes"
    for s in ODD:
        ids = tok.encode(s)
        assert ids.dtype == np.int64 and ids.tolist() == list(s) and tok.decode(ids) == s
    assert tok.token_lengths().tolist() == [1] * 256
    assert load_tokenizer("bytes").vocab_size == 256
    with pytest.raises(ValueError, match="tokenizer must be 'bytes' or 'bpe'"):
        load_tokenizer("wordpiece")


def reference_bpe_encode(tok_json: dict, data: bytes) -> list[int]:
    """Obviously-correct BPE: cut pre-tokens with Python's ``re``, then merge the lowest-ranked adjacent pair
    (leftmost first) until none is in the merge list."""
    vocab = tok_json["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in tok_json["model"]["merges"]]
    rank = {m: i for i, m in enumerate(merges)}
    ids = []
    for word in re.findall(tkmod._PATTERN, data.decode("latin-1")):
        sym = list(word)
        while len(sym) > 1:
            pairs = [(rank.get((a, b), len(rank)), i) for i, (a, b) in enumerate(zip(sym, sym[1:], strict=False))]
            r, i = min(pairs)
            if r == len(rank):
                break
            sym[i : i + 2] = [sym[i] + sym[i + 1]]
        ids += [vocab[s] for s in sym]
    return ids


@pytest.fixture(scope="module")
def bpe():
    pytest.importorskip("tokenizers", reason="the HuggingFace tokenizers package (extra 'bpe') is not installed")
    return train_bpe([TEXT], vocab_size=320)


def test_bpe_matches_reference_and_round_trips(bpe):
    assert 256 < bpe.vocab_size <= 320 and bpe.ident.startswith("bpe-")
    tok_json = json.loads(bpe._tok.to_str())
    for s in [TEXT, *ODD]:
        ids = bpe.encode(s)
        assert ids.tolist() == reference_bpe_encode(tok_json, s), s[:40]
        assert bpe.decode(ids) == s
        assert int(bpe.token_lengths()[ids].sum()) == len(s)
    assert len(bpe.encode(TEXT)) < 0.7 * len(TEXT)  # it does compress what it was trained on
    rng = np.random.default_rng(0)
    for _ in range(5):  # arbitrary bytes: never unknown, always exact
        s = rng.integers(0, 256, 200).astype(np.uint8).tobytes()
        assert bpe.decode(bpe.encode(s)) == s


def test_bpe_chunked_encoding_is_exact(bpe, monkeypatch):
    whole = bpe.encode(TEXT)
    monkeypatch.setattr(tkmod, "_CHUNK", 50)
    assert len(tkmod._pieces(TEXT)) > 10
    assert np.array_equal(bpe.encode(TEXT), whole)


def test_bpe_deterministic_save_load(bpe, tmp_path):
    again = train_bpe([TEXT], vocab_size=320)
    assert again.ident == bpe.ident
    bpe.save(tmp_path)
    loaded = load_tokenizer("bpe", tmp_path)
    assert loaded.ident == bpe.ident and np.array_equal(loaded.encode(TEXT), bpe.encode(TEXT))
    # make_tokenizer loads what is saved (no retraining: texts is never called)
    got = make_tokenizer("bpe", 999, tmp_path, lambda: pytest.fail("retrained instead of loading"))
    assert got.ident == bpe.ident
    fresh = make_tokenizer("bpe", 300, tmp_path / "new", lambda: [TEXT])
    assert (tmp_path / "new" / "tokenizer.json").is_file() and fresh.vocab_size <= 300


def test_bpe_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="vocab_size must be > 256"):
        train_bpe([TEXT], vocab_size=256)
    with pytest.raises(FileNotFoundError, match="tokenizer.json not found"):
        load_tokenizer("bpe", tmp_path)
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # simulate the package missing
    with pytest.raises(ImportError, match=r"innerloop\[bpe\]"):
        train_bpe([TEXT], vocab_size=300)
