"""The run scaffold on a toy trainer: what every trainer inherits, tested without any model code."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from torch import nn

from innerloop.runs import (
    ConfigMismatchError,
    GeneratorState,
    Run,
    TrainingDivergedError,
    TrainLoop,
    latest_checkpoint,
    read_log,
)
from innerloop.runs.checkpoint import MANIFEST


class Toy(TrainLoop):
    """Least squares on random batches drawn from a checkpointed generator."""

    def __init__(self, out, steps=6, lr=0.1, groups=1, poison_at=None, **kw):
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1)
        params = list(self.net.parameters())
        groups = [{"params": params}] if groups == 1 else [{"params": params[:1]}, {"params": params[1:]}]
        self.opt = torch.optim.SGD(groups, lr=lr)
        self.gen = torch.Generator().manual_seed(1)
        self.poison_at = poison_at
        run = Run(out, {"lr": lr, "steps": steps}, **kw) if out is not None else None
        super().__init__(self.net, run, steps, stateful={"optimizer": self.opt, "gen": GeneratorState(self.gen)},
                         log_every=1, checkpoint_every=2)  # fmt: skip

    def train_step(self, step):
        x = torch.randn(4, 3, generator=self.gen)
        loss = (self.net(x) - x.sum(1, keepdim=True)).pow(2).mean()
        if step == self.poison_at:
            loss = loss * float("nan")
        self.opt.zero_grad()
        loss.backward()
        from innerloop.runs import check_finite

        check_finite(loss.item(), "loss", self, step)
        self.opt.step()
        return {"loss": loss.item()}


def test_in_memory_loop_has_no_files(tmp_path):
    s = Toy(None).fit()
    assert s["steps"] == 6 and s["final_train_loss"] > 0


def test_legacy_checkpoint_without_manifest_still_resumes(tmp_path):
    Toy(tmp_path / "a").fit()
    Toy(tmp_path / "b", steps=4).fit()
    ckpt = latest_checkpoint(tmp_path / "b" / "checkpoints")
    (ckpt / MANIFEST).unlink()  # as written before checksums existed
    Toy(tmp_path / "b", extend=True).fit()
    a, b = read_log(tmp_path / "a" / "log.csv"), read_log(tmp_path / "b" / "log.csv")
    assert len(a) == 6 and [r["loss"] for r in b] == [r["loss"] for r in a]


def test_optimizer_state_that_does_not_fit_is_a_clear_error(tmp_path):
    Toy(tmp_path / "r", steps=2).fit()
    with pytest.raises(ConfigMismatchError, match="optimizer state saved in .*step_00000002 does not fit.*--fresh"):
        Toy(tmp_path / "r", steps=4, groups=2, extend=True).fit()


def test_nan_stops_before_the_update_and_names_the_kept_checkpoint(tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"step 4: loss is nan.*step_00000002 is kept"):
        Toy(tmp_path / "r", poison_at=3).fit()
    assert latest_checkpoint(tmp_path / "r" / "checkpoints").name == "step_00000002"
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg == {"lr": 0.1, "steps": 6}


def test_torch_threads_restores_the_callers_count():
    import torch

    from innerloop.runs import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(0):  # 0 / None: unchanged
        assert torch.get_num_threads() == before
    try:
        with torch_threads(1):
            raise KeyError("boom")
    except KeyError:
        pass
    assert torch.get_num_threads() == before


def test_a_spent_time_budget_trains_nothing_more(tmp_path, capsys):
    """A run stopped by max_seconds goes on only with a larger budget: running it again with the same one trains no
    step (it used to take one more step, checkpoint and evaluate on every run)."""
    first = Toy(tmp_path / "r", steps=50)
    first.max_seconds = 1e-9
    assert first.fit()["steps"] == 1
    again = Toy(tmp_path / "r", steps=50)
    again.max_seconds, again.verbose = 1e-9, True
    summary = again.fit()
    assert summary["steps"] == 1 and summary["stopped_early"]
    assert "time budget is spent" in capsys.readouterr().err
    assert latest_checkpoint(tmp_path / "r" / "checkpoints").name == "step_00000001"
    assert len(read_log(tmp_path / "r" / "log.csv")) == 1
    assert Toy(tmp_path / "r", steps=50).fit()["steps"] == 50  # no budget: goes on


def test_a_checkpoint_that_cannot_be_written_is_a_clear_error_and_keeps_the_last(tmp_path, monkeypatch):
    """A full disk while a checkpoint is written: an OSError naming it and the kept checkpoint, no debris, and the
    next run resumes from the kept one (safetensors reports it as its own SafetensorError, torch.save as a
    RuntimeError: neither is an error the command line reports in one line)."""
    import safetensors.torch as st

    Toy(tmp_path / "r", steps=2).fit()
    real = st.save_model

    def full_disk(model, filename, *a, **kw):
        real(model, filename, *a, **kw)
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(st, "save_model", full_disk)
    kept = r"cannot write checkpoint .*step_00000004 .*No space left.*step_00000002 is kept"
    with pytest.raises(OSError, match=kept):
        Toy(tmp_path / "r", steps=6, extend=True).fit()
    ckpts = tmp_path / "r" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000002"]
    monkeypatch.setattr(st, "save_model", real)
    Toy(tmp_path / "a").fit()
    Toy(tmp_path / "r", steps=6, extend=True).fit()
    a, r = read_log(tmp_path / "a" / "log.csv"), read_log(tmp_path / "r" / "log.csv")
    assert [x["loss"] for x in r] == [x["loss"] for x in a]


def test_a_bug_while_saving_keeps_its_traceback(tmp_path):
    class Unpicklable:
        def state_dict(self):
            return {"f": lambda: 0}

        def load_state_dict(self, state): ...

    toy = Toy(tmp_path / "r", steps=2)
    toy.stateful["bad"] = Unpicklable()
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        toy.fit()


def test_a_trainer_launched_by_torchrun_on_several_processes_is_refused(tmp_path, monkeypatch):
    """Only the LM trainer trains data-parallel: any other under torchrun would train the same run once per process,
    all writing the same folder (seen: a crash on another process's half-written checkpoint)."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"`innerloop synth train` trains in one process.*process 1 of 2.*torchrun"):
        Run(tmp_path / "r", {"steps": 2}, command="innerloop synth train")
    monkeypatch.setenv("WORLD_SIZE", "1")
    Run(tmp_path / "r", {"steps": 2})  # one process: fine
    assert not (tmp_path / "r").exists()


def test_resumed_tensorboard_log_purges_the_killed_segments_steps(tmp_path, monkeypatch):
    """log.csv drops the rows logged after the checkpoint by a killed run; TensorBoard must hide those steps too, or
    every step between the checkpoint and the kill shows twice (tensorboard itself need not be installed here)."""
    import sys
    import types

    made = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            made.append(purge_step)

        def add_scalar(self, *a): ...

        def close(self): ...

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    from innerloop.runs import CSVLogger

    CSVLogger(tmp_path / "log.csv", ["step", "loss"], None, tmp_path / "tb").close()
    CSVLogger(tmp_path / "log.csv", ["step", "loss"], 4, tmp_path / "tb").close()
    assert made == [None, 5]  # a new run purges nothing; resumed at step 4, steps >= 5 are logged again


def test_a_garbled_log_is_an_error_naming_the_file(tmp_path):
    bad = tmp_path / "log.csv"
    bad.write_bytes(b"step,loss\n1,\xff\xfe\n")
    with pytest.raises(ValueError, match=f"{bad} is not a readable CSV log"):
        read_log(bad)


def test_rng_states_loaded_onto_another_device_are_restored_on_the_cpu():
    """CPU stand-in for the GPU test below: restore_rng moves each generator state to the CPU before torch takes it
    (a state given as is, here an object that is only a tensor after .cpu(), was refused)."""
    from innerloop.runs.checkpoint import capture_rng, restore_rng

    class OnTheGPU:  # what map_location="cuda" makes of the saved ByteTensor, as far as restore_rng can tell
        def __init__(self, t):
            self.t = t

        def cpu(self):
            return self.t

    state = capture_rng()
    want = torch.rand(4)
    restore_rng({**state, "torch": OnTheGPU(state["torch"])})
    assert torch.equal(torch.rand(4), want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the checkpoint is loaded onto it")
def test_a_checkpoint_loaded_onto_the_gpu_resumes_its_rng(tmp_path):
    """The GPU trainers resume with ``map_location`` their device, which moves every tensor of ``trainer.pt`` there,
    the generator states too; torch takes those only as CPU byte tensors (every GPU resume used to fail with
    "RNG state must be a torch.ByteTensor")."""
    Toy(tmp_path / "a").fit()
    Toy(tmp_path / "b", steps=4).fit()
    Toy(tmp_path / "b", steps=6, extend=True).fit(map_location="cuda")
    a, b = read_log(tmp_path / "a" / "log.csv"), read_log(tmp_path / "b" / "log.csv")
    assert [r["loss"] for r in b] == [r["loss"] for r in a]


def test_an_extension_stopped_before_its_first_checkpoint_resumes_from_out_alone(tmp_path):
    """`--extend --steps 8` killed before it checkpointed: config.json already says 8 steps (and records the
    extension), the newest checkpoint still 4; resuming with the run's settings (`--out` alone, no --extend) goes on
    exactly (it used to be refused as "a checkpoint of a different run")."""
    from innerloop.runs import Callback

    class CrashAt(Callback):
        def on_step_start(self, trainer, step):
            if step == 5:
                raise KeyError("killed")

    Toy(tmp_path / "a", steps=8).fit()
    Toy(tmp_path / "b", steps=4).fit()
    extended = Toy(tmp_path / "b", steps=8, extend=True)
    extended.callbacks = [CrashAt()]
    with pytest.raises(KeyError):
        extended.fit()
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step_00000004"
    Toy(tmp_path / "b", steps=8).fit()
    a, b = read_log(tmp_path / "a" / "log.csv"), read_log(tmp_path / "b" / "log.csv")
    assert [r["loss"] for r in b] == [r["loss"] for r in a]
    saved = json.loads((tmp_path / "b" / "config.json").read_text())["resolved"]["extensions"]
    assert saved == [{"from": 4, "to": 8, "at_step": 4}]
    with pytest.raises(ConfigMismatchError, match="steps: checkpoint 8 vs now 10"):  # an extension not asked for
        Toy(tmp_path / "b", steps=10).fit()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names the synced files through /proc")
def test_the_log_rows_a_checkpoint_holds_are_on_disk_before_it(tmp_path, monkeypatch):
    """The checkpoint's files are fsynced; the log rows of the steps it holds must be too, first: after a power loss a
    checkpoint whose rows stayed in the page cache would resume past them, and nobody would log them again."""
    synced, real = [], os.fsync

    def fsync(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    Toy(tmp_path / "r").fit()  # 6 steps, a checkpoint every 2
    assert [n for n in synced if n in ("log.csv", "model.safetensors")] == ["log.csv", "model.safetensors"] * 3


def test_an_extension_is_recorded_once_when_a_damaged_checkpoint_is_skipped(tmp_path):
    """A checkpoint from before manifests whose weights do not load is skipped after its config was checked: the
    extension is recorded at the checkpoint resumed from, once (it used to be recorded for both)."""
    Toy(tmp_path / "r", steps=4).fit()
    newest = latest_checkpoint(tmp_path / "r" / "checkpoints")
    (newest / MANIFEST).unlink()
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.warns(UserWarning, match="step_00000004 is damaged"):
        Toy(tmp_path / "r", steps=6, extend=True).fit()
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["resolved"]["extensions"]
    assert saved == [{"from": 4, "to": 6, "at_step": 2}]


def test_one_process_trains_a_run_at_a_time(tmp_path):
    """A second trainer of the same ``out`` (another process, or another Run here: flock conflicts between open
    descriptions) is refused while the first holds the run, ``--fresh`` included (it would move the run being
    written aside), with nothing changed; the lock is given back when ``fit`` returns or raises."""
    from innerloop.runs import RunInUseError

    out = tmp_path / "r"
    Toy(out, steps=2).fit()  # fit released the lock: the same run resumes in the same process
    holder = Run(out, {"lr": 0.1, "steps": 4}, extend=True)
    holder.acquire()
    before = sorted(p.name for p in out.rglob("*"))
    for kw in ({"extend": True}, {"fresh": True}):
        with pytest.raises(RunInUseError, match=r"is in use: another process is training this run now"):
            Toy(out, steps=4, **kw).fit()
    assert sorted(p.name for p in out.rglob("*")) == before and not list(tmp_path.glob("r.previous-*"))
    holder.release()
    assert Toy(out, steps=4, extend=True).fit()["steps"] == 4
    with pytest.raises(TrainingDivergedError):
        Toy(tmp_path / "nan", poison_at=0).fit()
    Toy(tmp_path / "nan", steps=2, fresh=True).fit()  # the diverged fit gave its lock back
    assert (tmp_path / "nan").exists() and list(tmp_path.glob("nan.previous-*"))


def test_a_killed_process_leaves_no_stale_lock(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "r"
    code = (f"import os; from innerloop.runs import Run; r = Run({str(out)!r}, {{}}); r.acquire(); "
            "print('locked', flush=True); os._exit(9)")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 9 and "locked" in p.stdout
    assert Toy(out, steps=2).fit()["steps"] == 2
class EvalToy(Toy):
    """Toy whose validation depends on the resume-free setting ``eval_n`` (the number of validation rows)."""

    def __init__(self, out, eval_n=2, steps=6, max_seconds=0.0, eval_keys=("eval_n",), **kw):
        self.eval_n, self.evaluations = eval_n, 0
        super().__init__(None, steps=steps)
        self.run = Run(out, {"lr": 0.1, "steps": steps, "eval_n": eval_n, "max_seconds": max_seconds},
                       resume_free={"eval_n", "max_seconds"}, **kw)  # fmt: skip
        self.max_seconds, self.eval_keys = max_seconds, tuple(eval_keys)

    def evaluate_metrics(self):
        self.evaluations += 1
        x = torch.linspace(-1, 1, 3 * self.eval_n).reshape(self.eval_n, 3)
        return {"loss": (self.net(x) - x.sum(1, keepdim=True)).pow(2).mean()}


def test_a_finished_run_is_evaluated_again_only_when_its_eval_settings_changed(tmp_path):
    out = tmp_path / "a"
    first = EvalToy(out, eval_n=2)
    first.fit()
    assert first.evaluations == 1
    same = EvalToy(out, eval_n=2)
    assert same.fit()["val_loss"] == first.last_eval["loss"] and same.evaluations == 0  # the saved evaluation
    rows = read_log(out / "log.csv")
    changed = EvalToy(out, eval_n=5)
    s = changed.fit()
    fresh = EvalToy(tmp_path / "fresh", eval_n=5)
    assert changed.evaluations == 1 and s["val_loss"] == fresh.fit()["val_loss"] != first.last_eval["loss"]
    assert read_log(out / "log.csv") == rows  # the log keeps the rows as they were logged
    again = EvalToy(out, eval_n=5)  # the checkpoint was re-saved with the new evaluation and its settings
    assert again.fit()["val_loss"] == s["val_loss"] and again.evaluations == 0
    back = EvalToy(out, eval_n=2)
    assert back.fit()["val_loss"] == first.last_eval["loss"] and back.evaluations == 1
    # the training state re-saved is the run's: extended, it trains on as the never re-evaluated run does
    for o in (out, tmp_path / "fresh"):
        EvalToy(o, eval_n=2, steps=8, extend=True).fit()
    losses = [[r["loss"] for r in read_log(o / "log.csv")] for o in (out, tmp_path / "fresh")]
    assert losses[0] == losses[1]
    assert not list((out / "checkpoints").glob("*.tmp"))


def test_eval_settings_unknown_to_an_old_checkpoint_count_as_matching(tmp_path):
    out = tmp_path / "a"
    EvalToy(out, eval_n=2).fit()
    path = latest_checkpoint(out / "checkpoints")
    state = torch.load(path / "trainer.pt", weights_only=False)
    del state["config"]  # written before checkpoints carried their config
    torch.save(state, path / "trainer.pt")
    (path / MANIFEST).unlink()
    changed = EvalToy(out, eval_n=5)
    changed.fit()
    assert changed.evaluations == 0
    no_keys = EvalToy(tmp_path / "b", eval_n=2, eval_keys=())
    no_keys.fit()
    later = EvalToy(tmp_path / "b", eval_n=5, eval_keys=())
    later.fit()
    assert later.evaluations == 0  # a trainer that names no eval keys reports its saved evaluation, as before


def test_a_run_whose_time_budget_is_spent_is_evaluated_again_with_changed_settings(tmp_path):
    out = tmp_path / "a"
    first = EvalToy(out, eval_n=2, max_seconds=1e-9)  # stops after its first step
    s = first.fit()
    assert s["stopped_early"] and s["steps"] == 1
    changed = EvalToy(out, eval_n=5, max_seconds=1e-9)
    s2 = changed.fit()
    assert s2["steps"] == 1 and changed.evaluations == 1 and s2["val_loss"] != s["val_loss"]


def test_extend_on_a_folder_without_a_run_is_refused(tmp_path):
    """--extend promises a run to train further: on a folder with no config.json and no checkpoint (a mistyped --out)
    it is an error, not a new run with default settings; a run that wrote its config but no checkpoint yet goes on."""
    with pytest.raises(ValueError, match=r"--extend trains a run further, but .*typo holds no run"):
        Toy(tmp_path / "typo", steps=4, extend=True).fit()
    assert not (tmp_path / "typo").exists()
    Run(tmp_path / "r", {"lr": 0.1, "steps": 4}).write_config()  # as a run stopped before its first checkpoint
    assert Toy(tmp_path / "r", steps=4, extend=True).fit()["steps"] == 4
