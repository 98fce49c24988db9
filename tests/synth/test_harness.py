"""Synthetic-task harness: end to end in seconds for every mixer, run directory, learning, errors; the arm task."""

import csv
import json
import math

import pytest

from innerloop.cli.main import main
from innerloop.models import count_params
from innerloop.synth import SynthConfig, SynthModel, match_hidden_size, train

MIXERS = ["rnn", "lstm", "gru", "mamba", "attention", "ttt_linear", "ttt_mlp"]


@pytest.mark.parametrize("mixer", MIXERS)
def test_end_to_end_every_mixer(mixer, tmp_path):
    cfg = SynthConfig(task="copy", mixer=mixer, hidden_size=16, steps=3, batch_size=4, train_length=3,
                      eval_lengths=[3, 5], eval_batch_size=8, log_every=1, out=str(tmp_path))
    m, model = train(cfg)
    assert json.loads((tmp_path / "config.json").read_text())["mixer"] == mixer
    rows = list(csv.DictReader((tmp_path / "log.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["length"] for e in saved["eval"]] == [3, 5]
    assert [e["generalisation"] for e in saved["eval"]] == [False, True]
    assert all(0 <= e["token_acc"] <= 1 and math.isfinite(e["loss"]) for e in saved["eval"])
    assert saved["num_params"] == count_params(model)


def test_learns_copy_beyond_baseline(tmp_path):
    cfg = SynthConfig(task="copy", task_options={"vocab_size": 5}, mixer="gru", hidden_size=32, num_layers=1,
                      steps=150, batch_size=32, lr=1e-2, train_length=2, eval_lengths=[2], out=str(tmp_path))
    m, _ = train(cfg)
    assert m["eval"][0]["token_acc"] > 0.9 > m["eval"][0]["baseline"]["token_acc"]


def test_regression_and_tbptt_clipping_options(tmp_path):
    cfg = SynthConfig(task="adding", mixer="lstm", hidden_size=8, steps=4, batch_size=4, train_length=6,
                      min_train_length=2, tbptt_window=2, clip_norm=0.5, clip_value=0.1, out=str(tmp_path))
    m, _ = train(cfg)
    assert set(m["eval"][0]) >= {"mse", "baseline"} and m["eval"][0]["baseline"]["mse"] == pytest.approx(1 / 6)


def test_equal_parameter_matching():
    io = {"vocab_size": 10, "out_features": 10}
    counts = {}
    for mixer in ("rnn", "lstm", "attention", "mamba"):
        h = match_hidden_size(mixer, 20000, 2, 2, **io)
        counts[mixer] = count_params(SynthModel(mixer, h, 2, 2, **io))
    assert all(abs(c - 20000) / 20000 < 0.15 for c in counts.values()), counts


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown mixer"):
        train(SynthConfig(mixer="transformerxl", steps=1, out=str(tmp_path)))
    with pytest.raises(ValueError, match="unknown task"):
        train(SynthConfig(task="sorting", steps=1, out=str(tmp_path)))
    with pytest.raises(ValueError, match="train_length"):
        SynthConfig(train_length=0)
    with pytest.raises(ValueError, match="eval_lengths"):
        SynthConfig(eval_lengths=[0])
    with pytest.raises(ValueError, match="too small"):
        train(SynthConfig(task="mqar", task_options={"vocab_size": 4}, train_length=3, steps=1, out=str(tmp_path)))


def test_bad_lengths_and_options_fail_before_training(tmp_path, capsys):
    """An evaluation length the task cannot make used to fail only after the whole training run."""
    out = tmp_path / "mqar"
    with pytest.raises(ValueError, match="eval length 40: task 'mqar': vocab_size 64 too small"):
        train(SynthConfig(task="mqar", mixer="gru", hidden_size=8, steps=2, train_length=20, out=str(out)))
    assert not (out / "log.csv").exists() and not (out / "checkpoints").exists()
    with pytest.raises(ValueError, match="eval length 2: task 'selective_copy': length must be >= 4"):
        train(SynthConfig(task="selective_copy", mixer="gru", hidden_size=8, steps=2, eval_lengths=[8, 2],
                          out=str(tmp_path / "sc")))
    assert not (tmp_path / "sc" / "log.csv").exists()
    # synth table: an option one of the tasks does not take fails before the first run, not after it
    assert main(["synth", "table", "--tasks", "mqar", "adding", "--mixers", "gru", "--steps", "2", "--hidden-size",
                 "8", "--task-option", "vocab_size=32", "--out", str(tmp_path / "t")]) == 2
    assert "task 'adding' takes options" in capsys.readouterr().err
    assert not (tmp_path / "t" / "mqar-gru").exists()


def test_cli_train_and_table(tmp_path, capsys):
    assert main(["synth", "train", "--task", "reverse", "--mixer", "gru", "--steps", "2", "--hidden-size", "8",
                 "--train-length", "2", "--task-option", "vocab_size=4", "--out", str(tmp_path / "r")]) == 0
    assert "reverse / gru" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "config.json").read_text())["task_options"] == {"vocab_size": 4}
    assert main(["synth", "table", "--tasks", "adding", "--mixers", "rnn", "gru", "--steps", "2",
                 "--target-params", "500", "--train-length", "2", "--out", str(tmp_path / "t")]) == 0
    md = (tmp_path / "t" / "table.md").read_text()
    assert "| adding | 2 | mse |" in md and "| adding | 4 | mse |" in md


def test_table_md_rounds_the_metrics_not_the_csv(tmp_path, monkeypatch):
    """table.md shows each score to 3 decimals of metrics.json's number, not of table.csv's 4-decimal rounding
    (0.21949 was 0.2195 in the CSV and 0.220 in the table)."""
    import innerloop.synth as synth

    def fake_train(cfg, **_):
        e = {"length": cfg.train_length, "loss": 0.21949, "mse": 0.21949, "baseline": {"mse": 0.31749},
             "generalisation": False}
        return {"num_params": 10, "hidden_size": 8, "train_seconds": 1.26, "eval": [e]}, None

    monkeypatch.setattr(synth, "train", fake_train)
    assert main(["synth", "table", "--tasks", "adding", "--mixers", "gru", "--eval-lengths", "2", "--train-length", "2",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    assert "| adding | 2 | mse | 0.317 | 0.219 |" in (tmp_path / "table.md").read_text()
    (row,) = csv.DictReader((tmp_path / "table.csv").read_text().splitlines())
    assert (row["score"], row["baseline"], row["seconds"]) == ("0.2195", "0.3175", "1.3")


def test_arm_run_writes_rollout_and_plot(tmp_path):
    cfg = SynthConfig(task="arm", task_options={"horizon": 5, "context": 3}, mixer="gru", hidden_size=8, steps=2,
                      batch_size=4, train_length=6, eval_batch_size=8, out=str(tmp_path))
    m, _ = train(cfg)
    assert set(m["rollout"]) == {"err_h1", "err_h5", "hold_still_h5"}
    assert len(list(csv.DictReader((tmp_path / "rollout.csv").read_text().splitlines()))) == 5
    assert (tmp_path / "trajectories.png").stat().st_size > 1000


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert main(["synth", "train", "--mixer", "lstmm", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "invalid choice: 'lstmm'" in capsys.readouterr().err
    assert main(["synth", "train", "--task", "adding", "--train-length", "1", "--steps", "1", "--out",
                 str(tmp_path)]) == 2  # fmt: skip
    assert "length must be >= 2" in capsys.readouterr().err


def test_cli_arm_names_every_file_it_wrote(tmp_path, capsys):
    """`synth train --task arm` also writes rollout.csv and trajectories.png (its --help says so), but its closing
    line named only config.json, log.csv and metrics.json: it names what is in the folder."""
    out = tmp_path / "arm"
    assert main(["synth", "train", "--task", "arm", "--task-option", "horizon=5", "--task-option", "context=3",
                 "--mixer", "gru", "--hidden-size", "8", "--steps", "2", "--batch-size", "4", "--train-length", "6",
                 "--eval-batch-size", "8", "--out", str(out)]) == 0  # fmt: skip
    wrote = capsys.readouterr().out.strip().splitlines()[-1]
    assert wrote.startswith(f"wrote {out}/config.json, log.csv, metrics.json, rollout.csv"), wrote
    assert all((out / f).is_file() for f in wrote.split("/")[-1].split(", "))
