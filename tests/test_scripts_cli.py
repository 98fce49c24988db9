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
