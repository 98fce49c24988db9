"""scripts/icl_feature_probe.py (the cached-feature diagnostic of RESULTS.md): task sampling and the query-first
layout keep the ICL contract (balanced one-shot tasks; query i answered from the support set and query i only)."""

from __future__ import annotations

import pytest
import torch

from innerloop.icl.model import ICLModel


@pytest.fixture(scope="module")
def probe(load_script):
    return load_script("icl_feature_probe")


def test_sample_draws_balanced_tasks_from_distinct_classes(probe):
    feats = torch.arange(10 * 20 * 3, dtype=torch.float).view(10, 20, 3)  # class c, drawer d: distinct rows
    sx, sy, qx, qy = probe.sample(feats, 4, ways=5, shots=2, queries=3, g=torch.Generator().manual_seed(0))
    assert sx.shape == (4, 10, 3) and sy.shape == (4, 10) and qx.shape == (4, 15, 3) and qy.shape == (4, 15)
    for n in range(4):
        assert torch.equal(sy[n].bincount(minlength=5), torch.full((5,), 2))
        cls = (sx[n, :, 0] // 60).long()  # the class of each support row
        assert len(set(cls.tolist())) == 5
        for label in range(5):  # one class per label, the same in support and queries
            assert len(set(cls[sy[n] == label].tolist())) == 1
            assert set((qx[n, qy[n] == label, 0] // 60).long().tolist()) == set(cls[sy[n] == label].tolist())
        support_rows, query_rows = set(sx[n, :, 0].tolist()), set(qx[n, :, 0].tolist())
        assert not support_rows & query_rows  # no query image is a support image


@pytest.mark.parametrize("mixer", ["gru", "ttt_linear"])
def test_query_first_answers_each_query_alone(probe, mixer):
    torch.manual_seed(0)
    m = ICLModel(mixer, 16, 1, 2, x_dim=4, y_dim=3, center_features=True).eval()
    g = torch.Generator().manual_seed(1)
    sx, qx = torch.randn(2, 3, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    sy = torch.eye(3).expand(2, 3, 3)
    with torch.no_grad():
        base = probe.query_first(m, sx, sy, qx)
        moved = qx.clone()
        moved[:, 2] += 3.0
        out = probe.query_first(m, sx, sy, moved)
        assert base.shape == (2, 5, 3)
        assert torch.equal(out[:, [0, 1, 3, 4]], base[:, [0, 1, 3, 4]])
        assert not torch.equal(out[:, 2], base[:, 2])
        relabel = sy[:, [1, 0, 2]]  # swap the labels of two support points: the answers move
        assert not torch.allclose(probe.query_first(m, sx, relabel, qx), base)
