"""PatchTST parity pieces: the post-norm encoder block (bidirectional attention, residual scores, BatchNorm or
LayerNorm), RevIN without affine, the PatchTST learning-rate schedule, and the reference code's drop-last test score."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _run import write_series  # noqa: E402

from innerloop.cli.main import main  # noqa: E402
from innerloop.data.timeseries import WindowDataset  # noqa: E402
from innerloop.forecast import ForecastConfig, PatchForecaster  # noqa: E402
from innerloop.forecast.adapt import check_stateful  # noqa: E402
from innerloop.forecast.patchtst import EncoderAttention, PostNormBlock, TokenNorm  # noqa: E402
from innerloop.forecast.trainer import evaluate_forecaster, lr_at  # noqa: E402

TINY = dict(patch_len=6, stride=4, d_model=16, num_layers=2, num_heads=2)


@pytest.mark.parametrize("mixer", ["attention", "gru", "ttt_linear"])
@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_patchtst_block_shapes_and_gradients(mixer, norm):
    torch.manual_seed(0)
    m = PatchForecaster(37, 5, 3, mixer=mixer, block="patchtst", norm=norm, mlp_hidden=24, **TINY)
    assert all(isinstance(b, PostNormBlock) for b in m.blocks)
    assert isinstance(m.blocks[0].mixer, EncoderAttention) == (mixer == "attention")
    y = m(torch.randn(4, 37, 3))
    assert y.shape == (4, 5, 3) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)


def _token_outputs(m: PatchForecaster, tokens: torch.Tensor) -> torch.Tensor:
    h = tokens
    scores = None
    for block in m.blocks:
        h, _, scores = block(h, None, scores)
    return h


def test_patchtst_attention_is_bidirectional_and_the_prenorm_one_causal():
    """Changing the last patch token changes the first token's output under PatchTST's encoder, not under ours."""
    torch.manual_seed(0)
    h = torch.randn(3, 9, 16)
    h2 = h.clone()
    h2[:, -1] += 1.0
    for block, first_changes in (("patchtst", True), ("prenorm", False)):
        m = PatchForecaster(37, 5, 3, mixer="attention", block=block, **TINY).eval()
        with torch.no_grad():
            d = (_token_outputs(m, h2) - _token_outputs(m, h)).abs()
        assert (d[:, 0].max() > 1e-4) == first_changes, block
        assert d[:, -1].max() > 1e-4


def test_residual_scores_reach_the_next_layer():
    torch.manual_seed(0)
    att = EncoderAttention(16, 2).eval()
    h = torch.randn(2, 7, 16)
    y, scores = att(h)
    assert scores.shape == (2, 2, 7, 7)
    prev = torch.randn_like(scores)
    y_prev, scores_prev = att(h, prev)
    torch.testing.assert_close(scores_prev, scores + prev)
    assert not torch.allclose(y_prev, y)
    att.residual_scores = False
    torch.testing.assert_close(att(h, prev)[0], y)


def test_batch_norm_mixes_the_batch_in_training_only_and_layer_norm_never():
    torch.manual_seed(0)
    h = torch.randn(4, 5, 8)
    other = h.clone()
    other[1:] = torch.randn(3, 5, 8) * 3
    bn, ln = TokenNorm(8, "batch"), TokenNorm(8, "layer")
    assert not torch.allclose(bn(h)[0], bn(other)[0])  # training: batch statistics
    bn.eval()
    torch.testing.assert_close(bn(h)[0], bn(other)[0])  # eval: running statistics
    torch.testing.assert_close(ln(h)[0], ln(other)[0])
    with pytest.raises(ValueError, match="norm must be one of batch, layer"):
        TokenNorm(8, "group")


def test_revin_without_affine_and_head_dropout():
    m = PatchForecaster(37, 5, 3, mixer="gru", revin_affine=False, dropout=0.3, head_dropout=0.0, **TINY)
    assert m.revin.weight is None and m.head_drop.p == 0.0 and m.drop.p == 0.3
    assert PatchForecaster(37, 5, 3, mixer="gru", dropout=0.3, **TINY).head_drop.p == 0.3  # unset: --dropout
    with pytest.raises(ValueError, match="block must be one of prenorm, patchtst"):
        PatchForecaster(37, 5, 3, block="postnorm", **TINY)


def test_state_protocol_refuses_the_patchtst_attention():
    m = PatchForecaster(37, 5, 3, mixer="attention", block="patchtst", **TINY)
    with pytest.raises(ValueError, match="no fixed-size recurrent state"):
        check_stateful(m)
    check_stateful(PatchForecaster(37, 5, 3, mixer="gru", block="patchtst", **TINY))  # a recurrent mixer: fine


def test_lr_schedules():
    patchtst = ForecastConfig(data="x.csv", lr=1e-4, lr_schedule="patchtst")
    want = [4e-6, 1e-4, 1e-4, 1e-4, 9e-5, 8.1e-5, 7.29e-5]
    assert [lr_at(patchtst, e) for e in range(7)] == pytest.approx(want)
    step = ForecastConfig(data="x.csv", lr=0.005, lr_decay=0.5)
    assert [lr_at(step, e) for e in range(4)] == pytest.approx([0.005, 0.005, 0.0025, 0.00125])
    with pytest.raises(ValueError, match="lr_schedule"):
        ForecastConfig(data="x.csv", lr_schedule="cosine")


def test_drop_last_score_is_the_first_full_batches():
    torch.manual_seed(0)
    windows = WindowDataset(torch.randn(60, 2), 8, 3)  # 50 windows; batches of 16 keep 48
    model = PatchForecaster(8, 3, 2, mixer="gru", patch_len=4, stride=4, d_model=8, num_heads=2)
    got = evaluate_forecaster(model, windows, batch_size=7, drop_last_of=16)
    with torch.no_grad():
        x, y = windows.batch(torch.arange(50))
        err = (model.eval()(x) - y).double()
    assert got["windows"] == 50 and got["windows_drop_last"] == 48
    assert got["mse"] == pytest.approx(float(err.pow(2).mean()))
    assert got["mse_drop_last"] == pytest.approx(float(err[:48].pow(2).mean()))
    assert got["mae_drop_last"] == pytest.approx(float(err[:48].abs().mean()))
    whole = evaluate_forecaster(model, windows, drop_last_of=50)
    assert whole["mse_drop_last"] == pytest.approx(whole["mse"])


def test_cli_trains_the_patchtst_recipe(tmp_path, capsys):
    csv = write_series(tmp_path / "s.csv")
    out = tmp_path / "run"
    args = ["forecast", "train", "--data", str(csv), "--model", "patch", "--mixer", "attention", "--block", "patchtst",
            "--norm", "batch", "--d-ff", "12", "--no-revin-affine", "--head-dropout", "0", "--lr-schedule", "patchtst",
            "--lookback", "21", "--horizon", "4", "--patch-len", "4", "--stride", "3", "--d-model", "8",
            "--num-layers", "2", "--num-heads", "2", "--dropout", "0.1", "--epochs", "2", "--batch-size", "50",
            "--lr", "0.001", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["block"] == "patchtst" and cfg["revin_affine"] is False and cfg["d_ff"] == 12
    assert m["test_windows_drop_last"] == m["windows"]["test"] // 50 * 50
    capsys.readouterr()
    assert main(["forecast", "eval", "--out", str(out)]) == 0  # rebuilt from config.json with the same options
    assert f"test MSE {m['test_mse']:.4f}" in capsys.readouterr().out


def test_drop_last_score_of_a_split_shorter_than_one_batch_is_none():
    """With fewer windows than one batch the reference loader scores nothing: that was reported as an MSE of 0."""
    windows = WindowDataset(torch.randn(20, 2), 8, 3)  # 10 windows, batches of 16 keep none
    model = PatchForecaster(8, 3, 2, mixer="gru", patch_len=4, stride=4, d_model=8, num_heads=2)
    got = evaluate_forecaster(model, windows, drop_last_of=16)
    assert got["windows_drop_last"] == 0 and got["mse"] > 0
    assert got["mse_drop_last"] is None and got["mae_drop_last"] is None
