"""``innerloop lm ...`` and ``innerloop demo --quick`` end to end on tiny models (tmp dirs, seconds)."""

from __future__ import annotations

import json

import pytest

from innerloop.cli.main import main

TINY = ["--hidden-size", "32", "--num-attention-heads", "2", "--num-hidden-layers", "1", "--context", "32",
        "--batch-size", "4", "--eval-batches", "1", "--warmup-steps", "1", "--no-progress"]  # fmt: skip


def test_train_eval_generate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["lm", "train", "--steps", "3", "--out", str(run), *TINY]) == 0
    for f in ("config.json", "log.csv", "metrics.json", "loss_curve.png", "checkpoints/latest"):
        assert (run / f).exists(), f
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["steps"] == 3 and cfg["resolved"]["lm_config"]["vocab_size"] == 256 and cfg["resolved"]["params"] > 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3
    assert main(["lm", "eval", "--run", str(run), "--length", "40", "--chunk", "8", "--bucket", "10"]) == 0
    assert "bits/byte" in capsys.readouterr().out
    assert (run / "position.csv").read_text().count("\n") == 1 + 4
    assert main(["lm", "generate", "--run", str(run), "--prompt", "KING:", "--max-new-tokens", "5", "--seed", "0"]) == 0
    # resume: same flags, more steps is a config change -> clear error, exit code 2, nothing overwritten
    before = (run / "log.csv").read_text()
    assert main(["lm", "train", "--steps", "5", "--out", str(run), *TINY]) == 2
    assert "different run" in capsys.readouterr().err and (run / "log.csv").read_text() == before


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["lm", "train", "--mixer", "nope"], "unknown mixer 'nope'"),
        (["lm", "train", "--data", "/does/not/exist.txt"], "does not exist"),
        (["lm", "generate", "--run", "/no/run", "--top-p", "2"], "top_p must be in"),
        (["lm", "generate", "--run", "/no/run"], "config.json not found"),
        (["lm", "eval", "--run", "/no/run"], "config.json not found"),
        (["lm", "compare", "--mixers", "ttt_linear", "lsmt"], "unknown mixer"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, capsys, argv, match):
    argv = [*argv, *(["--out", str(tmp_path / "x")] if argv[1] in ("train", "compare") else [])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_compare_equal_budget(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["lm", "compare", "--mixers", "ttt_linear", "attention", "--target-params", "30000", "--steps", "2",
                 "--out", str(out), *TINY]) == 0  # fmt: skip
    rows = json.loads((out / "results.json").read_text())
    assert [r["mixer"] for r in rows] == ["ttt_linear", "attention"]
    assert rows[0]["tokens"] == rows[1]["tokens"] == 2 * 4 * 32
    assert all(abs(r["params"] - 30000) / 30000 < 0.25 for r in rows)
    assert (out / "results.md").exists() and (out / "loss_curves.png").exists()
    assert "| ttt_linear |" in capsys.readouterr().out


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
