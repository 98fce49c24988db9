"""The forecasting trainer on the run scaffold: metrics, early stopping with the best weights, exact resume after
SIGKILL and Ctrl-C (the pattern of tests/runs/test_trainers.py) on a tiny synthetic CSV."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _run import STEPS, run, write_series  # noqa: E402

from innerloop.forecast import evaluate_run  # noqa: E402
from innerloop.forecast.trainer import EarlyStopping  # noqa: E402
from innerloop.runs import Callback, ConfigMismatchError, RunInterrupted, latest_checkpoint, read_log  # noqa: E402
from innerloop.testing import kill_mid_run


def logged(out: Path) -> list[tuple]:
    return [(r["step"], r["epoch"], r["loss"], r["lr"], r["val_mse"]) for r in read_log(out / "log.csv")]


def same_numbers(m: dict) -> dict:
    """The metrics without the timing: test and validation scores, best epoch, epochs run (the early-stopping state)."""
    return {k: v for k, v in m.items() if k != "train_seconds"}


@pytest.fixture(scope="module")
def csv(tmp_path_factory) -> Path:
    return write_series(tmp_path_factory.mktemp("series") / "series.csv")


@pytest.fixture(scope="module")
def straight(csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    metrics = run(csv, out)
    rows = logged(out)
    assert [int(r[0]) for r in rows] == list(range(1, STEPS + 1))
    return out, rows, metrics


def test_a_run_writes_its_files_and_metrics(straight):
    out, rows, m = straight
    assert {p.name for p in out.iterdir()} >= {"config.json", "log.csv", "checkpoints", "metrics.json",
                                              "best_model.safetensors"}  # fmt: skip
    assert json.loads((out / "metrics.json").read_text()) == m
    assert m["windows"] == {"train": 121, "val": 17, "test": 37} and m["epochs_run"] == 4 and m["steps"] == STEPS
    assert 0 < m["test_mse"] < 1.0 and m["test_mae"] > 0  # the scaled sine is learnt better than its variance
    assert [r[3] for r in rows[::2]] == ["0.01", "0.01", "0.005", "0.0025"]  # lr: two epochs, then halved
    assert all(r[4] for r in rows[1::2]) and not any(r[4] for r in rows[::2])  # validation at every epoch's end
    best = min(range(4), key=lambda e: float(rows[2 * e + 1][4]))
    assert m["best_epoch"] == best + 1 and m["val_mse"] == pytest.approx(float(rows[2 * best + 1][4]), rel=1e-5)
    again = evaluate_run(out)  # the saved best weights give the same numbers
    assert again["test_mse"] == pytest.approx(m["test_mse"], rel=1e-6)


def test_running_a_finished_run_again_trains_nothing(straight, tmp_path):
    out, rows, m = straight
    m2 = run(Path(json.loads((out / "config.json").read_text())["data"]), out)
    assert logged(out) == rows and m2["test_mse"] == m["test_mse"]


def test_early_stopping_keeps_the_best_and_counts_patience():
    model = torch.nn.Linear(1, 1)
    e = EarlyStopping(patience=2)
    for epoch, val in enumerate([3.0, 2.0, 2.5, 1.9, 2.0, 2.0]):
        with torch.no_grad():
            model.weight.fill_(epoch)
        e.update(epoch, val, model)
        if e.stopped:
            break
    assert e.stopped and e.best == 1.9 and e.best_epoch == 3 and len(e.history) == 6
    assert float(e.best_weights["weight"]) == 3.0
    assert not EarlyStopping(0).stopped


def test_early_stop_ends_the_run_and_the_best_epoch_is_scored(csv, tmp_path):
    out = tmp_path / "r"
    m = run(csv, out, lr=5.0, patience=1, epochs=8)  # a huge lr: validation worsens after the first epochs
    assert m["stopped_early"] and m["epochs_run"] < 8
    rows = read_log(out / "log.csv")
    vals = [float(r["val_mse"]) for r in rows if r["val_mse"]]
    assert m["val_mse"] == pytest.approx(min(vals), rel=1e-5) and m["best_epoch"] == 1 + vals.index(min(vals))
    again = run(csv, out, lr=5.0, patience=1, epochs=8)  # resuming a stopped run does not train on
    assert again["steps"] == m["steps"] and len(read_log(out / "log.csv")) == len(rows)
    # and metrics.json, written again, still says it stopped early (it used to flip stopped_early to false)
    assert again == m and json.loads((out / "metrics.json").read_text()) == m
    with pytest.raises(ValueError, match=rf"stopped early after epoch {m['epochs_run']} .* --extend has nothing"):
        run(csv, out, lr=5.0, patience=1, epochs=12, extend=True)  # asked for more: said, not silently ignored
    assert len(read_log(out / "log.csv")) == len(rows)


def test_sigkill_then_resume_logs_the_same(csv, tmp_path, straight):
    out = tmp_path / "run"
    child = Path(__file__).parent / "_run.py"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH",
                                                                                                        "")]))
    argv = [sys.executable, str(child), str(csv), str(out), "0.4", str(torch.get_num_threads())]
    kill_mid_run(argv, out / "checkpoints" / "step_00000002", env=env)  # later steps are lost
    assert len(read_log(out / "log.csv")) < STEPS
    m = run(csv, out)
    assert logged(out) == straight[1] and same_numbers(m) == same_numbers(straight[2])


class Interrupt(Callback):
    """Ctrl-C as the OS delivers it (a real SIGINT to this process) at the end of step ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, trainer, step, logs):
        if step == self.at:
            signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("at", [2, 3])  # 3 = an epoch's last step: its validation is inside the saved checkpoint
def test_ctrl_c_saves_and_resume_logs_the_same(csv, tmp_path, straight, at):
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted, match=f"interrupted after step {at + 1}"):
        run(csv, out, callbacks=[Interrupt(at)])
    assert latest_checkpoint(out / "checkpoints").name == f"step_{at + 1:08d}"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    m = run(csv, out)
    assert logged(out) == straight[1] and same_numbers(m) == same_numbers(straight[2])


def test_another_config_is_refused(csv, tmp_path, straight):
    out = tmp_path / "run"
    run(csv, out, epochs=1)
    with pytest.raises(ConfigMismatchError, match=r"lr: checkpoint 0.01 vs now 0.02.*--fresh"):
        run(csv, out, epochs=1, lr=0.02)
    run(csv, out, extend=True)  # more epochs: continues to the uninterrupted run's numbers
    assert logged(out) == straight[1]


def test_repeat_last_is_only_scored(csv, tmp_path):
    m = run(csv, tmp_path / "r", model="repeat_last")
    assert m["steps"] == 0 and m["best_epoch"] is None and m["test_mse"] > 0
    assert (tmp_path / "r" / "config.json").is_file() and not (tmp_path / "r" / "checkpoints").exists()


def test_a_stop_before_the_first_validation_scores_nothing_and_resumes(csv, tmp_path, straight):
    """A callback's stop in the middle of the first epoch leaves no validated weights: the run returns its summary
    (it used to fail loading an empty state dict as the best weights) and the next call resumes it exactly."""

    class StopFirst(Callback):
        def on_step_end(self, trainer, step, logs):
            trainer.should_stop = True

    out = tmp_path / "run"
    m = run(csv, out, callbacks=[StopFirst()])
    assert m["steps"] == 1 and m["stopped_early"] and m["epochs_run"] == 0 and "test_mse" not in m
    assert not (out / "metrics.json").exists() and not (out / "best_model.safetensors").exists()
    m = run(csv, out)
    assert logged(out) == straight[1] and same_numbers(m) == same_numbers(straight[2])
