"""``innerloop forecast train|eval`` end to end on a tiny CSV, and its one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _run import write_series  # noqa: E402

from innerloop.cli.main import main  # noqa: E402

TINY = ["--lookback", "16", "--horizon", "4", "--kernel-size", "5", "--epochs", "2", "--batch-size", "60",
        "--no-progress"]  # fmt: skip


def test_train_then_eval(tmp_path, capsys):
    csv = write_series(tmp_path / "s.csv")
    out = tmp_path / "run"
    assert main(["forecast", "train", "--data", str(csv), "--model", "nlinear", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert f"test MSE {m['test_mse']:.4f}  MAE {m['test_mae']:.4f}" in printed and m["model"] == "nlinear"
    assert main(["forecast", "eval", "--out", str(out)]) == 0
    assert f"test MSE {m['test_mse']:.4f}" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.csv"
    bad.write_text("date,a,OT\nx,1,2\ny,oops,3\n")
    assert main(["forecast", "train", "--data", str(bad), "--out", str(tmp_path / "r"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("innerloop forecast train: error:") and "column 'a' is not a number" in err
    assert len(err.splitlines()) == 1
    monkeypatch.delenv("INNERLOOP_DATA", raising=False)
    assert main(["forecast", "train", "--data", "ETTh1", "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "ETDataset" in capsys.readouterr().err
    assert main(["forecast", "eval", "--out", str(tmp_path / "nothing")]) == 2
    assert "holds no finished forecasting run" in capsys.readouterr().err
    assert main(["forecast", "train", "--model", "arima"]) == 2
    assert "invalid choice" in capsys.readouterr().err
