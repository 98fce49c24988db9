"""Every training command resumes or extends a run from ``--out`` alone: settings not given on the command line are
taken from the run's ``config.json`` (tiny runs, seconds each)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from innerloop.cli._flags import run_config_values
from innerloop.cli.main import main
from innerloop.rl.rl2_trainer import RL2Config
from innerloop.runs import read_log

_MAML_RL = ["--threads", "1", "--meta-batch", "2", "--trajectories", "2", "--horizon", "4", "--hidden-size", "4",
            "--cg-iters", "2", "--eval-tasks", "2", "--eval-steps", "1"]  # fmt: skip

# (name, command, tiny non-default settings, flags that are no settings, steps flag, config class of the defaults)
CASES = {
    "lm": (["lm", "train"], ["--mixer", "gru", "--hidden-size", "32", "--num-attention-heads", "2",
                             "--num-hidden-layers", "1", "--context", "32", "--batch-size", "4", "--eval-batches",
                             "1", "--warmup-steps", "1", "--log-every", "1", "--device", "cpu"],
           ["--no-progress"], "--steps", "innerloop.train.config:TrainConfig"),
    "meta": (["meta", "train"], ["--algorithm", "fomaml", "--shots", "2", "--meta-batch", "2", "--eval-tasks", "2",
                                 "--eval-batch", "2", "--test-steps", "1", "--log-every", "1"],
             ["--no-progress"], "--iterations", "innerloop.meta.trainer:MetaConfig"),
    "optim": (["optim", "train"], ["--steps", "6", "--unroll", "3", "--batch", "4", "--eval-instances", "6",
                                   "--tune-instances", "3", "--lr-grid", "0.01", "0.1", "--log-every", "1"],
              ["--no-progress", "--no-eval"], "--episodes", "innerloop.optim.meta_train:MetaOptConfig"),
    "forecast": (["forecast", "train"], ["--data", "{csv}", "--lookback", "16", "--horizon", "4", "--model", "nlinear",
                                         "--batch-size", "60", "--patience", "0", "--log-every", "1"],
                 ["--no-progress"], "--epochs", "innerloop.forecast.trainer:ForecastConfig"),
    "icl": (["icl", "train"], ["--learner", "gru", "--shots", "2", "--hidden-size", "8", "--num-layers", "1",
                               "--eval-tasks", "4", "--eval-batch", "2", "--eval-points", "5", "--meta-batch", "2",
                               "--log-every", "1"],
            [], "--steps", "innerloop.icl.trainer:ICLConfig"),
    "synth": (["synth", "train"], ["--task", "reverse", "--mixer", "gru", "--hidden-size", "8", "--train-length", "2",
                                   "--task-option", "vocab_size=4", "--batch-size", "4", "--eval-lengths", "2",
                                   "--eval-batch-size", "8", "--log-every", "1"],
              [], "--steps", "innerloop.synth.harness:SynthConfig"),
    "rl2": (["rl", "train", "--algo", "rl2"], ["--env", "mdp", "--states", "3", "--actions", "2", "--horizon", "2",
                                               "--episodes", "2", "--hidden-size", "8", "--trials", "4", "--epochs",
                                               "1", "--minibatches", "2", "--eval-trials", "8", "--threads", "1",
                                               "--log-every", "1"],
            [], "--steps", "innerloop.rl.rl2_trainer:RL2Config"),
    "rl-maml": (["rl", "train", "--algo", "maml"], _MAML_RL, [], "--iterations",
                "innerloop.rl.maml.trainer:MamlRLConfig"),
    "maml-train": (["rl", "maml-train"], _MAML_RL, ["--no-progress", "--no-eval"], "--iterations",
                   "innerloop.rl.maml.trainer:MamlRLConfig"),
}  # fmt: skip


def _default_seed(where: str) -> int:
    import importlib

    module, name = where.split(":")
    return getattr(importlib.import_module(module), name).seed


def _csv(path: Path) -> Path:
    """A noisy 3-channel sine with a date column (120 train windows of 16 + 4)."""
    rng = np.random.default_rng(0)
    values = np.sin(2 * np.pi * np.arange(200)[:, None] / 24 + np.arange(3)) + 0.1 * rng.normal(size=(200, 3))
    lines = ["date,c0,c1,OT"] + [f"t{i}," + ",".join(f"{v:.5f}" for v in row) for i, row in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(out: Path) -> dict:
    body = json.loads((out / "config.json").read_text())
    body.pop("resolved", None)
    return body


def _latest_step(out: Path) -> int:
    return int((out / "checkpoints" / "latest").read_text().strip().split("_")[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_resume_extend_refuse_and_fresh_with_only_out(name, tmp_path, capsys):
    command, settings, plain, steps_flag, where = CASES[name]
    settings = [str(_csv(tmp_path / "s.csv")) if a == "{csv}" else a for a in settings]
    out = tmp_path / "run"
    steps_key = steps_flag[2:].replace("-", "_")
    assert main([*command, *settings, "--seed", "3", steps_flag, "1", *plain, "--out", str(out)]) == 0
    first, rows, step = _config(out), len(read_log(out / "log.csv")), _latest_step(out)
    assert first["seed"] == 3 and first[steps_key] == 1
    capsys.readouterr()

    # only --out, --extend and a larger step count: the run continues with all its settings
    assert main([*command, *plain, "--out", str(out), "--extend", steps_flag, "2"]) == 0
    err = capsys.readouterr().err
    assert f"resuming {out}: settings not given here are taken from its config.json" in err
    now = _config(out)
    assert now[steps_key] == 2 and {**now, steps_key: 1} == first
    assert _latest_step(out) > step and len(read_log(out / "log.csv")) > rows
    assert json.loads((out / "config.json").read_text())["resolved"]["extensions"][0]["from"] == 1

    # a setting given explicitly that differs from the run is still refused, and nothing is changed
    log = (out / "log.csv").read_text()
    assert main([*command, *plain, "--out", str(out), "--seed", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "different run (seed: checkpoint 3 vs now 4" in err and "settings you leave out are taken from" in err
    assert (out / "log.csv").read_text() == log

    # --fresh with only --out (and the tiny settings): the defaults plus the flags given, the old run kept aside
    assert main([*command, *settings, *plain, steps_flag, "1", "--out", str(out), "--fresh"]) == 0
    assert "resuming" not in capsys.readouterr().err
    assert _config(out)["seed"] == _default_seed(where) and len(list(tmp_path.glob("run.previous-*"))) == 1


def test_lm_nested_model_settings_are_taken_from_the_run(tmp_path, capsys):
    """``lm train`` keeps its model's settings (nested under ``model``) when resumed from ``--out`` alone."""
    out = tmp_path / "run"
    command, settings, plain, _, _ = CASES["lm"]
    assert main([*command, *settings, *plain, "--steps", "1", "--out", str(out)]) == 0
    assert main([*command, *plain, "--out", str(out), "--steps", "2", "--extend"]) == 0
    model = _config(out)["model"]
    assert (model["mixer"], model["hidden_size"], model["intermediate_size"], model["num_hidden_layers"]) == (
        "gru", 32, 64, 1)
    assert main([*command, *plain, "--out", str(out), "--hidden-size", "16"]) == 2
    assert "model.hidden_size: checkpoint 32 vs now 16" in capsys.readouterr().err


def _args(**given) -> argparse.Namespace:
    values = {f.name: None for f in dataclasses.fields(RL2Config)}
    return argparse.Namespace(**{**values, "fresh": False, **given})


def test_run_config_values_reads_the_run_only_when_out_is_given(tmp_path, monkeypatch, capsys):
    run = tmp_path / RL2Config.out  # the default --out of `rl train --algo rl2`
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"env": "mdp", "hidden_size": 16, "steps": 5, "unknown": 1,
                                                 "resolved": {"params": 3}}))  # fmt: skip
    resumed = run_config_values(_args(out=str(run), steps=9), RL2Config, "innerloop rl train --algo rl2")
    assert resumed == {"env": "mdp", "hidden_size": 16, "steps": 9, "out": str(run)}  # given flags win
    assert capsys.readouterr().err.count("\n") == 1
    assert run_config_values(_args(out=str(run), fresh=True), RL2Config, "x") == {"out": str(run)}
    assert run_config_values(_args(out=str(tmp_path / "new")), RL2Config, "x") == {"out": str(tmp_path / "new")}
    monkeypatch.chdir(tmp_path)
    assert run_config_values(_args(), RL2Config, "x") == {}  # the default --out is never read
    upgraded = run_config_values(_args(out=str(run)), RL2Config, "x", upgrade=lambda d: {**d, "threads": 2})
    assert upgraded["threads"] == 2 and "unknown" not in upgraded and "resolved" not in upgraded


def test_another_commands_run_is_refused_by_name(tmp_path, capsys):
    """``--out`` naming another command's run: one line saying so (it used to read that run's settings as its own,
    e.g. an lm run's ``device auto`` as a meta run's, a torch traceback; rl2's ``env bandit`` as MAML's, "unknown
    env")."""
    out = tmp_path / "rl2"
    assert main(["rl", "train", "--algo", "rl2", *CASES["rl2"][1], "--steps", "1", "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    for command in (["rl", "train", "--algo", "maml"], ["meta", "train"], ["lm", "train"]):
        assert main([*command, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"holds a run of another command, not of `innerloop {' '.join(command)}`" in err, err
        assert "nothing was changed" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
