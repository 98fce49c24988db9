"""PatchForecaster: shapes over every mixer, the patches by hand, RevIN's invariance, channel independence, the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _run import write_series  # noqa: E402

from innerloop.cli.main import main  # noqa: E402
from innerloop.forecast import PatchForecaster, build_forecaster  # noqa: E402
from innerloop.forecast.patch import num_patches  # noqa: E402
from innerloop.layers import MIXERS  # noqa: E402

# L = 37 is not a multiple of the stride: 37 + 4 padded steps hold (41 - 6) // 4 + 1 = 9 patches, the last 3 unread
TINY = dict(patch_len=6, stride=4, d_model=16, num_layers=2, num_heads=2)


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_output_shape_and_gradients_for_every_mixer(mixer):
    torch.manual_seed(0)
    m = PatchForecaster(37, 5, 3, mixer=mixer, **TINY)
    assert m.num_patches == 9 and isinstance(m.blocks[0].mixer, MIXERS[mixer])
    y = m(torch.randn(2, 37, 3))
    assert y.shape == (2, 5, 3) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize("mixer", ["attention", "gru", "ttt_linear"])
def test_forward_stateful_from_none_is_forward_and_returns_one_state_per_block(mixer):
    torch.manual_seed(0)
    m = PatchForecaster(37, 5, 3, mixer=mixer, **TINY).eval()
    x = torch.randn(2, 37, 3)
    y, states = m.forward_stateful(x)
    torch.testing.assert_close(y, m(x))
    assert len(states) == 2
    y2, _ = m.forward_stateful(x, states)  # continuing from the first pass's states changes the forecast
    assert y2.shape == y.shape and not torch.allclose(y2, y)


def test_patches_by_hand():
    m = PatchForecaster(11, 2, 1, mixer="gru", patch_len=4, stride=3, d_model=8)
    series = torch.arange(11.0)[None]  # [1, 11]: 0 .. 10, padded with three 10s
    want = [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9], [9, 10, 10, 10]]  # (11 + 3 - 4) // 3 + 1 = 4 patches
    assert num_patches(11, 4, 3) == m.num_patches == 4
    assert torch.equal(m.patchify(series), torch.tensor([want], dtype=torch.float32))
    for L in range(4, 30):  # whatever L mod stride, the last patch holds the last observed step
        for patch_len, stride in ((4, 3), (16, 8), (5, 5), (6, 1)):
            if L + stride >= patch_len:
                last = PatchForecaster(L, 2, 1, mixer="gru", patch_len=patch_len, stride=stride, d_model=4)
                assert (last.patchify(torch.arange(float(L))[None])[0, -1] == L - 1).any()


@pytest.mark.parametrize(("eps", "tol"), [(0.0, 1e-10), (1e-5, 1e-4)])
def test_revin_makes_the_forecast_equivariant_to_a_per_channel_shift_and_scale(eps, tol):
    """forecast(a x + b) = a forecast(x) + b per channel (a > 0): exact up to rounding with eps 0, and up to
    ~eps / var with the default eps inside the standard deviation; the learnable affine does not break it."""
    torch.manual_seed(0)
    m = PatchForecaster(37, 5, 3, mixer="attention", **TINY).double().eval()
    m.revin.eps = eps
    x = torch.randn(4, 37, 3, dtype=torch.float64)
    a = torch.tensor([0.5, 3.0, 20.0], dtype=torch.float64)
    b = torch.tensor([-7.0, 0.0, 100.0], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(a * x + b), a * m(x) + b, rtol=tol, atol=tol * 100)
        m.revin.weight.uniform_(0.5, 2.0)  # a trained-looking affine
        m.revin.bias.normal_()
        torch.testing.assert_close(m(a * x + b), a * m(x) + b, rtol=tol, atol=tol * 100)
        raw = PatchForecaster(37, 5, 3, mixer="attention", revin=False, **TINY).double().eval()
        assert not torch.allclose(raw(a * x + b), a * raw(x) + b, rtol=1e-2, atol=1e-2)  # the test can fail


@pytest.mark.parametrize("mixer", ["attention", "ttt_linear", "mamba", "lstm"])
def test_channels_are_independent(mixer):
    torch.manual_seed(0)
    m = PatchForecaster(37, 5, 4, mixer=mixer, **TINY).double().eval()
    x = torch.randn(3, 37, 4, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        for c in range(4):
            x2 = x.clone()
            x2[:, :, c] = torch.randn(3, 37, dtype=torch.float64) * 5 + 2
            y2 = m(x2)
            others = [k for k in range(4) if k != c]
            torch.testing.assert_close(y2[..., others], y[..., others], rtol=1e-12, atol=1e-12)
            assert (y2[..., c] - y[..., c]).abs().min() > 0


def test_clear_errors():
    with pytest.raises(ValueError, match="no patch fits"):
        PatchForecaster(5, 2, 1, patch_len=16, stride=8)
    with pytest.raises(ValueError, match=r"expected x of shape \[B, L=37, C=3\]"):
        PatchForecaster(37, 5, 3, mixer="gru", **TINY)(torch.randn(2, 37, 4))
    with pytest.raises(ValueError, match="unknown mixer 'transformer'"):
        PatchForecaster(37, 5, 3, mixer="transformer")
    with pytest.raises(ValueError, match="unknown forecaster options \\['patch_size'\\]"):
        build_forecaster("patch", 37, 5, 3, patch_size=4)


def test_mixer_options_reach_the_mixer():
    m = PatchForecaster(37, 5, 3, mixer="ttt_linear", mixer_options={"mini_batch_size": 4}, **TINY)
    assert all(b.mixer.mini_batch_size == 4 for b in m.blocks)


@pytest.mark.parametrize("mixer", ["ttt_linear", "attention"])
def test_cli_train_then_eval(tmp_path, capsys, mixer):
    csv = write_series(tmp_path / "s.csv")
    out = tmp_path / "run"
    args = ["forecast", "train", "--data", str(csv), "--model", "patch", "--mixer", mixer, "--lookback", "21",
            "--horizon", "4", "--patch-len", "4", "--stride", "3", "--d-model", "8", "--num-layers", "1",
            "--num-heads", "2", "--dropout", "0.1", "--epochs", "2", "--batch-size", "60", "--lr", "0.001",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    assert m["model"] == "patch" and cfg["mixer"] == mixer and cfg["patch_len"] == 4 and m["num_params"] > 0
    assert f"test MSE {m['test_mse']:.4f}  MAE {m['test_mae']:.4f}" in capsys.readouterr().out
    assert main(["forecast", "eval", "--out", str(out)]) == 0  # rebuilt from config.json with the same options
    assert f"test MSE {m['test_mse']:.4f}" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    csv = write_series(tmp_path / "s.csv")
    assert main(["forecast", "train", "--model", "patch", "--mixer", "transformer"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["forecast", "train", "--data", str(csv), "--model", "patch", "--lookback", "6", "--horizon", "4",
                 "--patch-len", "16", "--out", str(tmp_path / "r"), "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "no patch fits" in err and len(err.splitlines()) == 1


def test_a_run_saved_before_the_patch_fields_still_resumes(tmp_path):
    """A config saved without the patch fields reads as their defaults (the checkpoint check passes)."""
    import dataclasses

    from innerloop.forecast import ForecastConfig
    from innerloop.forecast.trainer import ADDED_FIELDS, RESUME_FREE_KEYS, upgrade_config
    from innerloop.runs import Run
    from innerloop.runs.run import ConfigMismatchError

    now = dataclasses.asdict(ForecastConfig(data="x.csv", out=str(tmp_path)))
    old = {k: v for k, v in now.items() if k not in ADDED_FIELDS}
    kw = dict(steps_key="epochs", resume_free=RESUME_FREE_KEYS)
    Run(tmp_path, now, upgrade=upgrade_config, **kw).check_config(old, tmp_path)
    with pytest.raises(ConfigMismatchError, match="mixer"):
        Run(tmp_path, now, **kw).check_config(old, tmp_path)
    assert upgrade_config({**old, "d_model": 16})["d_model"] == 16  # saved values win
