"""Token caches: equal to in-memory encoding, re-used or rebuilt, robust to damage, splits that respect documents."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from innerloop.data.text import cache as cmod
from innerloop.data.text.cache import open_cache, split_cache
from innerloop.data.text.corpus import load_documents, split_corpus
from innerloop.data.text.tokenizer import ByteTokenizer, train_bpe
from innerloop.data.text.windows import gather_windows, random_windows


def make_books(folder, n=5):
    """``n`` documents; document ``i`` uses only the letter ``chr(65 + i)`` so a token tells its document."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i:02d}.txt").write_bytes((chr(65 + i) * 7 + " ").encode() * (20 + 3 * i))
    return folder


def tokenizers_for(books):
    toks = [ByteTokenizer()]
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        return toks
    return [*toks, train_bpe([p.read_bytes() for p in sorted(books.glob("*.txt"))], vocab_size=300)]


def test_cache_equals_in_memory_encoding_and_is_reused(tmp_path):
    books = make_books(tmp_path / "books")
    (books / "empty.txt").write_bytes(b"")  # skipped, as load_documents does
    docs = load_documents(books)
    for tok in tokenizers_for(books):
        c = open_cache(books, tok, tmp_path / "cache")
        assert c.status == "built" and isinstance(c.tokens, np.memmap) and not c.tokens.flags.writeable
        assert c.tokens.dtype == (np.uint8 if tok.name == "bytes" else np.uint16)
        assert len(c.docs) == len(docs) == 5
        for d, ref in zip(c.docs, docs, strict=True):
            assert np.array_equal(d, tok.encode(bytes(ref.numpy())))
        index = json.loads(c.bin_path.with_suffix(".json").read_text())
        assert index["tokenizer"] == tok.ident and index["doc_offsets"][-1] == len(c.tokens)
        assert [os.path.basename(f["path"]) for f in index["files"]] == [f"{i:02d}.txt" for i in range(5)] + [
            "empty.txt"]  # fmt: skip
        again = open_cache(books, tok, tmp_path / "cache")
        assert again.status == "reused" and np.array_equal(again.tokens, c.tokens)
    if len(tokenizers_for(books)) == 1:
        pytest.skip("tokenizers not installed: only the bytes cache was checked (pip install 'innerloop[bpe]')")


def test_bytes_cache_splits_match_split_corpus(tmp_path):
    # one document: split by tokens, as split_corpus splits the bytes
    c = open_cache(None, ByteTokenizer(), tmp_path / "c")
    tr, va, vd = split_cache(c, 0.1)
    ref_tr, ref_va, _ = split_corpus(load_documents(None), 0.1)
    assert np.array_equal(tr, ref_tr.numpy()) and np.array_equal(va, ref_va.numpy())
    assert len(vd) == 1 and np.array_equal(vd[0], va)
    # a folder: split by document
    books = make_books(tmp_path / "books")
    c = open_cache(books, ByteTokenizer(), tmp_path / "c")
    for f in (0.2, 0.4):
        tr, va, vd = split_cache(c, f)
        ref_tr, ref_va, ref_vd = split_corpus(load_documents(books), f)
        assert np.array_equal(tr, ref_tr.numpy()) and np.array_equal(va, ref_va.numpy())
        assert [d.tolist() for d in vd] == [d.tolist() for d in ref_vd]
    with pytest.raises(ValueError, match="val_fraction"):
        split_cache(c, 1.0)


def test_windows_never_cross_the_split(tmp_path):
    books = make_books(tmp_path / "books")
    c = open_cache(books, ByteTokenizer(), tmp_path / "c")
    tr, va, vd = split_cache(c, 0.4)  # documents D, E held out
    held_out = {ord("D"), ord("E")}
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x, y = random_windows(tr, 8, 16, g)
        assert not held_out & (set(x.flatten().tolist()) | set(y.flatten().tolist()))
        x, y = random_windows(va, 8, 16, g)
        assert set(x.flatten().tolist()) <= held_out | {ord(" ")}
    assert [set(d.tolist()) - {32} for d in vd] == [{ord("D")}, {ord("E")}]  # each val doc is one whole document


def test_memmap_windows_equal_tensor_windows(tmp_path):
    """Same generator -> same batches from the memmap as from the in-memory tensor (resume exactness holds)."""
    c = open_cache(None, ByteTokenizer(), tmp_path / "c")
    tr, _, _ = split_cache(c, 0.1)
    ref_tr, _, _ = split_corpus(load_documents(None), 0.1)
    for seed in range(3):
        a = random_windows(tr, 4, 33, torch.Generator().manual_seed(seed))
        b = random_windows(ref_tr, 4, 33, torch.Generator().manual_seed(seed))
        assert all(torch.equal(u, v) and u.dtype == torch.int64 for u, v in zip(a, b, strict=True))
    starts = torch.tensor([0, 5, 1000])
    assert torch.equal(gather_windows(tr, starts, 7), gather_windows(ref_tr, starts, 7))
    with pytest.raises(ValueError, match="smaller than one context window"):
        random_windows(tr[:10], 2, 10, torch.Generator())


def test_source_changes_rebuild(tmp_path):
    books = make_books(tmp_path / "books")
    tok, cdir = ByteTokenizer(), tmp_path / "c"
    open_cache(books, tok, cdir)
    p = books / "01.txt"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same content: checksum says re-use
    assert open_cache(books, tok, cdir).status == "reused"
    p.write_bytes(p.read_bytes().replace(b"B", b"b", 1))  # same size, new content
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    c = open_cache(books, tok, cdir)
    assert c.status == "built" and "changed content" in c.reason and ord("b") in c.docs[1].tolist()
    p.write_bytes(b"shorter")
    c = open_cache(books, tok, cdir)
    assert "changed size" in c.reason and bytes(c.docs[1]) == b"shorter"
    (books / "99.txt").write_bytes(b"new document")
    c = open_cache(books, tok, cdir)
    assert "files changed" in c.reason and len(c.docs) == 6
    # the Gutenberg flag and the tokenizer are part of the key: their own cache files
    g = open_cache(books, tok, cdir, gutenberg=True)
    assert g.bin_path != c.bin_path and open_cache(books, tok, cdir, gutenberg=True).status == "reused"


def test_gutenberg_cache_rebuilt_when_the_stripping_rules_change(tmp_path, monkeypatch):
    """A cache built with --gutenberg holds stripped text: new stripping rules must not re-use it."""
    books = make_books(tmp_path / "books")
    tok, cdir = ByteTokenizer(), tmp_path / "c"
    open_cache(books, tok, cdir, gutenberg=True)
    open_cache(books, tok, cdir)
    monkeypatch.setattr(cmod, "GUTENBERG_RULES", cmod.GUTENBERG_RULES + 1)
    c = open_cache(books, tok, cdir, gutenberg=True)
    assert c.status == "built" and "stripping changed" in c.reason
    assert open_cache(books, tok, cdir).status == "reused"  # caches of unstripped text are not affected


@pytest.mark.parametrize("damage", ["truncate", "flip", "bad_json", "no_bin", "wrong_tokenizer"])
def test_damaged_cache_is_rebuilt(tmp_path, damage):
    books = make_books(tmp_path / "books")
    tok, cdir = ByteTokenizer(), tmp_path / "c"
    good = open_cache(books, tok, cdir)
    ref = np.array(good.tokens)
    bin_path, index_path = good.bin_path, good.bin_path.with_suffix(".json")
    del good
    if damage == "truncate":
        bin_path.write_bytes(bin_path.read_bytes()[:-10])
    elif damage == "flip":
        raw = bytearray(bin_path.read_bytes())
        raw[7] ^= 1
        bin_path.write_bytes(bytes(raw))
    elif damage == "bad_json":
        index_path.write_text('{"version": 1, "tokeni')
    elif damage == "no_bin":
        bin_path.unlink()
    else:
        index = json.loads(index_path.read_text())
        index_path.write_text(json.dumps({**index, "tokenizer": "bpe-0123"}))
    c = open_cache(books, tok, cdir)
    assert c.status == "built" and c.reason, damage
    assert np.array_equal(c.tokens, ref)
    assert open_cache(books, tok, cdir).status == "reused"


def test_killed_build_leaves_old_cache_and_no_debris(tmp_path, monkeypatch):
    books = make_books(tmp_path / "books")
    tok, cdir = ByteTokenizer(), tmp_path / "c"
    old = np.array(open_cache(books, tok, cdir).tokens)
    (books / "02.txt").write_bytes(b"changed")
    calls = []

    def dying_encode(data: bytes):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed in the middle of the rebuild
        return ByteTokenizer.encode(tok, data)

    monkeypatch.setattr(tok, "encode", dying_encode)
    with pytest.raises(KeyboardInterrupt):
        open_cache(books, tok, cdir)
    assert sorted(p.suffix for p in cdir.iterdir()) == [".bin", ".json"]  # no temporary file left
    monkeypatch.undo()
    index = json.loads(next(cdir.glob("*.json")).read_text())
    assert index["doc_offsets"][-1] == len(old)  # the old index still describes the old, whole .bin
    c = open_cache(books, tok, cdir)
    assert c.status == "built" and bytes(c.docs[2]) == b"changed"


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_cache(tmp_path / "missing", ByteTokenizer(), tmp_path / "c")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "a.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        open_cache(tmp_path / "e", ByteTokenizer(), tmp_path / "c")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(OSError, match="cannot write the token cache"):
        open_cache(None, ByteTokenizer(), tmp_path / "file" / "cache")
    assert cmod._dtype_for(65536) == np.uint16 and cmod._dtype_for(65537) == np.uint32


def test_one_bpe_document_is_split_where_the_tokenizers_training_text_ends(tmp_path):
    """The BPE is trained on the first 90% of the bytes (training_text); the tokens were cut at 90% of the *tokens*,
    which moved validation text into training or the reverse (tiny-shakespeare: 9.3% of the bytes held out). Now every
    training token lies within the BPE's training bytes and the validation starts at most one token before them."""
    pytest.importorskip("tokenizers")
    from innerloop.data.text.corpus import training_text
    from innerloop.data.text.tokenizer import train_bpe

    text = b"".join(b"short words %d; " % i if i < 300 else b"a much longer and rarer phrase %d. " % i
                    for i in range(400))  # its end compresses differently from its start  # fmt: skip
    corpus = tmp_path / "one.txt"
    corpus.write_bytes(text)
    seen = training_text([text], 0.1)[0]
    tok = train_bpe([seen], vocab_size=300)
    c = open_cache(corpus, tok, tmp_path / "c")
    tr, va, vd = split_cache(c, 0.1, tok.token_lengths())
    lengths = tok.token_lengths()
    assert int(lengths[tr].sum()) <= len(seen) < int(lengths[tr].sum()) + int(lengths[va[0]])
    assert tok.decode(tr.tolist()) == seen[: int(lengths[tr].sum())]
    assert len(tr) + len(va) == len(c.docs[0]) and np.array_equal(vd[0], va)
    assert int(lengths[tr].sum()) + int(lengths[va].sum()) == len(text)
    assert len(tr) != int(len(c.docs[0]) * 0.9)  # the old cut by tokens would differ here
    assert cmod._tokens_within(c.docs[0], lengths, 0.1, block=7) == len(tr)  # read in blocks: the same cut
