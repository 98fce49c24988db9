"""Synthetic task generators: seeded, documented formats, correct baselines, clear errors."""

import math

import pytest
import torch

from innerloop.data.synthetic import IGNORE, TASKS, make_task


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_seeded_and_shapes(name):
    task = make_task(name)
    a, b = task.sample(4, 6, gen(1)), task.sample(4, 6, gen(1))
    c = task.sample(4, 6, gen(2))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)
    B, T = a.mask.shape
    assert B == 4 and a.inputs.shape[:2] == (B, T) and a.targets.shape[:2] == (B, T)
    if task.kind == "classification":
        assert a.inputs.dtype == torch.long and a.inputs.min() >= 0 and a.inputs.max() < task.vocab_size
        scored = a.targets[a.mask]
        assert scored.min() >= 0 and scored.max() < task.vocab_size
        assert torch.equal(a.mask, a.targets != IGNORE)
    else:
        assert a.inputs.shape[-1] == task.in_features and a.targets.shape[-1] == task.out_features


@pytest.mark.parametrize("name", ["copy", "reverse"])
def test_copy_reverse_format(name):
    L = 5
    b = make_task(name, vocab_size=7).sample(3, L, gen())
    x = b.inputs[:, :L]
    assert (x >= 2).all() and (b.inputs[:, L] == 1).all() and (b.inputs[:, L + 1 :] == 0).all()
    want = x if name == "copy" else x.flip(1)
    assert torch.equal(b.targets[:, L:], want) and (b.targets[:, :L] == IGNORE).all()


def test_copying_memory_format_and_baseline():
    task = make_task("copying_memory")
    T, K = 30, 10
    b = task.sample(256, T, gen())
    assert b.inputs.shape == (256, T + 2 * K) and b.mask.all()
    assert (b.inputs[:, T + K - 1] == 9).all() and torch.equal(b.targets[:, T + K :], b.inputs[:, :K])
    assert (b.targets[:, : T + K] == 8).all()
    # the memoryless predictor: blank with certainty, then uniform over the 8 symbols
    logp = torch.full((256, T + 2 * K, 10), -1e9)
    logp[:, : T + K, 8] = 0.0
    logp[:, T + K :, :8] = -math.log(8)
    ce = torch.nn.functional.cross_entropy(logp.reshape(-1, 10), b.targets.reshape(-1))
    assert ce.item() == pytest.approx(task.baseline(T)["loss"], rel=1e-6)
    assert task.baseline(T)["loss"] == pytest.approx(10 * math.log(8) / (T + 20))


def test_selective_copy_format():
    b = make_task("selective_copy", vocab_size=9, num_tokens=3).sample(5, 12, gen())
    for row_in, row_t in zip(b.inputs, b.targets):
        data = row_in[:12][row_in[:12] >= 2]
        assert len(data) == 3 and torch.equal(row_t[12:], data) and row_in[12] == 1


def test_adding_format_and_baseline():
    T = 20
    b = make_task("adding").sample(20000, T, gen())
    marks = b.inputs[..., 1]
    assert (marks.sum(1) == 2).all() and (marks[:, : T // 2].sum(1) == 1).all()
    want = (b.inputs[..., 0] * marks).sum(1)
    assert torch.allclose(b.targets[:, -1, 0], want) and b.mask[:, -1].all() and b.mask.sum() == 20000
    mse = ((b.targets[:, -1, 0] - 1.0) ** 2).mean().item()
    assert mse == pytest.approx(make_task("adding").baseline(T)["mse"], abs=0.01)
    assert make_task("adding").baseline(T)["mse"] == pytest.approx(0.167, abs=1e-3)


def test_addition_is_correct():
    n = 4
    b = make_task("addition").sample(50, n, gen())
    powers = 10 ** torch.arange(n + 1)
    a = (b.inputs[:, :n] * powers[:n]).sum(1)
    c = (b.inputs[:, n + 1 : 2 * n + 1] * powers[:n]).sum(1)
    s = (b.targets[:, 2 * n + 1 :] * powers).sum(1)
    assert torch.equal(a + c, s) and (b.inputs[:, n] == 10).all() and (b.inputs[:, 2 * n + 1] == 11).all()


def test_mqar_format():
    V, N = 32, 6
    b = make_task("mqar", vocab_size=V).sample(8, N, gen())
    for row_in, row_t in zip(b.inputs, b.targets):
        keys, vals = row_in[0 : 2 * N : 2], row_in[1 : 2 * N : 2]
        assert len(set(keys.tolist())) == N and (keys < V // 2).all() and (vals >= V // 2).all()
        assert len(set(vals.tolist())) == N  # values distinct too (Zoology)
        table = dict(zip(keys.tolist(), vals.tolist()))
        for q, t in zip(row_in[2 * N :].tolist(), row_t[2 * N :].tolist()):
            assert table[q] == t
    base = make_task("mqar", vocab_size=V).baseline(N)
    assert base == {"token_acc": 1 / 16, "context_guess_acc": pytest.approx(1 / 6)}


def test_mqar_context_guess_baseline_is_what_guessing_a_context_value_scores():
    """Values are distinct (as Zoology draws them), so guessing one of the N context values scores 1/N (with the
    values drawn with replacement, as before 2026-12-01, it scored 0.152 at 8 pairs of 32 values)."""
    task, N = make_task("mqar", vocab_size=64), 8
    b = task.sample(4000, N, gen())
    g = torch.Generator().manual_seed(1)
    pick = torch.randint(0, N, (4000, N), generator=g)  # for each query, one of the N context values
    guess = b.inputs[:, 1 : 2 * N : 2].gather(1, pick)
    acc = (guess == b.targets[:, 2 * N :]).float().mean().item()
    assert abs(acc - task.baseline(N)["context_guess_acc"]) < 0.006 and abs(acc - 1 / N) < 0.006


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: make_task("nope"), "unknown task 'nope'"),
        (lambda: make_task("copy", vocab_size=2), "vocab_size 2 too small"),
        (lambda: make_task("mqar", vocab_size=8).sample(2, 5), "vocab_size 8 too small"),
        (lambda: make_task("copy").sample(2, 0), "length must be >= 1"),
        (lambda: make_task("adding").sample(2, 1), "length must be >= 2"),
        (lambda: make_task("selective_copy", num_tokens=4).sample(2, 3), "length must be >= 4"),
        (lambda: make_task("copy", colour=3), "unknown"),
        (lambda: make_task("copy").sample(0, 3), "batch_size"),
        (lambda: make_task("addition", base=1), "base must be >= 2"),
        # option values of the wrong type (e.g. --task-option vocab_size=abc): a clear error, not a TypeError deep down
        (lambda: make_task("copy", vocab_size="abc"), "option vocab_size must be an integer, got 'abc'"),
        (lambda: make_task("copy", vocab_size=10.5), "option vocab_size must be an integer, got 10.5"),
        (lambda: make_task("mqar", num_queries=True), "option num_queries must be an integer"),
        (lambda: make_task("arm", max_step="fast"), "option max_step must be a number"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("length", [2.7, True, "3"])
def test_a_length_that_is_not_a_whole_number_is_refused(length):
    """``length=2.7`` was truncated to 2 and ``True`` read as 1, silently."""
    with pytest.raises(TypeError, match="length must be a whole number"):
        make_task("copy").sample(2, length, gen())
    assert make_task("copy").sample(2, torch.tensor(3), gen()).inputs.shape == (2, 6)
