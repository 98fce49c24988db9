"""The task distributions: seeded, pure functions of (seed, index), to specification, and OOD really out of range."""

from __future__ import annotations

import math

import pytest
import torch

from innerloop.data.fewshot import SinusoidTasks, sinusoid
from innerloop.icl.tasks import (
    OOD_AMPLITUDE,
    OOD_PHASE,
    OOD_WEIGHT_SCALE,
    LinearRegressionTasks,
    OODSinusoidTasks,
    make_tasks,
)


def _equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))


def test_linear_shapes_and_y_is_w_dot_x():
    b = LinearRegressionTasks(dim=5, shots=7, query_shots=3, seed=1).batch(2, 4)
    assert tuple(b.support_x.shape) == (4, 7, 5) and tuple(b.support_y.shape) == (4, 7, 1)
    assert tuple(b.query_x.shape) == (4, 3, 5) and tuple(b.query_y.shape) == (4, 3, 1)
    assert b.support_x.dtype == torch.float32 and tuple(b.info["w"].shape) == (4, 5)
    w = b.info["w"].float()
    for x, y in ((b.support_x, b.support_y), (b.query_x, b.query_y)):
        torch.testing.assert_close(y[..., 0], torch.einsum("nkd,nd->nk", x, w), atol=1e-5, rtol=1e-5)


def test_linear_is_seeded_and_a_pure_function_of_seed_and_index():
    tasks = LinearRegressionTasks(dim=3, shots=4, seed=5)
    assert _equal(tasks.batch(2, 3), tasks.eval_batch(6, 3))  # batch i = tasks i*n .. i*n + n - 1
    assert _equal(tasks.batch(2, 3), LinearRegressionTasks(dim=3, shots=4, seed=5).batch(2, 3))
    assert _equal(tasks.eval_batch(7, 1), LinearRegressionTasks(dim=3, shots=4, seed=5).tasks([7]))
    assert not torch.equal(tasks.batch(0, 2).support_x, LinearRegressionTasks(dim=3, shots=4, seed=6).batch(0, 2)
                           .support_x)  # fmt: skip
    assert not torch.equal(tasks.batch(0, 2).support_x, tasks.batch(1, 2).support_x)


def test_linear_weights_and_inputs_are_standard_normal():
    b = LinearRegressionTasks(dim=4, shots=50, seed=0).batch(0, 400)
    w, x = b.info["w"], b.support_x
    assert abs(w.mean().item()) < 0.1 and abs(w.std().item() - 1) < 0.05
    assert abs(x.mean().item()) < 0.02 and abs(x.std().item() - 1) < 0.02


def test_linear_noise_is_added_with_the_given_std():
    clean = LinearRegressionTasks(dim=3, shots=40, seed=2).batch(0, 100)
    noisy = LinearRegressionTasks(dim=3, shots=40, seed=2, noise=0.5).batch(0, 100)
    assert torch.equal(clean.support_x, noisy.support_x)  # the same x and w; only y moves
    resid = noisy.support_y - clean.support_y
    assert abs(resid.std().item() - 0.5) < 0.02


def test_linear_ood_scales_the_weights():
    ind = LinearRegressionTasks(dim=5, shots=5, seed=0).batch(0, 200)
    ood = LinearRegressionTasks(dim=5, shots=5, seed=0, ood=True).batch(0, 200)
    torch.testing.assert_close(ood.info["w"], OOD_WEIGHT_SCALE * ind.info["w"])
    assert ood.info["w"].std() > 2.5 and ind.info["w"].std() < 1.2
    assert ood.support_y.pow(2).mean() > 5 * ind.support_y.pow(2).mean()


def test_sinusoid_ood_parameters_are_outside_the_training_range():
    ind = SinusoidTasks(5, 20, seed=3).batch(0, 300)
    ood = OODSinusoidTasks(5, 20, seed=3).batch(0, 300)
    a, p = ood.info["amplitude"], ood.info["phase"]
    assert (a >= OOD_AMPLITUDE[0]).all() and (a <= OOD_AMPLITUDE[1]).all() and (a > 5.0).all()
    assert (p >= OOD_PHASE[0]).all() and (p <= OOD_PHASE[1]).all() and (p > math.pi).all()
    assert a.max() > 9.5 and a.min() < 5.5  # the whole OOD range is used
    assert (ind.info["amplitude"] <= 5).all() and (ind.info["phase"] <= math.pi).all()
    assert torch.equal(ind.support_x, ood.support_x)  # the same inputs; the functions moved
    want = sinusoid(torch.cat([ood.support_x, ood.query_x], 1).double(), a, p).float()
    torch.testing.assert_close(torch.cat([ood.support_y, ood.query_y], 1), want)


def test_make_tasks_picks_the_sampler_and_flag():
    assert type(make_tasks("sinusoid", 5)) is SinusoidTasks
    assert type(make_tasks("sinusoid", 5, ood=True)) is OODSinusoidTasks
    lin = make_tasks("linear", 5, dim=10, ood=True)
    assert isinstance(lin, LinearRegressionTasks) and lin.dim == 10 and lin.ood
    with pytest.raises(ValueError, match="unknown task 'cosine'"):
        make_tasks("cosine", 5)
    with pytest.raises(ValueError, match="noiseless"):
        make_tasks("sinusoid", 5, noise=0.1)
    with pytest.raises(ValueError, match="noise"):
        LinearRegressionTasks(noise=-1.0)


class _ToyClasses:
    """Three examples of each of 6 classes; an image is ``(class, example index)``."""

    labels = torch.arange(6).repeat_interleave(3)

    def images(self, idx):
        return torch.stack([self.labels[idx].float(), idx.float()], 1)


def test_fewshot_labels_are_permuted_per_task():
    """N-way K-shot (the Omniglot tasks' sampler): which class gets label 0 changes from task to task, so no learner
    can memorise a class-to-label map across tasks."""
    from innerloop.data.fewshot import Taskset

    ts = Taskset(_ToyClasses(), ways=3, shots=1, query_shots=1, seed=0)
    label0 = set()
    for i in range(20):
        sx, sy, qx, qy = ts.sample(i)
        assert sorted(sy.tolist()) == [0, 1, 2]
        label0.add(int(sx[sy == 0, 0]))
        for lab in range(3):  # the query of label c is of the support's class c
            assert qx[qy == lab, 0].item() == sx[sy == lab, 0].item()
    assert len(label0) > 3
