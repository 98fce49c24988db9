"""``innerloop lm ...`` and ``innerloop demo --quick`` end to end on tiny models (tmp dirs, seconds)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from innerloop.cli.main import main

TINY = ["--hidden-size", "32", "--num-attention-heads", "2", "--num-hidden-layers", "1", "--context", "32",
        "--batch-size", "4", "--eval-batches", "1", "--warmup-steps", "1", "--no-progress"]  # fmt: skip


def test_train_eval_generate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["lm", "train", "--steps", "3", "--out", str(run), *TINY]) == 0
    for f in ("config.json", "log.csv", "metrics.json", "loss_curve.png", "checkpoints/latest"):
        assert (run / f).exists(), f
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["steps"] == 3 and cfg["resolved"]["vocab_size"] == 256 and cfg["resolved"]["params"] > 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3
    assert main(["lm", "eval", "--run", str(run), "--length", "40", "--chunk", "8", "--bucket", "10"]) == 0
    printed = capsys.readouterr().out
    assert "bits/byte (on " in printed and "evenly spaced windows of 32 tokens" in printed  # says what it scored
    scored = json.loads((run / "eval.json").read_text())["run"]
    assert scored["context"] == 32 and 0 < scored["windows"] <= 4 and scored["val_tokens"] > 32
    assert (run / "position.csv").read_text().count("\n") == 1 + 4
    # --full: every target of the validation split, said and recorded
    assert main(["lm", "eval", "--run", str(run), "--full", "--stride", "8", "--out", str(tmp_path / "full")]) == 0
    full = json.loads((tmp_path / "full" / "eval.json").read_text())["run"]
    assert full["protocol"] == "full" and full["stride"] == 8 and full["scored_tokens"] == scored["val_tokens"] - 1
    assert "every one of the validation split's" in capsys.readouterr().out
    assert main(["lm", "eval", "--run", str(run), "--stride", "8"]) == 2  # --stride alone: refused
    assert main(["lm", "eval", "--run", str(run), "--full", "--stride", "33"]) == 2  # stride > context: refused
    err = capsys.readouterr().err
    assert "--stride is for --full" in err and "--stride 33 must be in 1..32 (the context): a larger stride" in err
    assert main(["lm", "generate", "--run", str(run), "--prompt", "KING:", "--max-new-tokens", "5", "--seed", "0"]) == 0
    capsys.readouterr()
    assert main(["lm", "generate", "--run", str(run), "--prompt", "KING:", "--max-new-tokens", "30", "--seed", "0",
                 "--temperature", "0"]) == 0  # fmt: skip
    full = capsys.readouterr().out[len("KING:") : -1]
    stop = full[5:7]
    assert main(["lm", "generate", "--run", str(run), "--prompt", "KING:", "--max-new-tokens", "30", "--seed", "0",
                 "--temperature", "0", "--stop", stop]) == 0  # fmt: skip
    assert capsys.readouterr().out == "KING:" + full[: full.find(stop)] + "\n"
    # resume: same flags, more steps is a config change -> clear error, exit code 2, nothing overwritten
    before = (run / "log.csv").read_text()
    assert main(["lm", "train", "--steps", "5", "--out", str(run), *TINY]) == 2
    assert "different run" in capsys.readouterr().err and (run / "log.csv").read_text() == before


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["lm", "train", "--mixer", "nope"], "invalid choice: 'nope'"),
        (["lm", "train", "--data", "/does/not/exist.txt"], "does not exist"),
        (["lm", "generate", "--run", "/no/run", "--top-p", "2"], "top_p must be in"),
        (["lm", "generate", "--run", "/no/run", "--temperature", "inf", "--top-k", "1"], "and finite"),
        (["lm", "generate", "--run", "/no/run"], "config.json not found"),
        (["lm", "generate", "--run", "/no/run", "--stop", ""], "--stop '' would end before the first token"),
        (["lm", "eval", "--run", "/no/run"], "config.json not found"),
        (["lm", "compare", "--mixers", "ttt_linear", "lsmt"], "invalid choice: 'lsmt'"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, capsys, argv, match):
    argv = [*argv, *(["--out", str(tmp_path / "x")] if argv[1] in ("train", "compare") else [])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_train_under_torchrun_needs_out(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["lm", "train", "--steps", "1", *TINY]) == 2
    assert "under torchrun, give the run's folder with --out" in capsys.readouterr().err


def test_compare_equal_budget(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["lm", "compare", "--mixers", "ttt_linear", "attention", "--target-params", "30000", "--steps", "2",
                 "--out", str(out), *TINY[2:]]) == 0  # fmt: skip  (the width is --target-params')
    rows = json.loads((out / "results.json").read_text())
    assert [r["mixer"] for r in rows] == ["ttt_linear", "attention"]
    assert rows[0]["tokens"] == rows[1]["tokens"] == 2 * 4 * 32
    assert all(abs(r["params"] - 30000) / 30000 < 0.25 for r in rows)
    assert (out / "results.md").exists() and (out / "loss_curves.png").exists()
    assert "| ttt_linear |" in capsys.readouterr().out
    # generating past the training context: a note for attention (RoPE extrapolated), none for a recurrent mixer
    for mixer, noted in (("attention", True), ("ttt_linear", False)):
        assert main(["lm", "generate", "--run", str(out / mixer), "--prompt", "ab", "--max-new-tokens", "30"]) == 0
        assert "note: attention" not in capsys.readouterr().err  # 2 + 30 tokens: within the context
        assert main(["lm", "generate", "--run", str(out / mixer), "--prompt", "abc", "--max-new-tokens", "30"]) == 0
        err = capsys.readouterr().err
        assert ("note: attention was trained on 32-token windows" in err) == noted


def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| TTT-Linear |" in text and "| Transformer |" in text and "ROMEO:" in text
    rows = json.loads((out / "results.json").read_text())
    assert rows[0]["tokens"] == rows[1]["tokens"] and rows[0]["params"] == pytest.approx(rows[1]["params"], rel=0.1)
    assert (out / "loss_curves.png").exists()
    assert (out / "ttt_linear" / "config.json").exists() and (out / "attention" / "metrics.json").exists()


def test_python_dash_m(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "innerloop", "lm", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "compare" in r.stdout


# --- tokenizers and token caches through the CLI -------------------------------------------------------------------


def small_corpus(tmp_path, n_bytes=60_000):
    from innerloop.data.text import TINY_SHAKESPEARE

    path = tmp_path / "small.txt"
    path.write_bytes(TINY_SHAKESPEARE.read_bytes()[:n_bytes])
    return path


def test_bpe_train_eval_generate(tmp_path, capsys):
    pytest.importorskip("tokenizers", reason="the HuggingFace tokenizers package (extra 'bpe') is not installed")
    from innerloop.data.text.tokenizer import load_tokenizer

    run, data = tmp_path / "bpe", small_corpus(tmp_path)
    argv = ["lm", "train", "--steps", "3", "--out", str(run), "--data", str(data), "--tokenizer", "bpe",
            "--vocab-size", "300", *TINY]  # fmt: skip
    assert main(argv) == 0
    tok = load_tokenizer("bpe", run)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["tokenizer"] == "bpe" and cfg["resolved"]["tokenizer"] == tok.ident
    assert 256 < tok.vocab_size <= 300 and cfg["resolved"]["vocab_size"] == tok.vocab_size
    assert cfg["resolved"]["train_tokens"] < 0.9 * 60_000 * 0.8  # BPE tokens, not bytes
    cache_file = Path(cfg["resolved"]["token_cache"])  # the shared user cache, recorded by the run
    assert cache_file.is_file() and cache_file.parent == Path(os.environ["INNERLOOP_CACHE"]) / "tokens"
    assert not (run / "cache").exists()
    m = json.loads((run / "metrics.json").read_text())
    assert 0 < m["val_bpb"] < 0.75 * m["val_loss"] / math.log(2)  # bits per *byte*: a BPE token holds > 1 byte
    capsys.readouterr()
    assert main(["lm", "eval", "--run", str(run), "--length", "20", "--chunk", "7", "--bucket", "10"]) == 0
    out = capsys.readouterr().out
    assert "nats/token" in out and "bits/byte" in out
    assert json.loads((run / "eval.json").read_text())["bpe"]["tokenizer"] == tok.ident
    assert main(["lm", "generate", "--run", str(run), "--prompt", "KING:", "--max-new-tokens", "8", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("KING:")
    # the tokenizer file is the run's: without it eval/generate fail clearly instead of guessing
    (run / "tokenizer.json").rename(run / "moved.json")
    assert main(["lm", "generate", "--run", str(run)]) == 2
    assert "tokenizer.json not found" in capsys.readouterr().err


def test_resume_after_kill_is_exact_with_bpe_and_shared_cache(tmp_path):
    pytest.importorskip("tokenizers", reason="the HuggingFace tokenizers package (extra 'bpe') is not installed")
    from innerloop.train import Callback, TrainConfig, train_lm
    from innerloop.train.lm import load_run

    class Kill(Callback):
        def on_step_start(self, trainer, step):
            if step == 4:
                raise KeyboardInterrupt

    class Record(Callback):
        def __init__(self) -> None:
            self.losses = {}

        def on_step_end(self, trainer, step, logs):
            self.losses[step] = logs["loss"]

    data, cache = small_corpus(tmp_path), tmp_path / "shared_cache"

    def cfg(name):
        return TrainConfig.from_flat(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, context=32,
                                     batch_size=4,
                           steps=6, warmup_steps=1, eval_every=3, eval_batches=1, log_every=1, checkpoint_every=2,
                           data=str(data), tokenizer="bpe", vocab_size=300, cache_dir=str(cache),
                           out=str(tmp_path / name))  # fmt: skip

    a, b = Record(), Record()
    m_a = train_lm(cfg("straight"), callbacks=[a])
    with pytest.raises(KeyboardInterrupt):
        train_lm(cfg("killed"), callbacks=[b, Kill()])
    m_b = train_lm(cfg("killed"), callbacks=[b])
    assert a.losses == b.losses and len(a.losses) == 6 and m_a["val_loss"] == m_b["val_loss"]
    assert len(list(cache.glob("*.bin"))) == 1  # both runs trained the same tokenizer: one cache, encoded once
    wa, wb = load_run(tmp_path / "straight")[0].state_dict(), load_run(tmp_path / "killed")[0].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--tokenizer", "wordpiece"], "invalid choice: 'wordpiece'"),
        (["--tokenizer", "bytes", "--vocab-size", "1000"], "--tokenizer bytes has vocab_size 256"),
        (["--tokenizer", "bpe", "--vocab-size", "100"], "needs --vocab-size > 256"),
    ],
)
def test_bad_tokenizer_flags(tmp_path, capsys, flags, match):
    assert main(["lm", "train", "--out", str(tmp_path / "x"), *flags]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_missing_tokenizers_package_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tokenizers", None)
    argv = ["lm", "train", "--steps", "1", "--out", str(tmp_path / "r"), "--data", str(small_corpus(tmp_path)),
            "--tokenizer", "bpe", *TINY]  # fmt: skip
    assert main(argv) == 2
    assert "innerloop[bpe]" in capsys.readouterr().err


def test_compare_refuses_a_width_that_target_params_would_replace(tmp_path, capsys):
    rc = main(["lm", "compare", "--mixers", "gru", "--target-params", "20000", "--hidden-size", "64", "--steps", "1",
               "--out", str(tmp_path / "c")])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert "--target-params chooses each mixer's hidden size" in err and "--hidden-size" in err
    assert not (tmp_path / "c").exists()


def test_eval_of_runs_with_the_same_folder_name_keeps_each(tmp_path, capsys):
    """Two runs named alike (``lm compare`` writes ``<out>/<mixer>``) were keyed by the folder name alone: the second
    overwrote the first in eval.json and position.csv without a word. Each is named by as many parents as differ."""
    import shutil

    first, second = tmp_path / "cmp1" / "ttt_linear", tmp_path / "cmp2" / "ttt_linear"
    data = small_corpus(tmp_path, 4_000)
    assert main(["lm", "train", "--steps", "1", "--out", str(first), "--data", str(data), *TINY]) == 0
    shutil.copytree(first, second)
    out = tmp_path / "eval"
    assert main(["lm", "eval", "--run", str(first), str(second), "--length", "40", "--out", str(out)]) == 0
    scored = json.loads((out / "eval.json").read_text())
    assert sorted(scored) == ["cmp1/ttt_linear", "cmp2/ttt_linear"]
    assert scored["cmp1/ttt_linear"]["loss"] == scored["cmp2/ttt_linear"]["loss"]  # the same weights
    assert scored["cmp1/ttt_linear"]["data"] == str(data)  # which corpus was scored
    names = {line.split(",")[0] for line in (out / "position.csv").read_text().splitlines()[1:]}
    assert names == {"cmp1/ttt_linear", "cmp2/ttt_linear"}
    capsys.readouterr()
    assert main(["lm", "eval", "--run", str(first), f"{first}/"]) == 2  # one folder written two ways
    assert "names the same folder twice" in capsys.readouterr().err


def test_eval_reproduces_the_runs_evaluation_in_its_precision(tmp_path, capsys):
    # a bf16 run: lm eval scores under the run's autocast by default, so it reproduces metrics.json's val_loss
    # (in fp32 it scored otherwise, by bf16 rounding); --dtype fp32 scores in float32, and eval.json says which
    run = tmp_path / "bf16"
    assert main(["lm", "train", "--steps", "2", "--dtype", "bf16", "--out", str(run), *TINY]) == 0
    val = json.loads((run / "metrics.json").read_text())["val_loss"]
    scores = {}
    for dtype in ("run", "fp32"):
        assert main(["lm", "eval", "--run", str(run), "--dtype", dtype]) == 0
        scores[dtype] = json.loads((run / "eval.json").read_text())["bf16"]
    assert scores["run"]["loss"] == pytest.approx(val, rel=1e-6) and scores["run"]["dtype"] == "bf16"
    assert scores["fp32"]["dtype"] == "fp32" and scores["fp32"]["loss"] != pytest.approx(val, rel=1e-6)
    capsys.readouterr()
