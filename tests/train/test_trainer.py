"""Trainer: exact resume after a kill, NaN stop keeping the last good checkpoint, config mismatch, accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from innerloop.runs import latest_checkpoint, load_checkpoint, read_log, save_checkpoint
from innerloop.train import TrainConfig, Trainer, TrainingDivergedError, lr_at, train_lm
from innerloop.train.lm import TTTLRWarmup, load_run
from innerloop.train.trainer import Callback, ConfigMismatchError


def tiny(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, context=32, batch_size=4, steps=8,
                warmup_steps=2, eval_every=4, eval_batches=1, log_every=1, checkpoint_every=3, out=str(tmp_path / name))
    return TrainConfig.from_flat(**{**base, **kw})


class Kill(Callback):
    """Simulates the process dying (KeyboardInterrupt) at the start of step ``at`` (0-based)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_start(self, trainer, step):
        if step == self.at:
            raise KeyboardInterrupt


class Record(Callback):
    def __init__(self) -> None:
        self.losses = []

    def on_step_end(self, trainer, step, logs):
        self.losses.append((step, logs["loss"]))


def weights(out) -> dict[str, torch.Tensor]:
    model, _ = load_run(out)
    return model.state_dict()


@pytest.mark.parametrize("mixer", ["ttt_linear", "attention"])
def test_resume_after_kill_is_exact(tmp_path, mixer):
    straight = tiny(tmp_path, "straight", mixer=mixer)
    rec_a = Record()
    m_a = train_lm(straight, callbacks=[rec_a])

    killed = tiny(tmp_path, "killed", mixer=mixer)
    rec_b = Record()
    with pytest.raises(KeyboardInterrupt):
        train_lm(killed, callbacks=[rec_b, Kill(at=5)])  # checkpoint at 3, steps 4 and 5 lost
    assert latest_checkpoint(tmp_path / "killed" / "checkpoints").name == "step_00000003"
    m_b = train_lm(killed, callbacks=[rec_b])

    a, b = dict(rec_a.losses), dict(rec_b.losses)  # step -> loss; steps 3, 4 ran twice in b (same values)
    assert a == b, (a, b)
    assert m_a["val_loss"] == m_b["val_loss"] and m_a["steps"] == m_b["steps"] == 8
    wa, wb = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    rows_a, rows_b = read_log(tmp_path / "straight" / "log.csv"), read_log(tmp_path / "killed" / "log.csv")
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == [str(s) for s in range(1, 9)]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert [r["val_loss"] for r in rows_a] == [r["val_loss"] for r in rows_b]


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    class Poison(Callback):
        def on_step_start(self, trainer, step):
            if step == 4:
                with torch.no_grad():
                    next(trainer.model.parameters()).fill_(float("nan"))

    cfg = tiny(tmp_path)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 5: loss is nan.*step_00000003"):
        train_lm(cfg, callbacks=[Poison()])
    last = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert last.name == "step_00000003"
    model, _ = load_run(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [r["step"] for r in read_log(tmp_path / "run" / "log.csv")] == ["1", "2", "3", "4"]


def test_resume_with_other_config_is_an_error_and_changes_nothing(tmp_path):
    cfg = tiny(tmp_path, steps=3)
    train_lm(cfg)
    run = tmp_path / "run"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ConfigMismatchError, match=r"hidden_size: checkpoint 32 vs now 64"):
        train_lm(tiny(tmp_path, steps=3, hidden_size=64))
    with pytest.raises(ConfigMismatchError, match=r"lr: checkpoint"):
        train_lm(tiny(tmp_path, steps=3, lr=1e-2))
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert before == after


def test_resume_free_keys_and_extending_nothing(tmp_path):
    train_lm(tiny(tmp_path, steps=3))
    # log_every/checkpoint_every may change on resume; a finished run just reports again
    m = train_lm(tiny(tmp_path, steps=3, log_every=2, checkpoint_every=5))
    assert m["steps"] == 3 and math.isfinite(m["val_loss"])


class CountEvals(Callback):
    def __init__(self) -> None:
        self.n = 0

    def on_eval(self, trainer, step, metrics):
        self.n += 1


def test_a_finished_run_rerun_with_other_eval_batches_is_evaluated_again(tmp_path):
    import json

    train_lm(tiny(tmp_path, steps=3, eval_batches=1))
    count = CountEvals()
    same = train_lm(tiny(tmp_path, steps=3, eval_batches=1), callbacks=[count])
    assert count.n == 0  # unchanged: the saved evaluation is reported
    m = train_lm(tiny(tmp_path, steps=3, eval_batches=3), callbacks=[count])
    fresh = train_lm(tiny(tmp_path, "fresh", steps=3, eval_batches=3))
    assert count.n == 1 and m["val_loss"] == fresh["val_loss"] != same["val_loss"]
    assert m["val_bpb"] == fresh["val_bpb"] and m["steps"] == 3
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["val_loss"] == fresh["val_loss"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["eval_batches"] == 3
    again = train_lm(tiny(tmp_path, steps=3, eval_batches=3), callbacks=[count])  # the re-saved checkpoint's
    assert count.n == 1 and again["val_loss"] == fresh["val_loss"]


def test_checkpoint_debris_is_ignored(tmp_path):
    cfg = tiny(tmp_path, steps=3)
    train_lm(cfg)
    ck = tmp_path / "run" / "checkpoints"
    (ck / "step_00000099.tmp").mkdir()  # a save killed before its rename
    (ck / "step_00000099.tmp" / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(ck).name == "step_00000003"
    model, _ = load_run(tmp_path / "run")
    save_checkpoint(ck, 4, model, {"x": 1})
    assert not (ck / "step_00000099.tmp").exists()
    assert latest_checkpoint(ck).name == "step_00000004"


def test_checkpoint_loads_onto_cpu_0(tmp_path):
    """``map_location="cpu:0"`` (torch's name of the one CPU device) was refused by safetensors' loader."""
    from innerloop.runs import load_weights

    model, ck = torch.nn.Linear(3, 2), tmp_path / "checkpoints"
    save_checkpoint(ck, 1, model, {})
    other = torch.nn.Linear(3, 2)
    load_weights(latest_checkpoint(ck), other, map_location="cpu:0")
    assert torch.equal(other.weight, model.weight)


def test_load_checkpoint_into_other_model_is_a_clear_error(tmp_path):
    from innerloop.models.lm import CausalLM

    train_lm(tiny(tmp_path, steps=1))
    other = CausalLM(tiny(tmp_path, hidden_size=64).model)
    with pytest.raises(ValueError, match="does not fit this model"):
        load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"), other)


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    a = train_lm(tiny(tmp_path, "a", steps=3, eval_every=0))
    b = train_lm(tiny(tmp_path, "b", steps=3, eval_every=0, grad_accum=2))
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_the_logged_gradient_norm_without_clipping_is_the_clipping_norm(tmp_path):
    """grad_clip 0 logs the norm by its own (one-sync) path: the same number clip_grad_norm_ reports."""
    train_lm(tiny(tmp_path, "a", steps=3, eval_every=0, grad_clip=0.0))
    train_lm(tiny(tmp_path, "b", steps=3, eval_every=0, grad_clip=1e9))  # never clips
    a, b = read_log(tmp_path / "a" / "log.csv"), read_log(tmp_path / "b" / "log.csv")
    assert [float(r["loss"]) for r in a] == [float(r["loss"]) for r in b]
    assert [float(r["grad_norm"]) for r in a] == pytest.approx([float(r["grad_norm"]) for r in b], rel=1e-6)
    assert all(float(r["grad_norm"]) > 0 for r in a)


def test_ttt_mlp_inner_lr_warmup(tmp_path):
    seen = []

    class Spy(Callback):
        def on_step_end(self, trainer, step, logs):
            seen.append([m.lr_mult for m in trainer.model.modules() if hasattr(m, "lr_mult")][0])

    cfg = tiny(tmp_path, mixer="ttt_mlp", steps=4, ttt_lr_warmup_steps=2, eval_every=0)
    train_lm(cfg, callbacks=[Spy()])
    assert seen == pytest.approx([0.1, 0.55, 1.0, 1.0])
    assert tiny(tmp_path, mixer="ttt_mlp", steps=50).resolved_ttt_warmup() == 5
    assert tiny(tmp_path, steps=50).resolved_ttt_warmup() == 0
    assert isinstance(TTTLRWarmup(1, 0.01), Callback)


def test_lr_schedule():
    cfg = TrainConfig.from_flat(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[9] == 1.0 and max(lrs) == 1.0 and lrs[-1] > 0.1 - 1e-9
    assert all(x >= y for x, y in zip(lrs[10:], lrs[11:]))


def test_trainer_is_model_agnostic(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    cfg = TrainConfig.from_flat(steps=60, lr=0.2, warmup_steps=1, weight_decay=0.0, grad_clip=0.0,
                                out=str(tmp_path / "lin"),
                      log_every=5, checkpoint_every=10)
    x = torch.randn(16, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    tr = Trainer(model, cfg, lambda step: (x, y), lambda m, a, b: torch.nn.functional.mse_loss(m(a), b))
    s = tr.fit()
    assert s["final_train_loss"] < tr.losses[0] / 10


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(mixer="lstm_typo"), "unknown mixer 'lstm_typo'; choose from"),
        (dict(batch_size=6, grad_accum=4), "divisible by grad_accum"),
        (dict(context=0), "context must be >= 1"),
        (dict(dtype="fp16"), "dtype must be"),
    ],
)
def test_bad_config(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(tmp_path, **kw)


def test_bad_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_lm(tiny(tmp_path, data=str(tmp_path / "nope.txt")))
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        train_lm(tiny(tmp_path, data=str(tmp_path / "empty.txt")))
    (tmp_path / "small.txt").write_bytes(b"to be or not to be" * 3)
    with pytest.raises(ValueError, match="not more than one context window"):
        train_lm(tiny(tmp_path, data=str(tmp_path / "small.txt")))
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="no .txt files"):
        train_lm(tiny(tmp_path, data=str(tmp_path / "folder")))


def test_non_utf8_bytes_train(tmp_path):
    (tmp_path / "latin1.txt").write_bytes(bytes(range(256)) * 40)
    m = train_lm(tiny(tmp_path, steps=2, data=str(tmp_path / "latin1.txt")))
    assert math.isfinite(m["val_loss"])


@pytest.mark.parametrize("mixer", ["ttt_linear", "lstm"])  # lstm: torch.nn.LSTM's oneDNN kernel failed under bf16
def test_bf16_autocast_on_cpu(tmp_path, mixer):
    m = train_lm(tiny(tmp_path, steps=2, dtype="bf16", mixer=mixer))
    assert math.isfinite(m["val_loss"]) and math.isfinite(m["final_train_loss"])


def test_tensorboard_missing_is_a_clear_error(tmp_path):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install tensorboard"):
            train_lm(tiny(tmp_path, steps=1, tensorboard=True))
    else:
        train_lm(tiny(tmp_path, steps=1, tensorboard=True))
        assert any((tmp_path / "run" / "tb").iterdir())
