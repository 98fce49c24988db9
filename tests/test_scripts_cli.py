"""The command lines of the scripts in ``benchmarks/`` and ``scripts/`` that read ``sys.argv`` themselves: ``--help``
prints usage (it ran the benchmark, or raised), and a bad argument is one usage line (exit code 2), not a traceback.
Every case but one (a two-step smoke run) exits before any work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("argv", "code", "match"),
    [
        (["benchmarks/bench_ttt_dispatch.py", "--help"], 0, "usage: bench_ttt_dispatch.py"),  # ran the benchmark
        (["benchmarks/bench_train_step.py", "smoke", "--repeats", "1"], 0, "train step ms (median)"),
        (["scripts/forecast_adapt_table.py", "--help"], 0, "usage: forecast_adapt_table.py"),  # FileNotFoundError
        (["scripts/forecast_adapt_table.py", "/no/runs"], 2, "/no/runs is not a folder"),
        (["benchmarks/bench_learned_optim.py", "--repeats", "1"], 2, "--repeats must be >= 2"),  # StatisticsError
        (["benchmarks/bench_ttt_scan.py", "--official", "/no/ttt.py"], 2, "the authors' ttt.py is not at /no/ttt.py"),
    ],
)
def test_script_command_line(tmp_path, argv, code, match):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / argv[0]), *argv[1:]], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == code, r.stdout + r.stderr
    assert match in r.stdout + r.stderr and "Traceback" not in r.stderr


def _forecast_run(root: Path, folder: str, mixer: str = "ttt_linear", **adapt: dict) -> Path:
    """A run folder as `forecast train` + `forecast eval --adapt` leave it (only what the table script reads)."""
    import json

    d = root / folder
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"model": "patch", "mixer": mixer, "resolved": {}}))
    (d / "metrics.json").write_text(json.dumps({"data": "ETTh1", "model": "patch", "horizon": 96, "num_params": 100,
                                                "test_mse": 0.4, "test_mae": 0.41, "windows": {"test": 2785}}))
    for mode, body in adapt.items():
        r = {"adapt": mode, "split": "test", "windows": 2785, "mse": 0.39, "frozen_mse": 0.4,
             "extra_ms_per_window": 1.0, "frozen_ms_per_window": 2.0, "extra_floats": 32, "params_updated": 7,
             "settings": {"streams": 16}}  # fmt: skip
        (d / f"adapt-{mode}.json").write_text(json.dumps({**r, **body}))
    return d


def _table(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "scripts/forecast_adapt_table.py"), str(root)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_forecast_adapt_table_rows_are_of_the_whole_test_walk(tmp_path):
    """The table puts each adapted MSE beside the run's test MSE: an adaptation walk of part of the test split
    (--limit), of the validation split, or of other weights is refused instead of printed as if of the same windows;
    the backbone comes from the run's config, not from its folder name."""
    _forecast_run(tmp_path / "ok", "ETTh1-mixer-H96", mixer="gru", state={}, online={})
    r = _table(tmp_path / "ok")
    assert r.returncode == 0, r.stderr
    assert "| ETTh1 | 96 | gru | 100 | 0.4000 / 0.4100 | 2.0 | 0.3900 (-0.0100) |" in r.stdout
    for name, body, match in (("limit", {"windows": 300}, "a walk of 300 test windows"),
                              ("val", {"split": "val"}, "a walk of 2785 val windows"),
                              ("stale", {"frozen_mse": 0.43}, "is not the run's test MSE")):  # fmt: skip
        _forecast_run(tmp_path / name, "ETTh1-ttt_linear-H96", state=body)
        r = _table(tmp_path / name)
        assert r.returncode != 0 and match in r.stderr and "Traceback" not in r.stderr, r.stdout + r.stderr

def test_forecast_adapt_table_skips_runs_that_are_not_its_own(tmp_path):
    """`python scripts/forecast_adapt_table.py runs` (RESULTS.md) died with IndexError on a folder not named
    <data>-<backbone>-H<horizon> (the README's runs/mine, runs/series) and KeyError on another trainer's metrics.json
    (runs/copy-lstm): it tabulates the forecasting runs, naming each backbone from its config.json, skips the rest."""
    import json

    metrics = {"data": "ETTh1", "horizon": 96, "test_mse": 0.4, "test_mae": 0.41, "num_params": 7, "model": "patch"}
    for name, m, cfg in [("ETTh1-ttt_linear-H96", metrics, {"model": "patch", "mixer": "ttt_linear"}),
                         ("mine", {**metrics, "model": "nlinear", "data": "mine.csv"}, {"model": "nlinear"}),
                         ("copy-lstm", {"num_params": 5, "eval": []}, {"task": "copy"})]:  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts/forecast_adapt_table.py"), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ETTh1") or line.startswith("| mine")]
    assert len(rows) == 2 and "| ttt_linear |" in rows[0] and "| nlinear |" in rows[1], r.stdout
