"""``innerloop icl compare`` and ``icl train`` end to end at tiny sizes: files, rows, the budget statement, errors."""

from __future__ import annotations

import csv

import pytest

from innerloop.cli.main import main
from innerloop.icl import compare

TINY = ["--hidden-size", "8", "--num-layers", "1", "--num-heads", "2", "--eval-tasks", "4", "--eval-batch", "2",
        "--eval-points", "5", "--meta-batch", "2", "--log-every", "1"]  # fmt: skip


def test_compare_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["icl", "compare", "--task", "sinusoid", "--shots", "2", "3", "--learners", "gru", "attention", "fomaml",
            "--steps", "2", "--out", str(out), *TINY]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Equal budget = the same 4 meta-training tasks for every learner" in text
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["shots"], r["learner"]) for r in rows] == [(k, n) for k in ("2", "3") for n in ("gru", "attention",
                                                                                             "fomaml", "zero")]
    trained = [r for r in rows if r["kind"] != "baseline"]
    assert {r["kind"] for r in trained} == {"in-context", "gradient"} and {r["train_tasks"] for r in trained} == {"4"}
    assert all(float(r["mse_in"]) > 0 and float(r["ms_per_task"]) > 0 for r in trained)
    md = (out / "compare.md").read_text()
    assert "Equal budget" in md and md.count("\n| ") == 1 + len(rows)  # header + rows
    assert (out / "runs" / "sinusoid-3shot-fomaml" / "metrics.json").is_file()
    pytest.importorskip("matplotlib")
    assert (out / "error_vs_shots.png").stat().st_size > 0


def test_compare_linear_in_python(tmp_path):
    rows = compare("linear", [3], ["lstm", "metasgd"], tmp_path, steps=1, meta_batch=2, dim=3, noise=0.1,
                   hidden_size=8, num_layers=1, num_heads=2, eval_tasks=3, eval_points=4)  # fmt: skip
    assert [r["task"] for r in rows] == ["linear d=3 noise=0.1"] * 4
    assert [r["learner"] for r in rows] == ["lstm", "metasgd", "zero", "least_squares"]
    assert all(r["mse_ood"] > 0 for r in rows)


def test_a_learner_stopped_early_is_reported_with_the_tasks_it_saw(tmp_path):
    """A run cut short by --max-seconds used to report the planned tasks (steps x meta-batch), and the table said
    "Equal budget" over learners that had seen different numbers of tasks."""
    import json

    kw = dict(steps=3, meta_batch=2, dim=2, hidden_size=8, num_layers=1, num_heads=2, eval_tasks=3, eval_points=4)
    rows = compare("linear", [3], ["fomaml"], tmp_path / "short", max_seconds=1e-9, **kw)  # stops after 1 step
    m = json.loads((tmp_path / "short" / "runs" / "linear-3shot-fomaml" / "metrics.json").read_text())
    assert m["steps"] == 1 and m["stopped_early"] and m["train_tasks"] == 1 * 2
    assert rows[0]["learner"] == "fomaml" and rows[0]["train_tasks"] == 2
    md = (tmp_path / "short" / "compare.md").read_text()
    assert "NOT an equal budget" in md and "fomaml (K=3) 2 tasks" in md
    full = compare("linear", [3], ["fomaml"], tmp_path / "full", **kw)
    assert full[0]["train_tasks"] == 3 * 2
    assert "NOT an equal budget" not in (tmp_path / "full" / "compare.md").read_text()


def test_baselines_are_exact_where_they_should_be(tmp_path):
    """Least squares recovers noiseless linear tasks with K >= d (MSE ~ 0) and not with K < d; zero predicts E[y^2]."""
    from innerloop.icl.compare import baseline_rows
    from innerloop.icl.trainer import ICLConfig

    over = {r["learner"]: r for r in baseline_rows(ICLConfig(task="linear", dim=3, shots=4, eval_tasks=50))}
    under = {r["learner"]: r for r in baseline_rows(ICLConfig(task="linear", dim=3, shots=2, eval_tasks=50))}
    assert over["least_squares"]["mse_in"] < 1e-10 and over["least_squares"]["mse_ood"] < 1e-9
    assert under["least_squares"]["mse_in"] > 0.1
    assert 2 < over["zero"]["mse_in"] < 4 and over["zero"]["mse_ood"] > 5 * over["zero"]["mse_in"]  # E[y^2] = d


def test_train_cli_and_usage_errors(tmp_path, capsys):
    assert main(["icl", "train", "--learner", "maml", "--shots", "2", "--steps", "1", "--out", str(tmp_path / "t"),
                 *TINY]) == 0  # fmt: skip
    assert "test MSE (ood)" in capsys.readouterr().out
    assert main(["icl", "compare", "--learners", "gru", "magic", "--out", str(tmp_path / "x")]) == 2
    assert "unknown learner 'magic'" in capsys.readouterr().err
    assert main(["icl", "compare", "--shots", "0", "--out", str(tmp_path / "y")]) == 2
    with pytest.raises(ValueError, match="unknown ICLConfig options"):
        compare("sinusoid", [2], ["gru"], tmp_path, widht=3)


def test_compare_into_a_folder_of_other_settings_says_fresh_and_fresh_works(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["icl", "compare", "--learners", "gru", "--shots", "2", "--meta-batch", "2", "--out", str(out), *TINY]
    assert main([*args, "--steps", "1"]) == 0
    capsys.readouterr()
    assert main([*args, "--steps", "2"]) == 2  # the learner's run folder holds a 1-step run
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "steps: checkpoint 1 vs now 2" in err and "--extend" in err
    assert main([*args, "--steps", "2", "--extend"]) == 0
    assert main([*args, "--steps", "2", "--fresh"]) == 0
    assert list((out / "runs").glob("*.previous-*"))


def test_compare_reuses_finished_runs_without_training_or_evaluating_again(tmp_path, monkeypatch):
    import importlib

    cmp = importlib.import_module("innerloop.icl.compare")  # the module (the package exports the function)
    kw = dict(steps=1, meta_batch=2, hidden_size=8, num_layers=1, num_heads=2, eval_tasks=3, eval_points=4)
    first = compare("sinusoid", [2], ["gru"], tmp_path, **kw)
    monkeypatch.setattr(cmp, "train", lambda *a, **k: pytest.fail("a finished run was trained or evaluated again"))
    again = compare("sinusoid", [2], ["gru"], tmp_path, **{**kw, "eval_batch": 2})  # batching changes no number
    assert again[0]["mse_in"] == first[0]["mse_in"]
    monkeypatch.undo()
    other = compare("sinusoid", [2], ["gru"], tmp_path, **{**kw, "eval_tasks": 5})  # another test set: evaluated
    assert other[0]["mse_in"] != first[0]["mse_in"]
