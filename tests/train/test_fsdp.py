"""FSDP2 on CPU (gloo): 2 torchrun processes train as one process on the same global batch, and their checkpoints
(gathered to rank 0, in the single-process layout) resume exactly under one process and under FSDP."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from innerloop.runs import load_state, read_log
from innerloop.runs.checkpoint import MODEL_FILE
from innerloop.train import TrainConfig
from innerloop.train.distributed import DistInfo
from innerloop.train.fsdp import check_parallel
from innerloop.train.lm import load_run, make_batch_fn, train_lm

WORKER = Path(__file__).with_name("_fsdp_worker.py")
# Tolerances: FSDP reduce-scatters (averages) gradient shards where one process sums one batch, so results agree up to
# float32 summation order (as DDP's); adam_eps 1e-4 keeps Adam's first steps from amplifying that noise (see the DDP
# test).
RTOL, ATOL, LOSS_REL = 1e-5, 1e-6, 1e-6


def _cfg(out: Path, **kw) -> TrainConfig:
    opts = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, context=32, batch_size=4, steps=4,
                warmup_steps=1, eval_every=0, eval_batches=1, log_every=1, checkpoint_every=2, grad_accum=2,
                grad_clip=0.5, adam_eps=1e-4, out=str(out))  # fmt: skip
    return TrainConfig.from_flat(**{**opts, **kw})


def _torchrun(cfg: TrainConfig, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           json.dumps(cfg.to_dict()), str(out)]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for k, v in b.state_dict().items():
        torch.testing.assert_close(a.state_dict()[k], v, rtol=RTOL, atol=ATOL, msg=lambda m, k=k: f"{k}: {m}")


def _rewind(run: Path, to: Path, step: int) -> None:
    """A copy of ``run`` as a process killed right after checkpoint ``step`` would have left it."""
    shutil.copytree(run, to)
    for ckpt in (to / "checkpoints").glob("step_*"):
        if int(ckpt.name.split("_")[1]) > step:
            shutil.rmtree(ckpt)
    (to / "checkpoints" / "latest").write_text(f"step_{step:08d}\n")


def test_fsdp_two_cpu_processes_match_one_process_and_resume(tmp_path):
    fsdp_cfg = _cfg(tmp_path / "fsdp", parallel="fsdp")
    _torchrun(fsdp_cfg, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    single_cfg = dataclasses.replace(fsdp_cfg, parallel="ddp", out=str(tmp_path / "single"))
    train_lm(single_cfg)
    ref, _ = load_run(tmp_path / "single")
    fsdp, _ = load_run(tmp_path / "fsdp")  # the checkpoint rank 0 gathered: the usual layout, loaded as usual
    _assert_same_weights(fsdp, ref)
    # each rank holds about half of the parameters (FSDP pads each one to a multiple of 2 rows)
    whole = sum(p.numel() for p in ref.parameters())
    assert all(whole / 2 <= r["local_numel"] <= whole / 2 + 64 * 32 for r in ranks), (whole, ranks)
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the loss is averaged over ranks
    rows_fsdp, rows_one = read_log(tmp_path / "fsdp" / "log.csv"), read_log(tmp_path / "single" / "log.csv")
    assert len(rows_fsdp) == 4 and rows_fsdp[-1]["val_loss"]  # rank 0 logs; every rank joined the evaluation
    for a, b in zip(rows_fsdp, rows_one):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=LOSS_REL)
        assert float(a["grad_norm"]) == pytest.approx(float(b["grad_norm"]), rel=1e-5)  # over DTensor gradients
    assert float(rows_fsdp[-1]["val_loss"]) == pytest.approx(float(rows_one[-1]["val_loss"]), rel=1e-5)
    # same checkpoint layout: the same weight names (tied lm_head stored once), an AdamW state of the same shape
    from safetensors import safe_open

    ck_fsdp, ck_one = (tmp_path / r / "checkpoints" / "step_00000002" for r in ("fsdp", "single"))
    with safe_open(ck_fsdp / MODEL_FILE, "pt") as f, safe_open(ck_one / MODEL_FILE, "pt") as g:
        assert sorted(f.keys()) == sorted(g.keys())
    opt_fsdp, opt_one = load_state(ck_fsdp)["stateful"]["optimizer"], load_state(ck_one)["stateful"]["optimizer"]
    assert opt_fsdp["param_groups"] == opt_one["param_groups"]
    assert sorted(opt_fsdp["state"]) == sorted(opt_one["state"])
    for i, s in opt_one["state"].items():
        for k, v in s.items():
            torch.testing.assert_close(opt_fsdp["state"][i][k], v, rtol=RTOL, atol=ATOL)
    # FSDP checkpoint at step 2 -> one process trains steps 3-4: equals the uninterrupted run
    _rewind(tmp_path / "fsdp", tmp_path / "resumed_one", 2)
    train_lm(dataclasses.replace(single_cfg, out=str(tmp_path / "resumed_one")))
    resumed, _ = load_run(tmp_path / "resumed_one")
    _assert_same_weights(resumed, ref)
    rows = read_log(tmp_path / "resumed_one" / "log.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert float(rows[-1]["loss"]) == pytest.approx(float(rows_one[-1]["loss"]), rel=LOSS_REL)


@pytest.mark.slow
def test_fsdp_resumes_a_single_process_checkpoint(tmp_path):
    """One process's checkpoint at step 2 -> FSDP trains steps 3-4 (weights and AdamW state sharded on load)."""
    single_cfg = _cfg(tmp_path / "single")
    train_lm(single_cfg)
    _rewind(tmp_path / "single", tmp_path / "resumed", 2)
    _torchrun(dataclasses.replace(single_cfg, parallel="fsdp", out=str(tmp_path / "resumed")), tmp_path)
    _assert_same_weights(load_run(tmp_path / "resumed")[0], load_run(tmp_path / "single")[0])


def test_fsdp_needs_a_distributed_launch(tmp_path):
    with pytest.raises(ValueError, match="torchrun"):
        check_parallel("fsdp", 1)
    cfg = _cfg(tmp_path / "run", parallel="fsdp", data=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="--parallel fsdp shards the model over several processes"):
        train_lm(cfg, dist_info=DistInfo())  # refused before the (missing) data is read
    assert not (tmp_path / "run").exists()


def test_bad_parallel_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="parallel must be 'ddp' or 'fsdp'"):
        _cfg(tmp_path, parallel="zero3")
    cfg = _cfg(tmp_path, parallel="fsdp", batch_size=6)  # 6 rows over 2 ranks * 2 micro-batches
    with pytest.raises(ValueError, match="divisible by world_size"):
        make_batch_fn(cfg, torch.zeros(1000, dtype=torch.uint8), DistInfo(rank=0, world_size=2))


def test_parallel_may_change_on_resume(tmp_path):
    """A run started under FSDP resumes in one process (``parallel`` is not part of what a run computes)."""
    from innerloop.train.config import RESUME_FREE_KEYS

    assert "parallel" in RESUME_FREE_KEYS
    assert TrainConfig.from_dict({k: v for k, v in _cfg(tmp_path).to_dict().items() if k != "parallel"}).parallel \
        == "ddp"  # configs written before the flag existed


def test_cli_refuses_fsdp_without_torchrun(tmp_path, capsys, monkeypatch):
    from innerloop.cli.main import main

    monkeypatch.delenv("RANK", raising=False)
    assert main(["lm", "train", "--parallel", "fsdp", "--device", "cpu", "--out", str(tmp_path / "r")]) == 2
    assert "torchrun --standalone --nproc_per_node=N" in capsys.readouterr().err
