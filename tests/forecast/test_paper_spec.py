"""The forecasting experiments pinned to the spec (shared/docs/timeseries.md, and the DLinear / PatchTST scripts it
names), so that a change of a default, a README recipe or a quoted number that RESULTS.md rests on fails here first."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from innerloop.cli._flags import run_config_values
from innerloop.cli.main import build_parser
from innerloop.data.timeseries import make_forecast_data
from innerloop.data.timeseries.windows import ETT_HOURLY_BORDERS
from innerloop.forecast import ForecastConfig, RepeatLast, evaluate_forecaster

ROOT = Path(__file__).resolve().parents[2]

# timeseries.md, "Numbers to match (ETTh1, multivariate, MSE / MAE)", look-back 336 (PatchTST/64: look-back 512)
PUBLISHED = {
    ("DLinear", 96): "0.375 / 0.399", ("DLinear", 192): "0.405 / 0.416", ("DLinear", 336): "0.439 / 0.443",
    ("NLinear", 96): "0.374 / 0.394", ("NLinear", 192): "0.408 / 0.415", ("NLinear", 336): "0.429 / 0.427",
    ("PatchTST/64", 96): "0.370 / 0.400", ("PatchTST/42", 96): "0.375 / 0.399", ("repeat", 96): "1.295 / 0.713",
}  # fmt: skip


def _forecasting_section() -> str:
    text = (ROOT / "RESULTS.md").read_text()
    start = text.index("\n## Forecasting (ETT)")
    return text[start : text.index("\n## ", start + 1)]


def test_dlinear_recipe_defaults_are_the_reference_script():
    # timeseries.md: look-back 336 (DLinear / PatchTST protocol), "M"; the authors' ETTh1 script: batch 32, lr 0.005
    # at every horizon; run_longExp.py: 10 epochs, patience 3, lradj type1 (halved after each epoch from the second)
    cfg = ForecastConfig()
    got = (cfg.lookback, cfg.horizon, cfg.features, cfg.target, cfg.batch_size, cfg.lr, cfg.epochs, cfg.patience,
           cfg.lr_decay, cfg.lr_schedule, cfg.kernel_size, cfg.individual, cfg.seed)  # fmt: skip
    assert got == (336, 96, "M", "OT", 32, 0.005, 10, 3, 0.5, "step", 25, False, 2021)


def test_readme_patchtst_recipe_is_the_reference_script():
    """README's "PatchTST's ETTh1 recipe" is their etth1.sh: in particular it never stops early (their patience of
    100 over 100 epochs never triggers; ours is 0 = never)."""
    readme = (ROOT / "README.md").read_text()
    lines = [ln for ln in readme.splitlines() if "forecast train" in ln and "--block patchtst" in ln]
    assert len(lines) == 1, lines
    args = build_parser().parse_args(shlex.split(lines[0])[1:])
    cfg = ForecastConfig(**run_config_values(args, ForecastConfig, "innerloop forecast train", saved={}))
    got = (cfg.lookback, cfg.horizon, cfg.features, cfg.mixer, cfg.block, cfg.norm, cfg.d_model, cfg.num_layers,
           cfg.num_heads, cfg.d_ff, cfg.dropout, cfg.head_dropout, cfg.revin_affine, cfg.patch_len, cfg.stride,
           cfg.lr, cfg.lr_schedule, cfg.batch_size, cfg.epochs)  # fmt: skip
    assert got == (336, 96, "M", "attention", "patchtst", "batch", 16, 3, 4, 128, 0.3, 0.0, False, 16, 8, 1e-4,
                   "patchtst", 128, 100)  # fmt: skip
    assert cfg.patience == 0 or cfg.patience >= cfg.epochs, f"--patience {cfg.patience} stops early; theirs never does"


def test_results_published_forecasting_numbers_are_the_docs():
    section = _forecasting_section()
    dl = re.search(r"^\| DLinear \| 0\.37.*\| (\S+ / \S+) \|[^|]*\|$", section, re.M)
    nl = re.search(r"^\| NLinear \| 0\.37.*\| (\S+ / \S+) \|[^|]*\|$", section, re.M)
    rp = re.search(r"^\| repeat last value \|.*\| (\S+ / \S+) \| — \|$", section, re.M)
    assert (dl[1], nl[1], rp[1]) == (PUBLISHED["DLinear", 96], PUBLISHED["NLinear", 96], PUBLISHED["repeat", 96])
    for model in ("DLinear", "NLinear"):
        row = re.search(rf"^\| {model} \| .* vs (\S+ / \S+) \| .* vs (\S+ / \S+) \|$", section, re.M)
        assert (row[1], row[2]) == (PUBLISHED[model, 192], PUBLISHED[model, 336])
    assert "| PatchTST/64, published (look-back 512) | | 0.370 | 0.400 |" in section
    assert f"| {PUBLISHED['PatchTST/42', 96]} | {PUBLISHED['PatchTST/64', 96]} |" in section
    # the docs set "adapting beats frozen" as the claim to test; no paper publishes it for these models
    assert "published claim" not in section.lower()


@pytest.mark.parametrize(("horizon", "kept"), [(96, 2784), (192, 2688), (336, 2528)])
def test_reference_drop_last_keeps_these_test_windows(horizon, kept):
    """RESULTS.md: the reference's test loader (batch 32) drops 1, 1 and 17 of the 2,785 / 2,689 / 2,545 windows."""
    values = np.random.default_rng(0).normal(size=(ETT_HOURLY_BORDERS[-1], 2))
    data = make_forecast_data(values, 336, horizon, ETT_HOURLY_BORDERS)
    assert len(data.test) == 2880 - horizon + 1
    got = evaluate_forecaster(RepeatLast(336, horizon), data.test, batch_size=1024, drop_last_of=32)
    assert got["windows_drop_last"] == kept
    x, y = data.test.batch(torch.arange(kept))
    assert got["mse_drop_last"] == pytest.approx(float((x[:, -1:] - y).double().pow(2).mean()))
