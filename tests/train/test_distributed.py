"""DDP on CPU (gloo): 2 torchrun processes end with identical weights, equal to one process on the same global batch."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from innerloop.train import TrainConfig
from innerloop.train.lm import load_run, train_lm

WORKER = Path(__file__).with_name("_ddp_worker.py")


def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    cfg = TrainConfig.from_flat(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, context=32, batch_size=4,
                                steps=3,
                      warmup_steps=1, eval_every=0, eval_batches=1, log_every=1, checkpoint_every=3,
                      grad_accum=2, adam_eps=1e-4, out=str(tmp_path / "ddp"))  # fmt: skip
    # adam_eps 1e-4: with the default 1e-8, Adam's first steps move every weight by ~lr * sign(grad), so float noise
    # on near-zero gradients (summation order differs across ranks) would flip signs and hide real differences.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           json.dumps(cfg.to_dict()), str(tmp_path)]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    w0, w1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks differ at {k}"
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2
    single = train_lm(dataclasses.replace(cfg, out=str(tmp_path / "single")))
    assert single["steps"] == 3
    ref, _ = load_run(tmp_path / "single")
    ddp, _ = load_run(tmp_path / "ddp")  # rank 0's checkpoint
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(w0[k], v, rtol=1e-5, atol=1e-7, msg=lambda m, k=k: f"{k}: {m}")
        assert torch.equal(ddp.state_dict()[k], w0[k])
    from innerloop.runs import read_log

    rows_ddp, rows_one = read_log(tmp_path / "ddp" / "log.csv"), read_log(tmp_path / "single" / "log.csv")
    assert len(rows_ddp) == 3  # only rank 0 logs
    for a, b in zip(rows_ddp, rows_one):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-6)


def test_uneven_global_batch_is_a_clear_error(tmp_path):
    from innerloop.train.distributed import DistInfo
    from innerloop.train.lm import make_batch_fn

    cfg = TrainConfig.from_flat(batch_size=6, grad_accum=2, out=str(tmp_path))
    with pytest.raises(ValueError, match="divisible by world_size"):
        make_batch_fn(cfg, torch.zeros(1000, dtype=torch.uint8), DistInfo(rank=0, world_size=2))
