"""The LM data of a run (innerloop.data.text.lm): plain arguments, one token cache shared between runs, clear errors,
and no import of the training package."""

import json
import subprocess
import sys

import pytest
import torch

from innerloop.data.text import (
    ByteTokenizer,
    cache_dir_of,
    default_cache_dir,
    load_data,
    load_documents,
    open_cache,
    run_tokenizer,
    split_corpus,
    token_bytes_of,
)


def test_default_cache_dir_follows_innerloop_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INNERLOOP_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "tokens"
    monkeypatch.delenv("INNERLOOP_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "innerloop" / "tokens"
    assert not (tmp_path / "home").exists()  # only a path: nothing is created until a cache is built


def test_cache_dir_of_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("INNERLOOP_CACHE", str(tmp_path / "user"))
    run = tmp_path / "run"
    assert cache_dir_of(run, str(tmp_path / "mine")) == tmp_path / "mine"  # --cache-dir wins
    assert cache_dir_of(run) == tmp_path / "user" / "tokens"  # shared by default
    (run / "cache").mkdir(parents=True)
    assert cache_dir_of(run) == run / "cache"  # a run made before caches were shared keeps its own
    assert cache_dir_of(None) == tmp_path / "user" / "tokens"


def test_runs_share_one_cache_and_get_the_in_memory_split(tmp_path, monkeypatch):
    monkeypatch.setenv("INNERLOOP_CACHE", str(tmp_path / "user"))
    tok = run_tokenizer("bytes", 256, tmp_path / "run_a")
    assert isinstance(tok, ByteTokenizer) and token_bytes_of(tok) is None
    d = load_data("", tok, cache_dir_of(tmp_path / "run_a"), val_fraction=0.1)
    ref_train, ref_val, _ = split_corpus(load_documents(None), 0.1)
    assert torch.equal(torch.from_numpy(d.train.astype("int64")), ref_train.long())
    assert torch.equal(torch.from_numpy(d.val.astype("int64")), ref_val.long())
    assert d.cache_file.parent == tmp_path / "user" / "tokens" and d.source == "tiny-shakespeare"
    index = json.loads(d.cache_file.with_suffix(".json").read_text())
    assert index["tokenizer"] == "bytes" and index["n_tokens"] == len(d.train) + len(d.val)
    # a second run finds the same cache: nothing is encoded again, no copy in its run directory
    again = open_cache(None, tok, cache_dir_of(tmp_path / "run_b"))
    assert again.status == "reused" and again.bin_path == d.cache_file
    files = sorted(p.name for p in d.cache_file.parent.iterdir())
    assert files == [d.cache_file.name, d.cache_file.with_suffix(".json").name]
    assert not (tmp_path / "run_a").exists() and not (tmp_path / "run_b").exists()


def test_check_context_is_a_clear_error(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_bytes(b"abcdefghij" * 10)
    d = load_data(str(corpus), ByteTokenizer(), tmp_path / "c", val_fraction=0.5)
    d.check_context(40)
    with pytest.raises(ValueError, match=r"training split of .*tiny.txt has 50 bytes.*smaller --context"):
        d.check_context(49)


def test_bpe_run_tokenizer_is_saved_in_the_run(tmp_path):
    pytest.importorskip("tokenizers", reason="the HuggingFace tokenizers package (extra 'bpe') is not installed")
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(b"the cat sat on the mat. " * 200)
    tok = run_tokenizer("bpe", 300, tmp_path / "run", str(corpus))
    assert (tmp_path / "run" / "tokenizer.json").is_file() and tok.vocab_size > 256
    assert run_tokenizer("bpe", 300, tmp_path / "run", str(corpus)).ident == tok.ident  # loaded, not retrained
    assert token_bytes_of(tok).shape == (tok.vocab_size,)


def test_data_and_eval_do_not_import_training():
    """Evaluation and the data layer stand alone: importing them (and building the arm task) pulls in no trainer."""
    code = (
        "import sys, innerloop.data.text, innerloop.data.fewshot, innerloop.data.synthetic as s, innerloop.eval\n"
        "s.make_task('arm')\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('innerloop.train', 'innerloop.synth')))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
