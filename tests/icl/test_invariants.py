"""ICL formatting invariants for every kind of learner and task family, on random inputs (no data needed).

- In-context learners (every mixer): the prediction for query i depends only on the support set and query i (on
  images too: the encoder normalises each image on its own), never on a query's label; the support set is read
  causally (all our mixers are causal, none is set-invariant), so its order matters.
- Gradient learners: adaptation is a full-batch gradient on the support set, so they are invariant to the order of
  the support set. On regression (MLP) query i depends only on query i; on images MAML's CNN normalises with the
  batch statistics of the queries (as MAML's reference code and published numbers do), so its query predictions
  are transductive: that difference is documented here, not hidden.
- Learner-free baselines (nearest_pixel, least_squares) are set-invariant and query-independent.

The regression-only versions of the in-context checks live in test_model.py; these extend them to Omniglot-shaped
inputs and to the learner interface used by the harness.
"""

from __future__ import annotations

import pytest
import torch

from innerloop.data.fewshot import TaskBatch
from innerloop.icl import ICLModel, InContextLearner, build_learner
from innerloop.icl.compare import _baseline_mse, _nearest_pixel_accuracy
from innerloop.layers import MIXERS

WAYS, SIZE = 3, 12


def _image_task(shots: int = 2, queries: int = 2, n: int = 2) -> TaskBatch:
    g = torch.Generator().manual_seed(3)
    k, q = WAYS * shots, WAYS * queries
    sy = torch.arange(WAYS).repeat_interleave(shots).repeat(n, 1)  # [n, k]
    qy = torch.arange(WAYS).repeat_interleave(queries).repeat(n, 1)
    return TaskBatch(torch.rand(n, k, 1, SIZE, SIZE, generator=g), sy, torch.rand(n, q, 1, SIZE, SIZE, generator=g), qy)


def _regression_task(k: int = 6, q: int = 4, n: int = 2) -> TaskBatch:
    g = torch.Generator().manual_seed(4)
    return TaskBatch(torch.randn(n, k, 1, generator=g), torch.randn(n, k, 1, generator=g),
                     torch.randn(n, q, 1, generator=g), torch.randn(n, q, 1, generator=g))  # fmt: skip


def _icl_image(mixer: str):
    torch.manual_seed(0)
    return build_learner(mixer, hidden_size=16, num_layers=2, num_heads=2, classes=WAYS, channels=8).eval()


def _with(batch: TaskBatch, **changes) -> TaskBatch:
    parts = {k: getattr(batch, k) for k in ("support_x", "support_y", "query_x", "query_y")}
    return TaskBatch(**{**parts, **changes})


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_icl_on_images_query_i_sees_only_the_support_and_query_i(mixer):
    learner, b = _icl_image(mixer), _image_task()
    with torch.no_grad():
        base = learner.predict(b.support_x, b.support_y, b.query_x)  # [N, Q, ways]
        assert base.shape == (2, WAYS * 2, WAYS)
        for j in (0, b.query_x.shape[1] - 1):
            moved = b.query_x.clone()
            moved[:, j] = torch.rand_like(moved[:, j])
            out = learner.predict(b.support_x, b.support_y, moved)
            keep = [i for i in range(b.query_x.shape[1]) if i != j]
            assert torch.equal(out[:, keep], base[:, keep]), f"{mixer}: query {j} changed another query"
            assert not torch.equal(out[:, j], base[:, j]), f"{mixer}: query {j} ignored"
        loss, acc = learner.task_scores(b)  # query labels enter the scores only, never the predictions
        assert loss.shape == (2,) and acc is not None and acc.shape == (2,)


@pytest.mark.parametrize("mixer", ["attention", "ttt_linear", "gru"])
def test_icl_on_images_reads_the_support_causally_and_uses_its_labels(mixer):
    """The support tokens are read causally; the tokens themselves see the support set only through its mean
    feature (subtracted from every image's features), which no permutation of the support set changes."""
    learner, b = _icl_image(mixer), _image_task()
    model = learner.model
    with torch.no_grad():
        onehot = torch.nn.functional.one_hot(b.support_y, WAYS).float()
        center = model.support_center(b.support_x)
        tokens = model.encode(b.support_x, onehot, center)
        h, _ = model.blocks(model.embed(tokens))
        later = tokens.clone()
        later[:, 4] = torch.randn_like(later[:, 4])
        h2, _ = model.blocks(model.embed(later))
        assert torch.equal(h[:, :4], h2[:, :4]) and not torch.equal(h[:, 4], h2[:, 4])  # causal prefix
        perm = torch.tensor([5, 3, 1, 0, 2, 4])
        torch.testing.assert_close(model.support_center(b.support_x[:, perm]), center)  # a set summary
        base = learner.predict(b.support_x, b.support_y, b.query_x)
        relabel = (b.support_y + 1) % WAYS  # the same images, classes renamed
        assert not torch.allclose(base, learner.predict(b.support_x, relabel, b.query_x))
        permuted = learner.predict(b.support_x[:, perm], b.support_y[:, perm], b.query_x)
        assert not torch.allclose(base, permuted), f"{mixer}: unexpectedly invariant to the support order"


@pytest.mark.parametrize("algo", ["maml", "fomaml", "metasgd", "anil", "reptile"])
def test_gradient_learners_are_invariant_to_the_support_order(algo):
    torch.manual_seed(0)
    for learner, b in ((build_learner(algo, classes=WAYS, inner_lr=0.4, test_steps=2), _image_task()),
                       (build_learner(algo, test_steps=2), _regression_task())):  # fmt: skip
        perm = torch.randperm(b.support_x.shape[1])
        loss, _ = learner.task_scores(b)
        loss_p, _ = learner.task_scores(_with(b, support_x=b.support_x[:, perm], support_y=b.support_y[:, perm]))
        torch.testing.assert_close(loss_p, loss, rtol=1e-4, atol=1e-5)


def _per_query_losses(learner, b: TaskBatch) -> torch.Tensor:
    """Loss of each query alone ``[Q]`` of task 0 (a task of one query per call)."""
    q = b.query_x.shape[1]
    one = [_with(b, query_x=b.query_x[:, i : i + 1], query_y=b.query_y[:, i : i + 1]) for i in range(q)]
    return torch.stack([learner.task_scores(t)[0][0] for t in one])


def test_gradient_learner_queries_are_independent_on_regression_and_transductive_on_images():
    torch.manual_seed(0)
    reg, b = build_learner("maml", test_steps=1), _regression_task()
    together = reg.task_scores(b)[0][0]  # mean over the queries of task 0
    torch.testing.assert_close(together, _per_query_losses(reg, b).mean(), rtol=1e-5, atol=1e-6)
    img, b = build_learner("maml", classes=WAYS, inner_lr=0.4, test_steps=1), _image_task()
    together = img.task_scores(b)[0][0]
    alone = _per_query_losses(img, b).mean()
    assert not torch.allclose(together, alone), "MAML's CNN now normalises per image: update the docs and this test"


def test_learner_free_baselines_are_set_invariant_and_query_independent():
    b = _image_task(shots=3, queries=3)
    perm = torch.randperm(b.support_x.shape[1])
    acc = _nearest_pixel_accuracy(b)
    torch.testing.assert_close(acc, _nearest_pixel_accuracy(_with(b, support_x=b.support_x[:, perm],
                                                                     support_y=b.support_y[:, perm])))  # fmt: skip
    singles = [_nearest_pixel_accuracy(_with(b, query_x=b.query_x[:, i : i + 1], query_y=b.query_y[:, i : i + 1]))
               for i in range(b.query_x.shape[1])]  # fmt: skip
    torch.testing.assert_close(acc, torch.stack(singles, 1).mean(1))
    r = _regression_task(k=6)
    perm = torch.randperm(6)
    torch.testing.assert_close(_baseline_mse("least_squares", r), _baseline_mse("least_squares", _with(
        r, support_x=r.support_x[:, perm], support_y=r.support_y[:, perm])))  # fmt: skip


@pytest.mark.parametrize("classes", [0, 3])
def test_in_context_scores_refuse_query_targets_that_would_broadcast(classes):
    # 4 tasks of 4 queries: regression targets [N, Q] against predictions [N, Q, 1] broadcast to [N, Q, Q] (a wrong
    # loss, no error); class labels [N, Q, 1] against argmax [N, Q] the same for the accuracy
    torch.manual_seed(0)
    n = q = 4
    if classes:
        learner = InContextLearner(ICLModel("gru", 8, 1, 1, x_dim=1, y_dim=classes), classes=classes)
        sy, qy = torch.randint(0, classes, (n, 3)), torch.randint(0, classes, (n, q, 1))
    else:
        learner = build_learner("gru", hidden_size=8, num_layers=1, num_heads=1)
        sy, qy = torch.randn(n, 3, 1), torch.randn(n, q)
    batch = TaskBatch(torch.randn(n, 3, 1), sy, torch.randn(n, q, 1), qy)
    with pytest.raises(ValueError, match="query"):
        learner.task_scores(batch)
    with pytest.raises(ValueError, match="query"):
        learner.meta_backward(batch)
    fixed = TaskBatch(batch.support_x, sy, batch.query_x, qy[..., 0] if classes else qy[..., None])
    loss, _ = learner.task_scores(fixed)
    assert loss.shape == (n,)
