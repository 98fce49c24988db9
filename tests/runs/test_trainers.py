"""Every trainer on the run scaffold survives what a real run meets: SIGKILL, Ctrl-C, a damaged newest checkpoint,
a run directory of another config; each time it resumes to the same logged numbers as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _trainers import STEPS, TRAINERS  # noqa: E402

from innerloop.runs import (  # noqa: E402
    Callback,
    ConfigMismatchError,
    CorruptCheckpointError,
    RunInterrupted,
    latest_checkpoint,
    read_log,
)
from innerloop.testing import kill_mid_run

NAMES = sorted(TRAINERS)


def logged(out: Path, name: str) -> list[tuple]:
    case = TRAINERS[name]
    return [(r[case.step_key], *(r[c] for c in case.loss_cols)) for r in read_log(out / "log.csv")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[str, list[tuple]]:
    """The uninterrupted run of every trainer, logged."""
    root = tmp_path_factory.mktemp("straight")
    out = {}
    for name in NAMES:
        TRAINERS[name].run(root / name)
        out[name] = logged(root / name, name)
        assert [int(r[0]) for r in out[name]] == list(range(1, STEPS + 1))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_sigkill_then_resume_logs_the_same(name, tmp_path, straight):
    out = tmp_path / name
    child = Path(__file__).parent / "_child.py"
    threads = str(torch.get_num_threads())
    argv = [sys.executable, str(child), name, str(out), "0.4", threads]
    kill_mid_run(argv, out / "checkpoints" / "step_00000002")  # later steps are lost
    assert len(read_log(out / "log.csv")) < STEPS
    TRAINERS[name].run(out)
    assert logged(out, name) == straight[name]


class Interrupt(Callback):
    """Ctrl-C as the OS delivers it (a real SIGINT to this process) at the end of step ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, trainer, step, logs):
        if step == self.at:
            signal.raise_signal(signal.SIGINT)


@pytest.fixture
def sigint_default():
    """Ctrl-C as in a terminal (CI may start the tests with SIGINT ignored, which the trainers respect)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("name", NAMES)
def test_ctrl_c_saves_and_resume_logs_the_same(name, tmp_path, straight, sigint_default):
    out = tmp_path / name
    with pytest.raises(RunInterrupted, match="interrupted after step 4"):
        TRAINERS[name].run(out, callbacks=[Interrupt(at=3)])  # between the checkpoints at 2 and 4: saved at 4
    assert latest_checkpoint(out / "checkpoints").name == "step_00000004"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back
    TRAINERS[name].run(out)
    assert logged(out, name) == straight[name]


def _damage(path: Path, how: str) -> None:
    weights = path / "model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "garbage":  # same size, some bytes of the tensor data overwritten: loads "fine" without checksums
        data = bytearray(weights.read_bytes())
        data[-64:] = os.urandom(64)
        weights.write_bytes(bytes(data))
    elif how == "missing":
        weights.unlink()
    elif how == "state":
        (path / "trainer.pt").write_bytes(b"not a checkpoint")


class StopAt(Callback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, trainer, step, logs):
        trainer.should_stop = trainer.should_stop or trainer.step >= self.at


@pytest.mark.parametrize("how", ["truncated", "garbage", "missing", "state"])
@pytest.mark.parametrize("name", NAMES)
def test_damaged_newest_checkpoint_falls_back_to_the_previous(name, how, tmp_path, straight):
    out = tmp_path / name
    TRAINERS[name].run(out, callbacks=[StopAt(6)])  # checkpoints at 4 and 6
    newest = out / "checkpoints" / "step_00000006"
    _damage(newest, how)
    with pytest.warns(UserWarning, match=r"step_00000006 is damaged.*previous intact checkpoint .*step_00000004"):
        TRAINERS[name].run(out)
    assert logged(out, name) == straight[name]


@pytest.mark.parametrize("name", NAMES)
def test_every_checkpoint_damaged_is_an_error_naming_them(name, tmp_path):
    out = tmp_path / name
    TRAINERS[name].run(out, callbacks=[StopAt(4)])
    for ckpt in (out / "checkpoints").glob("step_*"):
        _damage(ckpt, "truncated")
    with pytest.raises(CorruptCheckpointError, match=r"no intact checkpoint.*step_00000004"):
        TRAINERS[name].run(out)


def _files(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", NAMES)
def test_another_config_is_refused_fresh_starts_over_extend_adds_steps(name, tmp_path, straight):
    out = tmp_path / name
    TRAINERS[name].run(out, callbacks=[StopAt(4)])
    before = _files(out)
    other = {"lm": {"lr": 1e-2}, "meta": {"algorithm": "reptile"}, "synth": {"lr": 1e-2}}[name]
    field = next(iter(other))
    with pytest.raises(ConfigMismatchError, match=rf"{field}: checkpoint .* vs now .*--fresh"):
        TRAINERS[name].run(out, **other)
    assert _files(out) == before  # nothing written, nothing lost

    TRAINERS[name].run(out, fresh=True, **other)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(f"{name}.previous-")]
    assert len(kept) == 1 and _files(kept[0]).keys() == {kept[0] / p.relative_to(out) for p in before}

    steps_key = "iterations" if name == "meta" else "steps"
    with pytest.raises(ConfigMismatchError, match="--extend"):
        TRAINERS[name].run(out, **other, **{steps_key: STEPS + 2})
    TRAINERS[name].run(out, extend=True, **other, **{steps_key: STEPS + 2})
    assert [int(r[0]) for r in logged(out, name)] == list(range(1, STEPS + 3))


def test_ignored_sigint_stays_ignored(tmp_path):
    """A run started with Ctrl-C ignored (nohup) leaves it ignored: no handler is installed."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        seen = []

        class Look(Callback):
            def on_step_end(self, trainer, step, logs):
                seen.append(signal.getsignal(signal.SIGINT))

        TRAINERS["synth"].run(tmp_path / "synth", callbacks=[Look()])
        assert seen and all(h is signal.SIG_IGN for h in seen)
    finally:
        signal.signal(signal.SIGINT, before)
