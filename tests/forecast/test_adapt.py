"""Test-time adaptation walked in time order: the state protocol, the online protocol, and that neither peeks."""

from __future__ import annotations

import copy
from time import sleep

import pytest
import torch

from innerloop.data.timeseries import WindowDataset
from innerloop.forecast import DLinear, NLinear, PatchForecaster, RepeatLast, evaluate_forecaster
from innerloop.forecast.adapt import AdaptConfig, ForecastAdapter, adapt_model, check_stateful

L, H, C = 24, 6, 2


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these walks are many tiny calls, which a second (busy) thread only slows down."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def series(rows: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(rows, dtype=torch.float32)[:, None]
    return torch.sin(t / 4 + torch.arange(C)) + 0.1 * torch.randn(rows, C, generator=g)  # [rows, C]


def patch(mixer: str = "gru", seed: int = 0) -> PatchForecaster:
    torch.manual_seed(seed)
    return PatchForecaster(L, H, C, mixer=mixer, patch_len=8, stride=4, d_model=8, num_layers=2, num_heads=2)


@pytest.mark.parametrize("mixer", ["ttt_linear", "ttt_mlp", "mamba", "lstm", "gru"])
def test_state_carries_the_previous_windows_state(mixer):
    model, w = patch(mixer), WindowDataset(series(), L, H)
    r = adapt_model(model, w, AdaptConfig(adapt="state", limit=4), return_predictions=True)
    states, want = None, []
    with torch.no_grad():
        for i in range(4):  # by hand: window i starts from the state after windows 0..i-1
            y, states = model.forward_stateful(w.batch(torch.tensor([i]))[0], states)
            want.append(y[0])
    torch.testing.assert_close(r["predictions"], torch.stack(want))
    torch.testing.assert_close(r["frozen_predictions"][0], r["predictions"][0])  # window 0 starts fresh
    assert not torch.allclose(r["frozen_predictions"][1:], r["predictions"][1:])  # the carried state is used
    assert r["extra_floats"] > 0 and r["updates"] == 0


def test_state_streams_interleave():
    model, w = patch("gru"), WindowDataset(series(), L, H)
    r = adapt_model(model, w, AdaptConfig(adapt="state", streams=3, limit=8), return_predictions=True)
    with torch.no_grad():  # window 7 continues window 4, which continues window 1, which starts fresh
        states = None
        for i in (1, 4, 7):
            y, states = model.forward_stateful(w.batch(torch.tensor([i]))[0], states)
    torch.testing.assert_close(r["predictions"][7], y[0], atol=1e-5, rtol=1e-5)


def test_frozen_metrics_equal_the_plain_evaluation():
    model, w = patch("gru"), WindowDataset(series(), L, H)
    plain = evaluate_forecaster(model, w)
    for cfg in (AdaptConfig(), AdaptConfig(adapt="state", streams=5), AdaptConfig(adapt="online", update_every=4)):
        r = adapt_model(model, w, cfg)
        assert r["frozen_mse"] == pytest.approx(plain["mse"], rel=1e-5) and r["windows"] == plain["windows"]
        assert r["frozen_mae"] == pytest.approx(plain["mae"], rel=1e-5)


def test_state_is_refused_without_a_recurrent_state():
    w = WindowDataset(series(), L, H)
    with pytest.raises(ValueError, match="no fixed-size recurrent state.*--adapt online"):
        adapt_model(patch("attention"), w, AdaptConfig(adapt="state"))
    with pytest.raises(ValueError, match="DLinear has no state to carry: use --adapt online"):
        check_stateful(DLinear(L, H, C))
    with pytest.raises(ValueError, match="one state per block"):
        patch("gru").forward_stateful(torch.randn(1, L, C), [None])


@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("every", [1, 3])
def test_online_updates_read_only_revealed_targets(partial, every):
    trace: list[tuple[int, int]] = []
    cfg = AdaptConfig(adapt="online", adapt_partial=partial, update_every=every, adapt_windows=2, adapt_lr=1e-3)
    r = adapt_model(patch("gru"), WindowDataset(series(), L, H), cfg, trace=trace)
    assert trace and r["updates"] == len(trace)
    for time, last in trace:
        assert last < time  # every target row an update read was observed before the prediction time
        assert last == time - 1  # and the newest observed row is used
    if not partial:  # the first update waits until a whole horizon is revealed
        assert trace[0][0] >= L + H


def poisoned(s: torch.Tensor, row: int) -> torch.Tensor:
    s = s.clone()
    s[row:] = float("nan")
    return s


@pytest.mark.parametrize("cfg", [
    AdaptConfig(adapt="state"),
    AdaptConfig(adapt="state", streams=4),
    AdaptConfig(adapt="online", adapt_params="all", adapt_lr=1e-2, adapt_optimizer="sgd"),
    AdaptConfig(adapt="online", adapt_params="adapter", adapt_partial=True, update_every=2, adapt_lr=1e-2),
    AdaptConfig(adapt="online", adapt_params="norm_head", adapt_partial=True, adapt_steps=2, adapt_lr=1e-2),
], ids=["state", "state-streams", "online-all", "online-adapter-partial", "online-norm-head-partial"])  # fmt: skip
def test_nan_in_the_future_leaves_the_predictions_unchanged(cfg):
    model, s = patch("ttt_linear" if cfg.adapt == "state" else "gru"), series()
    full = adapt_model(model, WindowDataset(s, L, H), cfg, return_predictions=True)["predictions"]
    for i in (H - 1, 12):
        p = i + L  # window i's prediction time: rows >= p are the future
        r = adapt_model(model, WindowDataset(poisoned(s, p), L, H), AdaptConfig(**{**vars(cfg), "limit": i + 1}),
                        return_predictions=True)  # fmt: skip
        assert torch.isfinite(r["predictions"]).all()
        torch.testing.assert_close(r["predictions"], full[: i + 1], atol=1e-5, rtol=1e-5)
    # the check can fail: poisoning the last row already seen at window i's prediction time reaches its forecast
    r = adapt_model(model, WindowDataset(poisoned(s, 12 + L - 1), L, H), AdaptConfig(**{**vars(cfg), "limit": 13}),
                    return_predictions=True)  # fmt: skip
    assert torch.isnan(r["predictions"][12]).all()


# The full-walk poisoning check: short windows (L=8, H=3) over 26 rows, so one walk is 16 windows. Row PL+1 is
# poisoned with NaN (windows 0, 1 must not move, window 2 reads it) and row PL+10 with 1e6 (windows 0..10 must not
# move): both cut through a batch of update_every = 3 and of streams = 3 or 4, where a later window shares the batch.
PL, PH = 8, 3
POISON = ((PL + 1, float("nan")), (PL + 10, 1e6))


def small_patch(mixer: str, block: str = "prenorm") -> PatchForecaster:
    torch.manual_seed(0)
    return PatchForecaster(PL, PH, C, mixer=mixer, patch_len=4, stride=2, d_model=8, num_layers=2, num_heads=2,
                           block=block, norm="batch")  # fmt: skip


def assert_future_never_reaches_the_past(model: torch.nn.Module, cfg: AdaptConfig) -> None:
    """Walk the whole split (no ``limit``: later windows share batches and updates with earlier ones), then again
    with every row ``>= r`` poisoned: the predictions of windows ``0 .. r - L`` (prediction time ``<= r``) must be
    bit-identical, and those of window ``r - L + 1``, the first to read row ``r``, must change (the check can fail)."""
    s = series(26)
    clean = adapt_model(model, WindowDataset(s, PL, PH), cfg, return_predictions=True)
    for r, value in POISON:
        bad = s.clone()
        bad[r:] = value
        got = adapt_model(model, WindowDataset(bad, PL, PH), cfg, return_predictions=True)
        k = r - PL + 1
        for key in ("predictions", "frozen_predictions"):
            assert torch.equal(got[key][:k], clean[key][:k]), f"{key}: row {r} = {value} reached windows < {k}"
        assert not torch.equal(got["predictions"][k], clean["predictions"][k])


STATEFUL = {"gru": lambda: small_patch("gru"), "ttt_linear": lambda: small_patch("ttt_linear"),
            "mamba": lambda: small_patch("mamba"),
            "patchtst-lstm": lambda: small_patch("lstm", "patchtst")}  # fmt: skip


@pytest.mark.parametrize("streams", [1, 3, 4])  # 4 divides the 16 windows, 3 does not (the last batch is padded)
@pytest.mark.parametrize("name", list(STATEFUL))
def test_state_full_walk_never_reads_the_future(name, streams):
    assert_future_never_reaches_the_past(STATEFUL[name](), AdaptConfig(adapt="state", streams=streams))


ONLINE = {"dlinear": lambda: (torch.manual_seed(0), DLinear(PL, PH, C, kernel_size=3))[1],
          "nlinear": lambda: (torch.manual_seed(0), NLinear(PL, PH, C))[1], "repeat_last": lambda: RepeatLast(PL, PH),
          "gru": lambda: small_patch("gru"), "attention": lambda: small_patch("attention"),
          "patchtst-attention": lambda: small_patch("attention", "patchtst")}  # fmt: skip
# (adapt_params, adapt_partial, update_every, adapt_windows, adapt_optimizer): every pair of values at least once
PAIRWISE = [("all", False, 1, 0, "sgd"), ("all", True, 3, 5, "adam"), ("norm_head", False, 3, 5, "sgd"),
            ("norm_head", True, 1, 0, "adam"), ("adapter", False, 1, 5, "adam"),
            ("adapter", True, 3, 0, "sgd")]  # fmt: skip


@pytest.mark.parametrize("setting", PAIRWISE, ids=["-".join(map(str, p)) for p in PAIRWISE])
@pytest.mark.parametrize("name", list(ONLINE))
def test_online_full_walk_never_reads_the_future(name, setting):
    params, partial, every, windows, optimizer = setting
    if name in ("dlinear", "nlinear") and params == "norm_head":
        params = "all"  # a linear model has no norms: its pairs with the other settings go to all
    if name == "repeat_last":
        params = "adapter"  # no parameters of its own
    cfg = AdaptConfig(adapt="online", adapt_params=params, adapt_partial=partial, update_every=every,
                      adapt_windows=windows, adapt_optimizer=optimizer, adapt_steps=2, adapt_lr=1e-2)  # fmt: skip
    assert_future_never_reaches_the_past(ONLINE[name](), cfg)


def test_online_adapts_a_copy_and_only_the_chosen_parameters():
    model, w = patch("gru"), WindowDataset(series(), L, H)
    before = copy.deepcopy(model.state_dict())
    for params in ("all", "norm_head", "adapter"):
        r = adapt_model(model, w, AdaptConfig(adapt="online", adapt_params=params, adapt_lr=1e-2))
        assert r["updates"] == len(w) - H and r["mse"] != r["frozen_mse"]
        assert r["params_updated"] > 0 and r["extra_floats"] >= r["params_updated"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)  # the caller's model is never changed
    n_all = sum(p.numel() for p in model.parameters())
    sizes = {p: adapt_model(model, w, AdaptConfig(adapt="online", adapt_params=p, limit=H + 1))["params_updated"]
             for p in ("all", "norm_head", "adapter")}  # fmt: skip
    assert sizes["all"] == n_all and sizes["adapter"] < sizes["norm_head"] < n_all


class SlowWindows(WindowDataset):
    """Windows whose gather takes 20 ms: time that is not adaptation and must not be reported as its cost."""

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sleep(0.02)
        return super().batch(indices)


def test_online_costs_count_what_they_say():
    model, w = DLinear(L, H, C, kernel_size=5), SlowWindows(series(), L, H)
    # no update before window H: the adapted path does the frozen path's work, so it costs nothing extra, changes
    # no parameter and keeps no gradient or optimizer state (the gather of the windows' inputs serves both paths)
    r = adapt_model(model, w, AdaptConfig(adapt="online", adapt_params="all", limit=H))
    assert r["updates"] == 0 and r["params_updated"] == 0 and r["extra_floats"] == 0
    assert r["extra_ms_per_window"] < 10  # 20 ms of gathering per window went into it
    n_params, n_tensors = sum(p.numel() for p in model.parameters()), len(list(model.parameters()))
    r = adapt_model(model, w, AdaptConfig(adapt="online", adapt_params="all", limit=H + 2))
    assert r["updates"] == 2 and r["params_updated"] == n_params
    assert r["extra_floats"] == 3 * n_params + n_tensors  # Adam's two moments and step, the gradients
    r = adapt_model(model, w, AdaptConfig(adapt="online", adapt_params="adapter", limit=H))
    assert r["updates"] == 0 and r["params_updated"] == 0 and r["extra_floats"] == H * 4 + 4 * H + C  # its weights
    r = adapt_model(model, w, AdaptConfig(adapt="online", adapt_params="adapter", adapt_optimizer="sgd", limit=H + 1))
    assert r["params_updated"] == H * 4 + 4 * H + C and r["extra_floats"] == 2 * r["params_updated"]  # + gradients


def test_adapter_starts_as_the_identity():
    y = torch.randn(3, H, C)
    torch.testing.assert_close(ForecastAdapter(H, C, rank=2)(y), y)


def test_online_works_for_linear_models_and_refuses_missing_parameters():
    w = WindowDataset(series(), L, H)
    r = adapt_model(DLinear(L, H, C, kernel_size=5), w, AdaptConfig(adapt="online", adapt_params="all"))
    assert r["updates"] == len(w) - H
    with pytest.raises(ValueError, match="DLinear has no such parameters.*--adapt-params all or adapter"):
        adapt_model(DLinear(L, H, C), w, AdaptConfig(adapt="online", adapt_params="norm_head"))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"adapt": "sometimes"}, "unknown adapt 'sometimes'; choose from none, online, state"),
    ({"adapt_params": "bias"}, "unknown adapt_params 'bias'"),
    ({"streams": 0}, "streams must be >= 1"),
    ({"adapt_steps": 0}, "adapt_steps must be >= 1"),
    ({"update_every": 0}, "update_every must be >= 1"),
    ({"adapt_windows": -1}, "adapt_windows must be >= 0"),
    ({"adapt_lr": 0.0}, "adapt_lr must be a finite number > 0"),
    ({"split": "train"}, "unknown split 'train'"),
])  # fmt: skip
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptConfig(**kwargs)
