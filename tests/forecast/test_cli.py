"""``innerloop forecast train|eval`` end to end on a tiny CSV, and its one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
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
    # --split and --limit are honoured without --adapt too (they were accepted and ignored)
    assert main(["forecast", "eval", "--out", str(out), "--split", "val", "--limit", "3"]) == 0
    printed = capsys.readouterr().out
    assert "val split in time order, 3 windows" in printed and f"MSE {m['val_mse']:.4f}" not in printed


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


def test_eval_adapt_state_online_and_plot(tmp_path, capsys):
    import torch

    torch.set_num_threads(1)
    csv = write_series(tmp_path / "s.csv", rows=160)
    out = tmp_path / "gru"
    patch = ["--model", "patch", "--mixer", "gru", "--patch-len", "8", "--stride", "4", "--d-model", "8",
             "--num-layers", "1", "--epochs", "1"]  # fmt: skip
    assert main(["forecast", "train", "--data", str(csv), "--out", str(out), *TINY, *patch]) == 0
    capsys.readouterr()
    assert main(["forecast", "eval", "--out", str(out), "--adapt", "state", "--streams", "2"]) == 0
    printed = capsys.readouterr().out
    r = json.loads((out / "adapt-state.json").read_text())
    assert f"adapted (state):  MSE {r['mse']:.4f}" in printed
    assert f"frozen:           MSE {r['frozen_mse']:.4f}" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert abs(r["frozen_mse"] - m["test_mse"]) < 1e-5 and r["settings"]["streams"] == 2 and r["mixer"] == "gru"
    save = tmp_path / "online.json"
    assert main(["forecast", "eval", "--out", str(out), "--adapt", "online", "--adapt-params", "adapter",
                 "--update-every", "4", "--adapt-partial", "--save", str(save)]) == 0  # fmt: skip
    r = json.loads(save.read_text())
    assert r["updates"] > 0 and r["settings"]["adapt_partial"] and r["settings"]["adapt_params"] == "adapter"
    assert main(["forecast", "eval", "--out", str(out), "--adapt", "online", "--adapt-params", "bias"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    png = tmp_path / "pred.png"
    assert main(["forecast", "plot", "--out", str(out), "--adapt", "online", "--window", "7", "--file", str(png)]) == 0
    assert png.stat().st_size > 1000 and "wrote" in capsys.readouterr().out
    assert main(["forecast", "plot", "--out", str(out), "--window", "100000"]) == 2
    assert "outside the test split" in capsys.readouterr().err


def test_eval_adapt_state_refuses_linear_and_attention(tmp_path, capsys):
    csv = write_series(tmp_path / "s.csv")
    out = tmp_path / "lin"
    assert main(["forecast", "train", "--data", str(csv), "--model", "dlinear", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    assert main(["forecast", "eval", "--out", str(out), "--adapt", "state"]) == 2
    err = capsys.readouterr().err
    assert "DLinear has no state to carry: use --adapt online" in err and len(err.strip().splitlines()) == 1
    assert main(["forecast", "eval", "--out", str(out), "--adapt", "online", "--adapt-params", "norm_head"]) == 2
    assert "--adapt-params all or adapter" in capsys.readouterr().err
