"""The run scaffold on a toy trainer: what every trainer inherits, tested without any model code."""

from __future__ import annotations

import json

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
