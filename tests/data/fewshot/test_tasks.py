"""Sinusoid tasks as in the paper; the seeded N-way K-shot sampler and its errors."""

from __future__ import annotations

import math

import pytest
import torch

from innerloop.data import SinusoidTasks, Taskset, mean_ci95
from innerloop.data.fewshot.sinusoid import sinusoid


def test_sinusoid_distribution_and_seeding():
    tasks = SinusoidTasks(shots=10, query_shots=7, seed=3)
    b = tasks.batch(2, 500)
    assert b.support_x.shape == (500, 10, 1) and b.query_x.shape == (500, 7, 1)
    amp, phase = b.info["amplitude"], b.info["phase"]
    assert amp.min() >= 0.1 and amp.max() <= 5.0 and phase.min() >= 0 and phase.max() <= math.pi
    assert b.support_x.abs().max() <= 5.0 and b.support_x.min() < -4.5 and b.support_x.max() > 4.5
    torch.testing.assert_close(b.support_y, sinusoid(b.support_x.double(), amp, phase).float())
    again = SinusoidTasks(shots=10, query_shots=7, seed=3).batch(2, 500)
    assert torch.equal(again.support_x, b.support_x) and torch.equal(again.query_y, b.query_y)
    assert not torch.equal(tasks.batch(3, 500).support_x, b.support_x)
    # batch i is the slice of the fixed task sequence
    assert torch.equal(tasks.eval_batch(1000, 500).support_x, b.support_x)


class Toy:
    def __init__(self, classes=7, per_class=6):
        self.labels = torch.arange(classes).repeat_interleave(per_class)

    def images(self, idx):
        return torch.stack([self.labels[idx].float(), idx.float()], 1)  # [n, 2]: (class, index)


def test_taskset_episodes():
    ts = Taskset(Toy(), ways=3, shots=2, query_shots=3, seed=5)
    sx, sy, qx, qy = ts.sample(0)
    assert sx.shape == (6, 2) and qx.shape == (9, 2)
    assert sy.tolist() == [0, 0, 1, 1, 2, 2] and qy.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for lab in range(3):  # consistent relabelling, disjoint support/query examples
        s_cls = set(sx[sy == lab, 0].tolist())
        assert len(s_cls) == 1 and s_cls == set(qx[qy == lab, 0].tolist())
    assert not set(sx[:, 1].tolist()) & set(qx[:, 1].tolist())
    b = ts.batch(1, 4)
    assert b.support_x.shape == (4, 6, 2)
    assert torch.equal(b.support_x[0], ts.sample(4)[0])  # reproducible by index
    fixed = Taskset(Toy(), 3, 2, num_tasks=10)
    assert len(fixed) == 10
    with pytest.raises(IndexError):
        fixed.sample(10)


def test_taskset_errors():
    with pytest.raises(ValueError, match="ways=9 is more than the 7 classes"):
        Taskset(Toy(), ways=9, shots=1)
    with pytest.raises(ValueError, match="exceeds the 6 examples"):
        Taskset(Toy(), ways=2, shots=4, query_shots=3)


def test_mean_ci95():
    m, ci = mean_ci95(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert m == 2.5 and abs(ci - 1.96 * torch.tensor([1.0, 2, 3, 4]).std().item() / 2) < 1e-6


def test_negative_query_shots_are_refused():
    """``query_shots=-2`` drew ``shots - 2`` points and returned them all as the support set (3 of 5), silently."""
    from innerloop.icl.tasks import LinearRegressionTasks

    for cls in (SinusoidTasks, LinearRegressionTasks):
        with pytest.raises(ValueError, match="query_shots must be >= 0, got -2"):
            cls(shots=5, query_shots=-2)
    assert SinusoidTasks(shots=5, query_shots=0).batch(0, 1).support_x.shape == (1, 5, 1)


@pytest.mark.parametrize("seed", [1000, 2000])
def test_sinusoid_training_seed_of_a_fixed_set_is_refused(seed):
    """Training seed 1000 (2000) drew exactly the validation (test) tasks."""
    from innerloop.data.fewshot.benchmarks import get_tasksets

    with pytest.raises(ValueError, match=f"seed {seed} is the seed of the fixed sinusoid"):
        get_tasksets("sinusoid", shots=5, seed=seed)
    train, val, _ = get_tasksets("sinusoid", shots=5, seed=seed + 1)
    assert not torch.equal(train.eval_batch(0, 1).support_x, val.eval_batch(0, 1).support_x)
