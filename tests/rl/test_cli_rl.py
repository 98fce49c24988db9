"""``innerloop rl baselines`` end to end at tiny sizes, and its bad input as one-line errors."""

from __future__ import annotations

import csv

import pytest

from innerloop.cli.main import main


@pytest.mark.parametrize(("argv", "names"), [
    (["--env", "bandit", "--arms", "3", "--pulls", "4"], ["random", "greedy", "epsilon_greedy", "ucb1", "thompson",
                                                          "gittins"]),
    (["--env", "mdp", "--episodes", "2", "--baselines", "random", "psrl", "ucrl2"], ["random", "psrl", "ucrl2"]),
])  # fmt: skip
def test_baselines_end_to_end(tmp_path, capsys, argv, names):
    assert main(["rl", "baselines", *argv, "--trials", "20", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "total reward per trial over 20 trials" in out and all(n in out for n in names)
    rows = list(csv.DictReader((tmp_path / "out" / "baselines.csv").read_text().splitlines()))
    assert [r["baseline"] for r in rows] == names and all(int(r["trials"]) == 20 for r in rows)
    assert all(float(r["ci95"]) > 0 for r in rows)
    md = (tmp_path / "out" / "baselines.md").read_text()
    assert "| baseline | total reward per trial | 95% CI | trials |" in md and md.count("\n| ") == len(names) + 1


def test_baselines_md_rounds_the_means_not_the_csv(tmp_path, monkeypatch):
    """baselines.md shows each mean to 2 decimals of the mean itself, not of baselines.csv's 4-decimal rounding
    (1.23496 was 1.235 in the CSV and 1.24 in the table)."""
    import innerloop.rl.evaluate as evaluate

    results = [evaluate.BaselineResult("ucb1", 1.23496, 0.01496, 0.5, 100)]
    monkeypatch.setattr(evaluate, "evaluate_baselines", lambda *a, **k: results)
    assert main(["rl", "baselines", "--arms", "2", "--pulls", "3", "--out", str(tmp_path)]) == 0
    assert "| ucb1 | 1.23 | ± 0.01 | 100 |" in (tmp_path / "baselines.md").read_text()
    (row,) = csv.DictReader((tmp_path / "baselines.csv").read_text().splitlines())
    assert (row["mean"], row["ci95"]) == ("1.235", "0.015")


def test_options_reach_the_baselines(capsys):
    assert main(["rl", "baselines", "--arms", "2", "--pulls", "3", "--trials", "10", "--baselines", "epsilon_greedy",
                 "--epsilon", "1.0"]) == 0  # fmt: skip
    assert main(["rl", "baselines", "--arms", "2", "--pulls", "3", "--trials", "10", "--baselines", "random"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")]
    assert lines[0].split()[1] == lines[1].split()[1], "epsilon 1 plays uniformly at random"


@pytest.mark.parametrize(("argv", "match"), [
    (["--arms", "1"], "num_arms must be an integer >= 2, got 1"),
    (["--pulls", "0"], "must be >= 1, got 0"),
    (["--env", "mdp", "--episodes", "0"], "must be >= 1, got 0"),
    (["--env", "maze"], "argument --env: invalid choice: 'maze'"),
    (["--baselines", "oracle"], "argument --baselines: invalid choice: 'oracle'"),
    (["--env", "mdp", "--baselines", "gittins"], "unknown mdp baseline 'gittins'; choose from"),
    (["--trials", "1"], "trials must be >= 2"),
    (["--pulls", "3", "--episodes", "4"], "disagree"),
    (["--env", "mdp", "--arms", "7"], "--arms is a setting of --env bandit, not of --env mdp"),
    (["--env", "mdp", "--ucb-c", "0.5"], "--ucb-c is a setting of --env bandit"),
    (["--ucrl2-c", "0.5"], "--ucrl2-c is a setting of --env mdp"),
])  # fmt: skip
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, match):
    assert main(["rl", "baselines", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert err.startswith("innerloop rl baselines: error: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
