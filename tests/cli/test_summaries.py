"""What the commands print: a one-line header before training, the phase before a long evaluation, and under
``torchrun`` the summary from rank 0 only."""

from __future__ import annotations

import pytest

import innerloop.train.lm
from innerloop.cli.main import main

METRICS = {"steps": 3, "val_bpb": 2.5, "tokens_per_s": 1000.0, "params": 1234}


@pytest.fixture
def fake_train(monkeypatch):
    seen = []

    def train_lm(cfg, progress=False, fresh=False, extend=False):
        seen.append(cfg)
        return METRICS

    monkeypatch.setattr(innerloop.train.lm, "train_lm", train_lm)
    return seen


def test_lm_train_prints_a_header_then_the_summary(tmp_path, capsys, monkeypatch, fake_train):
    monkeypatch.delenv("RANK", raising=False)
    out = tmp_path / "run"
    argv = ["lm", "train", "--mixer", "gru", "--steps", "3", "--batch-size", "4", "--context", "32", "--device",
            "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    header, summary = capsys.readouterr().out.splitlines()
    assert header.startswith("innerloop lm train: gru (transformer backbone")
    assert "3 steps x 4 x 32 tokens, device cpu, out " + str(out) in header
    assert summary.startswith(f"{out}: 3 steps, val bits/byte 2.5000")


def test_lm_train_default_out_is_the_one_in_help(tmp_path, capsys, monkeypatch, fake_train):
    monkeypatch.chdir(tmp_path)
    assert main(["lm", "train", "--mixer", "gru", "--device", "cpu"]) == 0
    assert fake_train[0].out.startswith("runs/lm/gru-")


def test_only_rank_0_prints_under_torchrun(capsys, monkeypatch, tmp_path, fake_train):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["lm", "train", "--device", "cpu", "--out", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert main(["lm", "train", "--device", "cpu", "--out", str(tmp_path / "r")]) == 0
    assert "device cpu x 2 processes" in capsys.readouterr().out


def test_meta_train_and_eval_say_what_phase_runs(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["meta", "train", "--algorithm", "fomaml", "--shots", "3", "--meta-batch", "2", "--iterations", "2",
            "--eval-tasks", "4", "--eval-batch", "2", "--test-steps", "2", "--out", str(out), "--no-progress"]
    assert main(argv) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("innerloop meta train: fomaml on sinusoid 3-shot, 2 iterations x 2 tasks")
    assert lines[1] == "evaluating on 4 test tasks (3-shot, 2 inner steps) ..."
    assert lines[2].startswith("test mse after  0 steps")
    assert main(["meta", "eval", "--out", str(out), "--split", "validation"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"innerloop meta eval: {out} (fomaml on sinusoid); evaluating on 4 validation tasks")
    assert lines[1].startswith("validation mse after  0 steps")
