"""Test-time adaptation of a trained forecaster, walking the test windows in time order without peeking.

Window ``i`` of a split (:class:`~innerloop.data.timeseries.WindowDataset`) reads rows ``[i, i+L)`` and is scored on
rows ``[i+L, i+L+H)``; its **prediction time** is row ``p_i = i + L``: at that moment rows ``< p_i`` are known and
nothing else is. Both protocols walk ``i = 0, 1, ...`` and may use, for window ``i``, only rows ``< p_i``.

- ``state`` (protocol a, the state is the adaptation): a :class:`~innerloop.forecast.PatchForecaster` whose mixer
  has a fixed-size recurrent state (TTT-Linear, TTT-MLP, Mamba, LSTM, GRU, RNN) reads the windows' patch tokens as
  one long sequence in time order: every block's mixer starts window ``i`` from the state it had after window
  ``i - streams`` instead of a fresh state (``streams`` interleaved sequences, so ``streams`` windows run as one
  batch; ``streams=1`` is strictly sequential). For a TTT mixer the carried state is its inner model, which keeps
  training on every token it has read: test-time training across the stream. The state only ever reads inputs of
  earlier windows, all at rows ``< p_i``. Attention has no fixed-size state (its state is a cache of every past
  token), so it is refused.
- ``online`` (protocol b, TAFAS-style): before predicting windows ``i .. i+u-1`` (``u = update_every``), take
  ``steps`` gradient steps on the MSE of the newest **fully revealed** windows: window ``j`` is revealed at ``p_i``
  when its last target row ``j + L + H - 1 < p_i``, i.e. ``j <= i - H``. With ``partial``, the newest windows are
  ``j <= i - 1`` instead, their loss masked to the target rows ``< p_i`` (TAFAS's partially observed ground truth):
  windows ``j > i - H`` count with their revealed rows only, and with ``adapt_windows <= update_every`` a window is
  used at most once, so its later rows never enter an update (with ``update_every = 1``, only its first). The
  parameters updated are ``all``, ``norm_head`` (RevIN, the RMSNorms and the head of a patch model), or a small
  ``adapter`` added after the forecaster (:class:`ForecastAdapter`, the identity at the start); the optimizer
  (SGD or Adam) keeps its state along the walk. The trained model is copied: the caller's is never changed.

Both walks also run the frozen model (fresh state, no update) on the same batches, so one call returns the metrics
with and without adaptation and the wall time of each path. :func:`adapt_model` never reads the targets of a window
before its prediction time: ``trace`` records, for every update, the prediction time and the last target row the
update read (the tests assert ``last < time``, and that NaN or 1e6 written into every row ``>= p_i`` leaves the
predictions up to window ``i`` bit-identical in a walk of the whole split, for every model kind and setting).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from innerloop._io import atomic_write_json
from innerloop.data.timeseries import WindowDataset
from innerloop.errors import check_choice
from innerloop.layers import KVCache

from .patch import PatchForecaster
from .patchtst import EncoderAttention

__all__ = ["ADAPT_MODES", "ADAPT_PARAMS", "AdaptConfig", "ForecastAdapter", "adapt_model", "adapt_run",
           "check_stateful", "plot_predictions", "state_floats"]  # fmt: skip

ADAPT_MODES = ("none", "state", "online")
ADAPT_PARAMS = ("all", "norm_head", "adapter")
_NORM_HEAD = ("revin", "norm", "head")  # the patch model's modules updated by norm_head (and each block's norms)
_BLOCK_NORMS = ("seq_norm", "ffn_norm")


ONLINE_FIELDS = ("adapt_steps", "adapt_lr", "adapt_params", "adapt_optimizer", "update_every", "adapt_windows",
                 "adapt_partial", "adapter_rank", "seed")  # fmt: skip


@dataclass
class AdaptConfig:
    """How to adapt at test time (the trailing comments are the ``innerloop forecast eval`` flags' ``--help``)."""

    CHOICES: ClassVar[dict[str, Collection[str]]] = {"adapt": ADAPT_MODES, "adapt_params": ADAPT_PARAMS,
                                                     "adapt_optimizer": ("sgd", "adam"), "split": ("val", "test")}

    adapt: str = "none"  # none: frozen; state: carry the mixers' state; online: gradient steps on revealed windows
    split: str = "test"  # the split walked in time order
    streams: int = 1  # state: window i continues the state of window i - streams (1 = one sequence, strictly in order)
    adapt_steps: int = 1  # online: gradient steps per update
    adapt_lr: float = 0.0001  # online: learning rate of the updates
    adapt_params: str = "norm_head"  # online: parameters updated (all; norm_head: RevIN, norms, head; adapter)
    adapt_optimizer: str = "adam"  # online: optimizer of the updates (its state is kept along the walk)
    update_every: int = 1  # online: windows predicted between updates (1 = an update before every prediction)
    adapt_windows: int = 0  # online: newest revealed windows per update; 0 = update_every (each used once)
    adapt_partial: bool = False  # online: the newest windows incl. partly revealed ones, loss masked to rows seen
    adapter_rank: int = 4  # online with adapter: rank of its low-rank map along the horizon
    limit: int = 0  # walk only the first N windows (0 = all); for quick looks and plots
    seed: int = 0  # online with adapter: seed of the adapter's initialisation

    def __post_init__(self) -> None:
        for name, allowed in self.CHOICES.items():
            check_choice(name, getattr(self, name), allowed)
        for name in ("streams", "adapt_steps", "update_every", "adapter_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("adapt_windows", "limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = default / all), got {getattr(self, name)}")
        if not 0 < self.adapt_lr < float("inf"):
            raise ValueError(f"adapt_lr must be a finite number > 0, got {self.adapt_lr}")
        # a setting of another mode would be silently ignored: refuse it (the comments' "online:" / "state:"); the
        # online check comes first, so the adapter's is reached with --adapt online only
        changed = {f.name for f in fields(self) if getattr(self, f.name) != f.default}
        for names, field, wanted in ((("streams",), "adapt", "state"), (ONLINE_FIELDS, "adapt", "online"),
                                     (("adapter_rank", "seed"), "adapt_params", "adapter")):  # fmt: skip
            given = [n for n in names if n in changed]
            if given and getattr(self, field) != wanted:
                flags, flag = ", ".join("--" + n.replace("_", "-") for n in given), "--" + field.replace("_", "-")
                raise ValueError(f"{flags} applies to {flag} {wanted} only, not {flag} {getattr(self, field)}; add "
                                 f"{flag} {wanted} or drop it")  # fmt: skip


class ForecastAdapter(nn.Module):
    """``y + (y_c^T A) B + b_c`` on a forecast ``y [B, H, C]``: a rank-``r`` map along the horizon shared by the
    channels, and a bias per channel. ``B`` and ``b`` start at zero, so the adapter starts as the identity.

    Args:
        horizon (int): H.
        channels (int): C.
        rank (int, Optional): r. Default: 4.
    """

    def __init__(self, horizon: int, channels: int, rank: int = 4) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.randn(horizon, rank) / horizon**0.5)  # A [H, r]
        self.up = nn.Parameter(torch.zeros(rank, horizon))  # B [r, H]
        self.bias = nn.Parameter(torch.zeros(channels))  # b [C]

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        delta = (y.transpose(1, 2) @ self.down @ self.up).transpose(1, 2)  # [B, C, H] -> [B, H, C]
        return y + delta + self.bias


class _Adapted(nn.Module):
    """A forecaster followed by a :class:`ForecastAdapter`."""

    def __init__(self, model: nn.Module, adapter: ForecastAdapter) -> None:
        super().__init__()
        self.model, self.adapter = model, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.model(x))


def state_floats(state: Any) -> int:
    """Numbers held in a (nested) mixer state: the tensors of tuples, lists, dicts and NamedTuples, summed."""
    if isinstance(state, torch.Tensor):
        return state.numel()
    if isinstance(state, dict):
        return sum(state_floats(v) for v in state.values())
    if isinstance(state, (tuple, list)):
        return sum(state_floats(v) for v in state)
    if hasattr(state, "__dict__"):
        return sum(state_floats(v) for v in vars(state).values())
    return 0


def check_stateful(model: nn.Module) -> None:
    """Raise a clear error unless ``model`` is a patch model whose mixer has a fixed-size recurrent state."""
    if not isinstance(model, PatchForecaster):
        raise ValueError(f"--adapt state needs a patch model with a recurrent mixer (ttt_linear, ttt_mlp, mamba, lstm, "
                         f"gru); {type(model).__name__} has no state to carry: use --adapt online")  # fmt: skip
    mixer = model.blocks[0].mixer
    if isinstance(mixer, EncoderAttention) or isinstance(mixer.init_state(1), KVCache):
        raise ValueError(f"--adapt state: the {model.mixer_name!r} mixer has no fixed-size recurrent state to carry "
                         f"(its state is a cache of every past token, which would grow with the test stream); use a "
                         f"recurrent mixer (ttt_linear, ttt_mlp, mamba, lstm, gru) or --adapt online")


def _trainable(model: nn.Module, cfg: AdaptConfig, channels: int) -> tuple[nn.Module, list[nn.Parameter]]:
    """The model that predicts during the walk and the parameters the online updates change."""
    if cfg.adapt_params == "adapter":
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(cfg.seed)
        adapter = ForecastAdapter(model.horizon, channels, cfg.adapter_rank)
        torch.random.set_rng_state(gen_state)
        return _Adapted(model, adapter), list(adapter.parameters())
    if cfg.adapt_params == "all":
        params = list(model.parameters())
    elif isinstance(model, PatchForecaster):
        params = [p for name, p in model.named_parameters() if _is_norm_head(name)]
    else:
        params = []
    if not params:
        raise ValueError(f"--adapt-params {cfg.adapt_params}: {type(model).__name__} has no such parameters (norm_head "
                         f"is RevIN, the norms and the head of a patch model); use --adapt-params all or adapter")
    return model, params


def _is_norm_head(name: str) -> bool:
    parts = name.split(".")
    return parts[0] in _NORM_HEAD or (parts[0] == "blocks" and len(parts) > 2 and parts[2] in _BLOCK_NORMS)


@torch.no_grad()
def _frozen(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    y = model(x)
    return y, time.perf_counter() - t0


def adapt_model(model: nn.Module, windows: WindowDataset, cfg: AdaptConfig, return_predictions: bool = False,
                trace: list[tuple[int, int]] | None = None) -> dict[str, Any]:  # fmt: skip
    """Walk ``windows`` in time order with and without test-time adaptation (see the module docstring).

    Args:
        model (nn.Module): a trained :class:`~innerloop.forecast.Forecaster` (not changed: ``online`` adapts a copy).
        windows (WindowDataset): the split, walked from window 0.
        cfg (AdaptConfig): the protocol (``cfg.adapt``: none, state or online) and its settings.
        return_predictions (bool, Optional): also return ``predictions`` and ``frozen_predictions`` ``[n, H, C]``.
            Default: False.
        trace (list | None, Optional): if given, every online update appends ``(prediction_time, last_target_row)``,
            rows of the split (``last_target_row`` is the last target row whose loss term the update read).
            Default: None.

    Returns:
        dict: ``mse``, ``mae`` (adapted), ``frozen_mse``, ``frozen_mae``, ``windows``, ``seconds`` and
        ``frozen_seconds`` (wall time of each path over the walk), ``ms_per_window`` and ``frozen_ms_per_window``,
        ``extra_ms_per_window`` (the gather of the windows' inputs, which both paths read, is timed in neither),
        ``updates``, ``params_updated`` (numbers changed by the updates; 0 without an update), ``extra_floats``
        (numbers kept besides the frozen model's: the carried states; or the optimizer's state, the gradients and the
        adapter's weights; the activations of the backward pass are not counted).
    """
    n = len(windows) if cfg.limit == 0 else min(cfg.limit, len(windows))
    L, H = windows.lookback, windows.horizon
    was = model.training
    model.eval()
    preds = torch.empty(n, H, windows.channels)
    frozen = torch.empty(n, H, windows.channels)
    seconds = frozen_seconds = 0.0
    updates = params_updated = extra = 0
    if cfg.adapt == "state":
        check_stateful(model)
        k, states = cfg.streams, None
        with torch.no_grad():
            for b in range(0, n, k):
                idx = torch.arange(b, b + k).clamp(max=n - 1)  # the last batch padded with copies of window n - 1
                x, _ = windows.batch(idx)
                y, dt = _frozen(model, x)
                frozen[b : b + k] = y[: n - b]
                t0 = time.perf_counter()
                y, states = model.forward_stateful(x, states)  # windows b..b+k-1 continue windows b-k..b-1
                seconds += time.perf_counter() - t0
                frozen_seconds += dt
                preds[b : b + k] = y[: n - b]
        extra = state_floats(states)
    elif cfg.adapt == "online":
        work, params = _trainable(copy.deepcopy(model), cfg, windows.channels)
        work.eval()
        for p in work.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = (torch.optim.Adam(params, lr=cfg.adapt_lr) if cfg.adapt_optimizer == "adam"
               else torch.optim.SGD(params, lr=cfg.adapt_lr))  # fmt: skip
        u = cfg.update_every
        w = cfg.adapt_windows or u
        offsets = torch.arange(H)
        for i in range(0, n, u):
            x_now, _ = windows.batch(torch.arange(i, min(i + u, n)))  # both paths' input, timed in neither
            t0 = time.perf_counter()
            newest = i - 1 if cfg.adapt_partial else i - H  # the newest window with any / all targets before p_i
            if newest >= 0:
                js = torch.arange(max(0, newest - w + 1), newest + 1)
                x, y = windows.batch(js)
                mask = (js[:, None] + L + offsets < i + L)[:, :, None].to(y.dtype)  # [J, H, 1]: rows < p_i
                y = torch.where(mask.bool(), y, torch.zeros((), dtype=y.dtype))  # unrevealed targets never enter
                if trace is not None:
                    seen = (js[:, None] + L + offsets)[mask[:, :, 0].bool()]
                    trace.append((i + L, int(seen.max())))
                denom = mask.sum() * windows.channels
                for _ in range(cfg.adapt_steps):
                    opt.zero_grad(set_to_none=True)
                    loss = ((work(x) - y).pow(2) * mask).sum() / denom
                    loss.backward()
                    opt.step()
                updates += 1
            with torch.no_grad():
                preds[i : i + u] = work(x_now)
            seconds += time.perf_counter() - t0
            frozen[i : i + u], dt = _frozen(model, x_now)
            frozen_seconds += dt
        params_updated = sum(p.numel() for p in params) if updates else 0
        # kept besides the model: the optimizer's state and the gradients (those an update made), and the adapter's
        # weights (new, updated or not)
        extra = sum(state_floats(s) for s in opt.state.values()) + sum(p.grad.numel() for p in params
                                                                         if p.grad is not None)  # fmt: skip
        if cfg.adapt_params == "adapter":
            extra += sum(p.numel() for p in params)
    else:
        with torch.no_grad():
            for b in range(0, n, 512):
                x, _ = windows.batch(torch.arange(b, min(b + 512, n)))
                frozen[b : b + 512], dt = _frozen(model, x)
                frozen_seconds += dt
        preds, seconds = frozen, frozen_seconds
    model.train(was)
    targets = windows.batch(torch.arange(n))[1]
    out: dict[str, Any] = {"adapt": cfg.adapt, "windows": n, **_scores(preds, targets, ""),
                           **_scores(frozen, targets, "frozen_"), "seconds": seconds, "frozen_seconds": frozen_seconds,
                           "ms_per_window": 1000 * seconds / n, "frozen_ms_per_window": 1000 * frozen_seconds / n,
                           "extra_ms_per_window": 1000 * (seconds - frozen_seconds) / n, "updates": updates,
                           "params_updated": params_updated, "extra_floats": extra}  # fmt: skip
    if return_predictions:
        out.update(predictions=preds, frozen_predictions=frozen)
    return out


def _scores(pred: torch.Tensor, target: torch.Tensor, prefix: str) -> dict[str, float]:
    err = (pred - target).double()
    return {f"{prefix}mse": float(err.pow(2).mean()), f"{prefix}mae": float(err.abs().mean())}


def adapt_run(out: str | Path, cfg: AdaptConfig, save: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """Walk the best weights of run ``out`` over its ``cfg.split`` with :func:`adapt_model`; write the metrics.

    Args:
        out (str | Path): a run folder written by ``innerloop forecast train``.
        cfg (AdaptConfig): the protocol.
        save (str | Path | None, Optional): JSON file for the result; None = ``<out>/adapt-<cfg.adapt>.json``.
            Default: None.
        overrides: replace saved config values of the run (``data_root``, ``eval_batch_size``).

    Returns:
        dict: :func:`adapt_model`'s result plus the run's ``data``, ``model``, ``mixer``, ``lookback``, ``horizon``
        and the adaptation settings (``cfg``).
    """
    from .trainer import load_data, load_forecaster

    run_cfg, model = load_forecaster(out, **overrides)
    data = load_data(run_cfg)
    result = adapt_model(model, getattr(data, cfg.split), cfg)
    result.update(data=run_cfg.data, model=run_cfg.model, mixer=run_cfg.mixer if run_cfg.model == "patch" else "",
                  lookback=run_cfg.lookback, horizon=run_cfg.horizon, split=cfg.split, settings=asdict(cfg))
    atomic_write_json(Path(save) if save else Path(out) / f"adapt-{cfg.adapt}.json", result)
    return result


def plot_predictions(out: str | Path, cfg: AdaptConfig, path: str | Path, window: int = 0, channel: str = "OT",
                     context: int = 0, **overrides: Any) -> dict[str, Any]:  # fmt: skip
    """PNG of one window of run ``out``: the look-back's tail, the truth, the frozen and the adapted forecast.

    The walk of ``cfg`` runs from window 0 to ``window`` (so the adapted forecast is the one the protocol makes at
    that point of the stream; with ``cfg.adapt == "none"`` only the frozen forecast is drawn).

    Args:
        out (str | Path): a finished forecasting run.
        cfg (AdaptConfig): the protocol (its ``limit`` is replaced by ``window + 1``).
        path (str | Path): the PNG to write.
        window (int, Optional): window index in ``cfg.split``. Default: 0.
        channel (str, Optional): the column drawn. Default: ``"OT"``.
        context (int, Optional): look-back steps drawn before the forecast; 0 = the horizon. Default: 0.
        overrides: replace saved config values of the run (``data_root``).

    Returns:
        dict: the walk's metrics up to ``window`` (as :func:`adapt_model`, without the predictions).
    """
    from innerloop._io import pyplot

    from .trainer import load_data, load_forecaster

    run_cfg, model = load_forecaster(out, **overrides)
    data = load_data(run_cfg)
    windows = getattr(data, cfg.split)
    if not 0 <= window < len(windows):
        raise ValueError(f"window {window} is outside the {cfg.split} split's {len(windows)} windows; "
                         f"give --window between 0 and {len(windows) - 1}")  # fmt: skip
    if channel not in data.columns:
        raise ValueError(f"channel {channel!r} is not in the run's columns {list(data.columns)}; pick one of them")
    c = data.columns.index(channel)
    result = adapt_model(model, windows, replace(cfg, limit=window + 1), return_predictions=True)
    x, y = windows[window]
    L, H = windows.lookback, windows.horizon
    ctx = min(context or H, L)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 3.6))
    t0 = windows.start + window + L  # the prediction time as a row of the file
    ax.plot(range(t0 - ctx, t0), x[-ctx:, c], color="0.4", label="look-back")
    ax.plot(range(t0, t0 + H), y[:, c], color="k", label="truth")
    ax.plot(range(t0, t0 + H), result["frozen_predictions"][window, :, c], color="C0", label="frozen")
    if cfg.adapt != "none":
        ax.plot(range(t0, t0 + H), result["predictions"][window, :, c], color="C3", label=f"adapted ({cfg.adapt})")
    ax.axvline(t0, color="0.7", linestyle=":")
    name = run_cfg.mixer if run_cfg.model == "patch" else run_cfg.model
    ax.set(xlabel="row of the file", ylabel=f"{channel} (scaled)",
           title=f"{name} on {Path(run_cfg.data).stem}, {cfg.split} window {window} (L={L}, H={H})")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {k: v for k, v in result.items() if not k.endswith("predictions")}
