"""``innerloop optim train|eval`` end to end at tiny sizes, and its bad input as one line with exit code 2."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest

from innerloop.cli.main import main
from innerloop.optim import RULES, LearnedLR

TINY = ["--episodes", "2", "--steps", "6", "--unroll", "3", "--batch", "4", "--eval-instances", "6",
        "--tune-instances", "3", "--lr-grid", "0.01", "0.1", "--log-every", "1", "--no-progress"]  # fmt: skip


def test_train_then_eval_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["optim", "train", "--problem", "quadratic", "--rule", "sgd_lr", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sgd_lr on quadratic, 2 episodes x 6 steps in unrolls of 3" in printed and "adam (lr " in printed
    assert {p.name for p in out.iterdir()} >= {"config.json", "log.csv", "checkpoints", "metrics.json", "eval.csv",
                                              "eval.png"}  # fmt: skip
    with open(out / "log.csv") as f:
        assert [r["meta_step"] for r in csv.DictReader(f)] == ["1", "2", "3", "4"]  # 2 episodes x 2 unrolls
    with open(out / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["optimizer"] for r in rows} == {"learned", "adam", "rmsprop", "sgd", "nag"}
    assert [int(r["step"]) for r in rows if r["optimizer"] == "nag"] == list(range(7))  # steps 0..6
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizers"]["adam"]["lr"] in (0.01, 0.1) and metrics["eval_instances"] == 6
    # eval re-reads the run's config; flags override it
    assert main(["optim", "eval", "--out", str(out), "--baselines", "sgd", "--eval-steps", "4"]) == 0
    assert "sgd (lr " in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["optimizers"]) == {"learned", "sgd"} and metrics["steps"] == 4


def test_train_the_mlp_rule_end_to_end(tmp_path, capsys):
    out = tmp_path / "mlp"
    assert main(["optim", "train", "--problem", "quadratic", "--rule", "mlp", *TINY, "--out", str(out)]) == 0
    assert "mlp on quadratic" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert "learned" in metrics["optimizers"]
    with open(out / "log.csv") as f:
        assert all(float(r["loss"]) == float(r["loss"]) for r in csv.DictReader(f))  # finite, logged


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="needs scikit-learn (innerloop[optim])")
def test_train_on_digits(tmp_path):
    out = tmp_path / "digits"
    assert main(["optim", "train", "--problem", "digits_mlp", "--minibatch", "16", *TINY, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["problem"] == "digits_mlp" and metrics["optimizee"] == "digits_mlp (20 sigmoid units x 1)"


def test_a_registered_rule_is_a_choice_and_divergence_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(RULES, "huge_lr", lambda params: LearnedLR(params, lr=10.0))
    out = tmp_path / "run"
    argv = ["optim", "train", "--rule", "huge_lr", "--episodes", "1", "--steps", "40", "--unroll", "40", "--batch",
            "2", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("innerloop optim train: error: ") and "is not finite at optimizee step" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["optim", "train", "--rule", "nope"], "argument --rule: invalid choice: 'nope'"),
        (["optim", "train", "--problem", "mnist"], "argument --problem: invalid choice: 'mnist'"),
        (["optim", "train", "--steps", "10", "--unroll", "3"], "--unroll 3 must divide --steps 10"),
        (["optim", "train", "--baselines", "lbfgs"], "unknown baseline 'lbfgs'"),
        (["optim", "train", "--meta-lr", "0"], "meta_lr > 0"),
        (["optim", "eval", "--out", "/no/run"], "config.json not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir()), "bad input must fail before any work"


def test_export_ships_the_rule_with_the_command_that_makes_it(tmp_path, capsys):
    """`optim export` writes the run's trained LSTM as a named rule: the same weights, loadable by name, and the
    json's command reproduces it (every config field that differs from the defaults)."""
    import torch

    from innerloop.optim import load_rule
    from innerloop.runs import latest_checkpoint

    out = tmp_path / "run"
    assert main(["optim", "train", "--problem", "quadratic", "--rule", "lstm", *TINY, "--no-eval",
                 "--out", str(out)]) == 0  # fmt: skip
    assert main(["optim", "export", "--out", str(out), "--name", "tiny-lstm", "--dir", str(tmp_path / "rules")]) == 0
    rule = load_rule("tiny-lstm", tmp_path / "rules")
    from safetensors.torch import load_file

    trained = load_file(str(latest_checkpoint(out / "checkpoints") / "model.safetensors"))
    for k, v in rule.state_dict().items():
        assert torch.equal(v, trained[k]), k
    command = rule.meta["command"]
    assert command.startswith("innerloop optim train --rule lstm --episodes 2 --steps 6 --unroll 3 --batch 4")
    assert command.endswith("--export tiny-lstm") and "--max-seconds" not in command
    assert rule.meta["meta_steps_trained"] == rule.meta["meta_steps_planned"] == 4 and "note" not in rule.meta
    # a run stopped by its time budget says so, and its command keeps the budget that decided how far it trained
    short = tmp_path / "short"
    assert main(["optim", "train", "--problem", "quadratic", "--rule", "lstm", *TINY, "--no-eval", "--max-seconds",
                 "1e-9", "--out", str(short)]) == 0  # fmt: skip
    assert main(["optim", "export", "--out", str(short), "--name", "short", "--dir", str(tmp_path / "rules")]) == 0
    meta = load_rule("short", tmp_path / "rules").meta
    assert meta["meta_steps_trained"] == 1 and "--max-seconds 1e-09" in meta["command"]
    assert meta["note"].startswith("stopped by --max-seconds 1e-09 after 1 of 4 meta-steps")
    # stopped between episodes: the command is the run with that many episodes, which is exactly this rule
    assert main(["optim", "train", "--problem", "quadratic", "--rule", "lstm", *TINY, "--unroll", "6", "--no-eval",
                 "--max-seconds", "1e-9", "--out", str(tmp_path / "whole")]) == 0  # fmt: skip
    assert main(["optim", "export", "--out", str(tmp_path / "whole"), "--name", "whole", "--dir",
                 str(tmp_path / "rules")]) == 0  # fmt: skip
    meta = load_rule("whole", tmp_path / "rules").meta
    assert meta["meta_steps_trained"] == 1 and meta["meta_steps_planned"] == 2
    assert "--episodes 1 " in meta["command"] and "--max-seconds" not in meta["command"]
    assert main(["optim", "export", "--out", str(tmp_path / "nope"), "--name", "x"]) == 2


def test_the_help_exports_a_run_that_can_be_exported():
    """`innerloop optim --help` exported a run its own examples trained with --rule sgd_lr, which cannot be exported
    (`optim export` refused it): every `optim export --out X` example exports a run an example trains with a rule that
    has a saved form."""
    import shlex

    from innerloop.cli import optim as cli
    from innerloop.optim.export import check_export

    trained, exports = {}, []
    for line in cli.__doc__.splitlines():
        argv = shlex.split(line.strip(), comments=True) if line.strip().startswith("innerloop optim") else []
        if argv[:3] == ["innerloop", "optim", "train"]:
            trained[argv[argv.index("--out") + 1]] = argv[argv.index("--rule") + 1]
        elif argv[:3] == ["innerloop", "optim", "export"]:
            exports.append((argv[argv.index("--out") + 1], argv[argv.index("--name") + 1]))
    assert exports
    for out, name in exports:
        assert out in trained, out
        check_export(trained[out], name)


def test_an_export_that_replaces_a_rule_says_so_before_training(tmp_path, capsys):
    """`--export tiny-digits` (README, RESULTS.md) silently replaced the rule shipped under that name: the check made
    before any training now says on stderr that the export replaces it; a new name says nothing."""
    from innerloop.optim.export import check_export

    check_export("tiny", "tiny-digits")  # the package's folder, which ships tiny-digits
    assert "will replace the rule 'tiny-digits'" in capsys.readouterr().err
    check_export("tiny", "my-own-rule")
    check_export("tiny", "tiny-digits", tmp_path)
    assert capsys.readouterr().err == ""
