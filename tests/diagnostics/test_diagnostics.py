"""Diagnostics: gradient flow, memory retention probe, TTT inner-loop view (values and CSV/PNG outputs)."""

import csv

import pytest
import torch

from innerloop.cli.main import main
from innerloop.data.synthetic import make_task
from innerloop.diagnostics import (
    gradient_norms,
    inner_losses,
    probe_accuracy,
    retention,
    run_gradient_flow,
    run_retention,
    state_features,
)
from innerloop.layers import TTTLinear
from innerloop.ops.ttt.naive import linear_f_res
from innerloop.synth import SynthModel

MIXERS = ["rnn", "lstm", "gru", "mamba", "attention", "ttt_linear", "ttt_mlp"]


def _rows(path):
    return list(csv.DictReader(path.read_text().splitlines()))


def test_gradient_norms_memoryless_rnn_only_sees_the_last_step():
    torch.manual_seed(0)
    model = SynthModel("rnn", 8, 1, 1, in_features=2, out_features=1)
    b = make_task("adding").sample(4, 12, torch.Generator().manual_seed(0))
    norms = gradient_norms(model, b.inputs, b.targets, b.mask)
    assert norms.shape == (12,) and norms[-1] > 0 and norms[:-1].max() > 0
    with torch.no_grad():
        model.mixers[0].core.weight_hh_l0.zero_()  # no recurrence: only the last step reaches the loss
    norms = gradient_norms(model, b.inputs, b.targets, b.mask)
    assert norms[-1] > 0 and norms[:-1].abs().max() == 0


def test_gradient_norms_are_causal():
    torch.manual_seed(0)
    model = SynthModel("attention", 8, 1, 2, in_features=2, out_features=1)
    b = make_task("adding").sample(2, 10, torch.Generator().manual_seed(0))
    mask = torch.zeros_like(b.mask)
    mask[:, 4] = True  # score step 4 only: later steps cannot influence it
    norms = gradient_norms(model, b.inputs, b.targets, mask)
    assert norms[5:].abs().max() == 0 and norms[:5].min() > 0


def test_run_gradient_flow_writes_csv_and_png(tmp_path):
    rows = run_gradient_flow(["rnn", "gru"], tmp_path, length=6, hidden_size=8, train_steps=2, batch_size=4)
    assert {r["phase"] for r in rows} == {"init", "trained_no_clip", "trained_clip_1"}
    assert len(_rows(tmp_path / "gradient_flow.csv")) == 2 * 3 * 6
    assert (tmp_path / "gradient_flow.png").stat().st_size > 1000


@pytest.mark.parametrize("mixer", MIXERS)
def test_state_features_every_mixer(mixer):
    torch.manual_seed(0)
    model = SynthModel(mixer, 8, 2, 2, vocab_size=5, out_features=5)
    x = torch.randint(0, 5, (3, 6))
    _, state = model(x)
    f = state_features(state, 3)
    assert f.shape[0] == 3 and f.shape[1] > 0 and torch.isfinite(f).all()
    # per-sequence: features of sequence 0 do not depend on the other sequences
    _, s0 = model(x[:1])
    torch.testing.assert_close(state_features(s0, 1), f[:1], atol=1e-5, rtol=1e-5)


def test_probe_accuracy_separable_and_random():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=g)
    x = torch.nn.functional.one_hot(y, 4).float() + 0.05 * torch.randn(400, 4, generator=g)
    assert probe_accuracy(x[:300], y[:300], x[300:], y[300:], 4) == 1.0
    noise = torch.randn(400, 20, generator=g)
    assert probe_accuracy(noise[:300], y[:300], noise[300:], y[300:], 4) < 0.5


def test_retention_attention_keeps_the_first_token():
    assert retention("attention", 8, 5, vocab_size=4, n_train=128, n_test=64) == 1.0


def test_retention_needs_two_probe_training_sequences():
    """One training sequence gives NaN standardised features and a meaningless 'accuracy' (was silently returned)."""
    with pytest.raises(ValueError, match="n_train >= 2"):
        retention("gru", 8, 3, vocab_size=4, n_train=1, n_test=16)


def test_run_retention_and_cli(tmp_path, capsys):
    rows = run_retention(["gru"], [8], [1, 3], tmp_path, vocab_size=4, n_train=64, n_test=32)
    assert [r["steps"] for r in rows] == [1, 3] and all(0 <= r["probe_acc"] <= 1 for r in rows)
    assert (tmp_path / "retention.png").exists() and len(_rows(tmp_path / "retention.csv")) == 2
    assert main(["diagnose", "retention", "--mixers", "rnn", "--hidden-sizes", "4", "--steps", "2",
                 "--n-train", "32", "--n-test", "16", "--out", str(tmp_path / "r")]) == 0
    assert "probe accuracy" in capsys.readouterr().out
    assert main(["diagnose", "retention", "--mixers", "lstmm", "--out", str(tmp_path / "x")]) == 2
    assert "invalid choice: 'lstmm'" in capsys.readouterr().err


def test_inner_losses_match_the_layer_update():
    """With mini-batch 1 and one head, W_t = W_(t-1) - lr_t * grad l(W_(t-1); x_t): our loss is the layer's."""
    torch.manual_seed(0)
    layer = TTTLinear(8, 1, mini_batch_size=1, mode="naive").double()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    losses = inner_losses(layer, x)
    assert losses["W0"][0] == losses["W_prev"][0]
    assert (losses["W_t"] < losses["W_prev"]).all()
    # recompute one step by hand
    state = layer.init_state(1, dtype=torch.float64)
    _, state = layer(x[:, :2], state)  # after tokens 0, 1
    w_prev = state.ttt.materialize(layer.tau())
    _, state = layer(x[:, 2:3], state)
    w_t = state.ttt.materialize(layer.tau())
    XK = layer.k_proj(x).reshape(1, 5, 1, 8)
    from innerloop.layers.common import apply_rope, rope_angles

    cos, sin = rope_angles(torch.arange(5) % 1, 8, layer.rope_theta)
    XK = apply_rope(XK, cos, sin)
    XV = layer.v_proj(x).reshape(1, 5, 1, 8)
    W = tuple(p.detach().clone().requires_grad_(True) for p in w_prev)
    z = linear_f_res(W, XK[:, 2])
    z = torch.nn.functional.layer_norm(z, (8,), layer.ttt_norm_weight[0], layer.ttt_norm_bias[0], layer.eps)
    loss = 0.5 * (z - (XV[:, 2] - XK[:, 2])).pow(2).sum()
    assert loss.item() == pytest.approx(losses["W_prev"][2].item(), rel=1e-9)
    grads = torch.autograd.grad(loss, W)
    lr = layer.lr_gate(x)[0, 2, 0] * layer.tau()[0]
    for a, b, g in zip(w_t, w_prev, grads):
        torch.testing.assert_close(a, b - lr * g)


def test_ttt_inner_cli(tmp_path, capsys):
    assert main(["diagnose", "ttt-inner", "--mixers", "ttt_linear", "--hidden-size", "16", "--num-heads", "2",
                 "--num-layers", "1", "--mini-batch-size", "4", "--length", "12", "--train-steps", "1",
                 "--batch-size", "2", "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "ttt_inner.csv")
    assert len(rows) == 12 and set(rows[0]) == {"mixer", "t", "W0", "W_prev", "W_t"}
    assert (tmp_path / "ttt_inner.png").stat().st_size > 1000
    assert "W_(t-1)" in capsys.readouterr().out


def test_ttt_inner_plot_smooths_over_one_mini_batch(tmp_path, monkeypatch):
    """The plot's moving average spans one TTT mini-batch (--mini-batch-size), as its comment says, and the axis says
    so: it was 16 tokens whatever the mini-batch (4 mini-batches of 4 smeared into one point)."""
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    from innerloop.diagnostics.ttt_inner import _plot

    drawn, labels = [], []
    plot, set_ylabel = Axes.plot, Axes.set_ylabel

    def record_plot(self, xs, ys, **k):
        drawn.append((list(xs), list(ys)))
        return plot(self, xs, ys, **k)

    def record_ylabel(self, text, **k):
        labels.append(text)
        return set_ylabel(self, text, **k)

    monkeypatch.setattr(Axes, "plot", record_plot)
    monkeypatch.setattr(Axes, "set_ylabel", record_ylabel)
    rows = [{"mixer": "ttt_linear", "t": t, "W0": float(t), "W_prev": float(t), "W_t": float(t)} for t in range(32)]
    _plot(rows, tmp_path / "p.png", train_steps=1, mini_batch_size=4)
    xs, ys = drawn[0]
    assert xs == list(range(3, 32)) and ys[0] == pytest.approx(1.5)  # mean of tokens 0..3
    assert labels == ["inner self-supervised loss (mean of tokens t-3..t)"]


def test_inner_losses_ttt_mlp_and_bad_layer():
    torch.manual_seed(0)
    from innerloop.layers import TTTMLP

    layer = TTTMLP(8, 2, mini_batch_size=2, mode="naive")
    losses = inner_losses(layer, torch.randn(2, 5, 8))
    assert losses["W0"][0] == losses["W_prev"][0] and all(v.shape == (5,) for v in losses.values())
    assert losses["W_prev"][1] != losses["W0"][1]  # the state moved after the first token
    with pytest.raises(ValueError, match="TTTLinear/TTTMLP"):
        inner_losses(torch.nn.Linear(2, 2), torch.randn(1, 2, 2))


def test_inner_losses_use_the_layers_own_views_and_loss():
    """``inner_losses`` equals a hand computation from the layer's views; it works with share_qk (conv views) too."""
    from innerloop.diagnostics.ttt_inner import inner_losses
    from innerloop.layers import TTTLinear

    torch.manual_seed(0)
    for share_qk in (False, True):
        layer = TTTLinear(16, 2, mini_batch_size=4, share_qk=share_qk).double()
        x = torch.randn(2, 6, 16, dtype=torch.float64)
        got = inner_losses(layer, x)
        state = layer.init_state(2, dtype=torch.float64)
        _, XK, XV, _, _ = layer.views(x, state)  # the whole sequence at once: the same views as token by token
        for t in (0, 5):
            k, v = XK[:, t], XV[:, t]
            W, b = state.ttt.params
            z = torch.einsum("bhd,bhde->bhe", k, W) + b
            z = torch.nn.functional.layer_norm(z, (8,), eps=layer.eps) * layer.ttt_norm_weight + layer.ttt_norm_bias
            want = 0.5 * (z - (v - k)).pow(2).sum(-1).mean()
            torch.testing.assert_close(got["W0"][t], want.detach())


class _LinearRNN(torch.nn.Module):
    """``h_t = a h_{t-1} + e_t`` on the embedded inputs ``e``, read out at every step: ``∂L/∂e_t ∝ a^(T-1-t)``."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a, self.embed = a, torch.nn.Linear(2, 3)

    def embed_inputs(self, x):
        return self.embed(x)

    def forward_embedded(self, e, state=None):
        h, hs = torch.zeros_like(e[:, 0]), []
        for t in range(e.shape[1]):
            h = self.a * h + e[:, t]
            hs.append(h)
        return torch.stack(hs, 1).sum(-1, keepdim=True), None


@pytest.mark.parametrize("a", [0.7, -1.3])
def test_gradient_norms_linear_rnn_by_hand(a):
    """A linear recurrence scored at the last step only (the adding problem): ‖∂L/∂h_t‖ = |a|^(T-1-t) ‖∂L/∂h_(T-1)‖
    exactly, so index t of the result is distance T-1-t from the loss (vanishing for |a| < 1, exploding for > 1)."""
    torch.manual_seed(0)
    b = make_task("adding").sample(4, 12, torch.Generator().manual_seed(0))
    norms = gradient_norms(_LinearRNN(a), b.inputs, b.targets, b.mask).double()
    distance = torch.arange(11, -1, -1, dtype=torch.float64)
    torch.testing.assert_close(norms / norms[-1], abs(a) ** distance, rtol=1e-5, atol=0)  # float32 model


def test_inner_losses_mini_batch_weights_against_a_token_by_token_reference():
    """With mini-batch TTT (b = 4, heads 2) every token's W_(t-1) and W_t are the inner models a from-scratch reference
    builds: W_t = W_s - tau_i * sum_(j<=i) lr_j grad l(W_s; x_j) from the mini-batch start W_s, and W_(t-1) is the
    previous token's W_t (W_0 for the first token); no off-by-one at the mini-batch boundaries."""
    torch.manual_seed(0)
    layer = TTTLinear(16, 2, mini_batch_size=4, mode="naive").double()
    with torch.no_grad():
        layer.learnable_ttt_lr_bias.fill_(3.0)  # large inner steps, so neighbouring weights differ clearly
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    got = inner_losses(layer, x)
    state = layer.init_state(2, dtype=torch.float64)
    with torch.no_grad():
        _, XK, XV, _, _ = layer.views(x, state)
        lr, tau = layer.lr_gate(x), layer.tau()  # [B, T, H], [b]
    w0 = w_prev = tuple(p.detach() for p in state.ttt.params)
    want = {"W0": [], "W_prev": [], "W_t": []}
    for t in range(10):
        i = t % 4
        if i == 0:  # a new mini-batch starts from the last token's weights
            w_s, acc = w_prev, tuple(torch.zeros_like(p) for p in w_prev)
        k, v = XK[:, t], XV[:, t]
        g = torch.func.grad(lambda p, k=k, v=v: layer.inner_loss(p, k, v).sum())(w_s)
        gate = lr[:, t]  # [B, H]
        acc = tuple(a + gate.view(*gate.shape, *(1,) * (gi.dim() - 2)) * gi for a, gi in zip(acc, g))
        w_t = tuple(p - tau[i] * a for p, a in zip(w_s, acc))
        for key, w in (("W0", w0), ("W_prev", w_prev), ("W_t", w_t)):
            want[key].append(float(layer.inner_loss(w, k, v).mean().detach()))
        w_prev = w_t
    for key in want:
        torch.testing.assert_close(got[key], torch.tensor(want[key], dtype=torch.float64))
    assert (got["W_prev"][1:] != got["W0"][1:]).all() and (got["W_t"] != got["W_prev"]).all()
