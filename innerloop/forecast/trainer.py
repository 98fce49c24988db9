"""Train a forecaster on the run scaffold (:mod:`innerloop.runs`) and score it on the test windows.

The recipe is DLinear's: Adam, MSE on the scaled series, mini-batches of shuffled training windows (the last partial
batch of an epoch dropped), the learning rate kept for two epochs then halved every epoch, and a validation pass at the
end of every epoch with early stopping (``patience`` epochs without a lower validation MSE). The weights of the best
validation epoch are kept (in the checkpoints, so a resumed run keeps them too) and scored at the end: MSE and MAE on
the scaled test set, averaged over every window, horizon step and channel. A run directory holds ``config.json``,
``log.csv``, ``checkpoints/``, ``best_model.safetensors`` and ``metrics.json``.

Epoch ``e``'s order of windows is a pure function of ``(seed, e)``; with the optimizer, the early-stopping state and
the RNG in the checkpoint, a run killed at any step and started again ends with the numbers of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from innerloop._io import atomic_write_bytes
from innerloop.data.timeseries import FEATURES, ForecastData, WindowDataset, ett, load_csv, make_forecast_data
from innerloop.data.timeseries.ett import ETT_SHA256
from innerloop.errors import check_choice
from innerloop.layers import MIXERS
from innerloop.models import count_params
from innerloop.runs import Callback, Run, TrainLoop, check_finite, fill_added_fields, read_config, torch_threads

from .models import FORECASTERS, MODEL_OPTIONS, build_forecaster
from .patch import BLOCKS
from .patchtst import NORMS

__all__ = ["EarlyStopping", "ForecastConfig", "ForecastTrainer", "LR_SCHEDULES", "evaluate_forecaster", "evaluate_run",
           "load_data", "load_forecaster", "lr_at", "model_options", "train_forecaster"]  # fmt: skip

BEST_FILE = "best_model.safetensors"
LR_SCHEDULES = ("step", "patchtst")


@dataclass
class ForecastConfig:
    """One forecasting run (saved as ``config.json``; the trailing comments are the CLI flags' ``--help``)."""

    CHOICES: ClassVar[dict[str, Collection[str]]] = {"model": FORECASTERS, "features": FEATURES, "mixer": MIXERS,
                                                     "block": BLOCKS, "norm": NORMS, "lr_schedule": LR_SCHEDULES}

    data: str = "ETTh1"  # ETTh1 | ETTh2 (checksummed, standard split), or the path to a CSV with a date column
    data_root: str = ""  # folder holding ETTh1.csv / ETTh2.csv; default: $INNERLOOP_DATA/ett
    date_column: str = "date"  # the CSV's time-stamp column
    target: str = "OT"  # target column (the only channel with features S)
    features: str = "M"  # M: every column in and out (multivariate); S: the target column only
    lookback: int = 336  # look-back window L (rows the model sees)
    horizon: int = 96  # forecast horizon H (rows predicted)
    model: str = "dlinear"  # forecaster (repeat_last has no parameters and is only scored)
    individual: bool = False  # one linear map per channel instead of one shared map (DLinear, NLinear)
    kernel_size: int = 25  # DLinear's moving-average width
    mixer: str = "attention"  # patch: the sequence mixer over the patches (any registered one; attention is causal)
    patch_len: int = 16  # patch: steps per patch
    stride: int = 8  # patch: steps between patch starts (the look-back is padded at the end by this many)
    d_model: int = 64  # patch: width of the patch tokens
    num_layers: int = 2  # patch: mixer + SwiGLU blocks
    num_heads: int = 4  # patch: mixer heads (d_model must divide by it; TTT needs an even d_model / num_heads)
    dropout: float = 0.0  # patch: dropout on the tokens, the blocks' branches and the head's input
    block: str = "prenorm"  # patch: prenorm (RMSNorm, mixer, SwiGLU) or patchtst (PatchTST's encoder)
    norm: str = "batch"  # patch with --block patchtst: batch (PatchTST's BatchNorm) or layer
    d_ff: int = 0  # patch: the FFN's hidden width (PatchTST's d_ff); 0 = 2 * d_model
    revin_affine: bool = True  # patch: RevIN's learnable per-channel affine (PatchTST's ETT scripts: off)
    head_dropout: float | None = None  # patch: dropout on the head's input; unset = --dropout (PatchTST: 0)
    epochs: int = 10  # maximum training epochs (early stopping may end sooner)
    batch_size: int = 32  # training windows per step (DLinear on ETTh1: 32)
    lr: float = 0.005  # Adam learning rate (DLinear on ETTh1: 0.005)
    lr_decay: float = 0.5  # step schedule: times this every epoch after the second; 1 = constant
    lr_schedule: str = "step"  # step (with --lr-decay) or patchtst (lr/25, then lr, from epoch 5 x0.9 each)
    patience: int = 3  # stop after this many epochs without a lower validation MSE; 0 = never stop early
    eval_batch_size: int = 512  # windows per batch when validating and testing
    log_every: int = 50  # steps between log.csv rows (every epoch end is logged too)
    checkpoint_every: int = 0  # steps between checkpoints; 0 = at the end of every epoch
    seed: int = 2021  # seed of the initialisation and the shuffling
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    out: str = "runs/forecast"  # run folder: config.json, log.csv, checkpoints/, metrics.json (again resumes)

    def __post_init__(self) -> None:
        for name, allowed in self.CHOICES.items():
            check_choice(name, getattr(self, name), allowed)
        for name in ("lookback", "horizon", "kernel_size", "epochs", "batch_size", "eval_batch_size", "log_every",
                     "patch_len", "stride", "d_model", "num_layers", "num_heads"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("patience", "checkpoint_every", "threads", "d_ff"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = off / default), got {getattr(self, name)}")
        if not 0 <= self.dropout < 1 or not 0 <= (self.head_dropout or 0.0) < 1:
            raise ValueError(f"dropout and head_dropout must be in [0, 1), got {self.dropout} and {self.head_dropout}")
        if not self.lr > 0 or not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr must be > 0 and lr_decay in (0, 1], got {self.lr} and {self.lr_decay}")


# Fields added after the first version of ForecastConfig: a config saved before them reads as their defaults.
ADDED_FIELDS = ("mixer", "patch_len", "stride", "d_model", "num_layers", "num_heads", "dropout", "block", "norm",
                "d_ff", "revin_affine", "head_dropout", "lr_schedule")
# a saved config as today's version writes it: the fields an older version lacked get their defaults
upgrade_config = fill_added_fields({k: ForecastConfig.__dataclass_fields__[k].default for k in ADDED_FIELDS})


def model_options(cfg: ForecastConfig) -> dict[str, Any]:
    """The config's model options (:data:`~innerloop.forecast.models.MODEL_OPTIONS`), for :func:`build_forecaster`."""
    return {name: getattr(cfg, name) for name in MODEL_OPTIONS}


def load_data(cfg: ForecastConfig) -> ForecastData:
    """The run's splits: ETT by name (checksummed, standard borders) or any CSV (70 / 10 / 20 percent).

    A path to ``ETTh1.csv`` / ``ETTh2.csv`` is ETT too (checksummed, the standard 12 / 4 / 4-month borders), not a
    generic CSV: the 70 / 10 / 20 split would silently give numbers not comparable with the published ones.
    """
    name, root = cfg.data, cfg.data_root or None
    path = Path(cfg.data)
    if path.suffix.lower() == ".csv" and path.stem in ETT_SHA256 and path.is_file():
        name, root = path.stem, path.parent
    if name in ETT_SHA256:
        return ett(name, root, cfg.lookback, cfg.horizon, cfg.features, cfg.target)
    if not Path(cfg.data).suffix and not Path(cfg.data).exists():
        raise ValueError(f"unknown data {cfg.data!r}: give {' or '.join(ETT_SHA256)}, or the path to a CSV file")
    table = load_csv(cfg.data, cfg.date_column, cfg.target, cfg.features, min_rows=cfg.lookback + cfg.horizon)
    return make_forecast_data(table.values, cfg.lookback, cfg.horizon, columns=table.columns)


@torch.no_grad()
def evaluate_forecaster(model: nn.Module, windows: WindowDataset, batch_size: int = 512,
                        drop_last_of: int = 0) -> dict[str, float | None]:  # fmt: skip
    """MSE and MAE of ``model`` over every window of ``windows`` (means over windows, horizon steps and channels).

    Args:
        model (nn.Module): a :class:`~innerloop.forecast.Forecaster`.
        windows (WindowDataset): the split to score.
        batch_size (int, Optional): windows per forward pass. Default: 512.
        drop_last_of (int, Optional): also score as the DLinear / PatchTST reference code's test loader does (the
            one their published numbers came from; LTSF-Linear's keeps every window since March 2023), which
            reads the windows in order in batches of this size and drops the last partial batch: ``mse_drop_last``
            and ``mae_drop_last`` over the first ``len(windows) // drop_last_of * drop_last_of`` windows (None when
            that is none: fewer windows than one batch); 0 = not.
            Default: 0.

    Returns:
        dict[str, float | None]: ``{"mse", "mae", "windows"}`` (and ``"mse_drop_last", "mae_drop_last",
        "windows_drop_last"`` with ``drop_last_of``).
    """
    was = model.training
    model.eval()
    se, ae = [], []  # per window
    for x, y in windows.batches(batch_size):
        err = (model(x) - y).double()  # [B, H, C]
        se.append(err.pow(2).flatten(1).sum(1))
        ae.append(err.abs().flatten(1).sum(1))
    model.train(was)
    se_w, ae_w = torch.cat(se), torch.cat(ae)
    per = windows.horizon * windows.channels
    out = {"mse": float(se_w.sum()) / (len(windows) * per), "mae": float(ae_w.sum()) / (len(windows) * per),
           "windows": len(windows)}  # fmt: skip
    if drop_last_of > 0:
        k = len(windows) // drop_last_of * drop_last_of  # 0 when the split is shorter than one batch: no score
        out.update(mse_drop_last=float(se_w[:k].sum()) / (k * per) if k else None,
                   mae_drop_last=float(ae_w[:k].sum()) / (k * per) if k else None,
                   windows_drop_last=k)  # fmt: skip
    return out


class EarlyStopping:
    """Validation MSE per epoch, the best epoch's weights, and whether patience has run out (checkpointable).

    Args:
        patience (int): epochs without a lower validation MSE before stopping; 0 = never stop.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best, self.best_epoch, self.bad_epochs, self.stopped = float("inf"), -1, 0, False
        self.best_weights: dict[str, torch.Tensor] = {}
        self.history: list[float] = []

    def update(self, epoch: int, val_mse: float, model: nn.Module) -> None:
        """Record epoch ``epoch``'s validation MSE; keep the weights when it is the lowest so far."""
        self.history.append(val_mse)
        if val_mse < self.best:
            self.best, self.best_epoch, self.bad_epochs = val_mse, epoch, 0
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
            self.stopped = self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "stopped": self.stopped, "best_weights": self.best_weights, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        self.bad_epochs, self.stopped = int(state["bad_epochs"]), bool(state["stopped"])
        self.best_weights, self.history = dict(state["best_weights"]), list(state["history"])


# Config keys that may change when a run resumes: they change how it is run or reported, not what it computes.
RESUME_FREE_KEYS = frozenset({"out", "data_root", "log_every", "checkpoint_every", "eval_batch_size", "threads"})
LOG_FIELDS = ["step", "epoch", "loss", "lr", "val_mse", "train_seconds"]


def lr_at(cfg: ForecastConfig, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based) under ``cfg.lr_schedule``.

    ``step`` (DLinear's): ``lr`` for two epochs, then times ``lr_decay`` every epoch. ``patchtst``: what PatchTST's
    ETT scripts (their ``type3`` schedule) actually run: ``lr / 25`` in the first epoch (their one-cycle scheduler,
    built but unused, sets the optimizer to its starting value, and ``type3`` only takes over after epoch 1), ``lr``
    in epochs 2 to 4, then ``lr * 0.9 ** (epoch - 3)`` (0-based ``epoch >= 3``).
    """
    if cfg.lr_schedule == "patchtst":
        return cfg.lr / 25 if epoch == 0 else cfg.lr * 0.9 ** max(epoch - 3, 0)
    return cfg.lr * cfg.lr_decay ** max(epoch - 1, 0)


class ForecastTrainer(TrainLoop):
    """Epochs of shuffled mini-batches on the run scaffold; a validation pass closes every epoch (see the module).

    Args:
        cfg (ForecastConfig): the run.
        model (nn.Module): the forecaster (with parameters).
        data (ForecastData): the splits.
        fresh, extend (bool, Optional): see :class:`innerloop.runs.Run`. Default: False.
        callbacks (Sequence[Callback], Optional): Default: ().
        progress (bool, Optional): a progress bar and resume messages. Default: False.
    """

    def __init__(self, cfg: ForecastConfig, model: nn.Module, data: ForecastData, fresh: bool = False,
                 extend: bool = False, callbacks: Sequence[Callback] = (), progress: bool = False) -> None:  # fmt: skip
        self.cfg, self.data = cfg, data
        self.steps_per_epoch = max(1, len(data.train) // cfg.batch_size)  # the last partial batch is dropped
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        self.early = EarlyStopping(cfg.patience)
        self._order: tuple[int, torch.Tensor] = (-1, torch.empty(0, dtype=torch.long))  # (epoch, its permutation)
        run = Run(cfg.out, dataclasses.asdict(cfg), steps_key="epochs", resume_free=RESUME_FREE_KEYS, fresh=fresh,
                  extend=extend, command="innerloop forecast train", upgrade=upgrade_config)  # fmt: skip
        super().__init__(
            model, run, cfg.epochs * self.steps_per_epoch, stateful={"optimizer": self.opt, "early": self.early},
            log_fields=LOG_FIELDS, average=("loss",), log_every=cfg.log_every,
            checkpoint_every=cfg.checkpoint_every or self.steps_per_epoch, callbacks=callbacks, progress=progress,
            desc=f"{cfg.model} {Path(cfg.data).stem} H={cfg.horizon}", verbose=progress,
            diverged_hint=f"Lower --lr (now {cfg.lr}).",
        )  # fmt: skip

    def resolved_config(self) -> dict[str, Any]:
        return {"steps_per_epoch": self.steps_per_epoch, "windows": self.data.sizes(), "borders": self.data.borders,
                "channels": list(self.data.columns), "num_params": sum(p.numel() for p in self.model.parameters())}

    def lr_at(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (0-based), see :func:`lr_at`."""
        return lr_at(self.cfg, epoch)

    def order(self, epoch: int) -> torch.Tensor:
        """Epoch ``epoch``'s permutation of the training windows, a pure function of ``(seed, epoch)``."""
        if self._order[0] != epoch:
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(len(self.data.train), generator=gen))
        return self._order[1]

    def train_step(self, step: int) -> dict[str, float]:
        epoch, k = divmod(step, self.steps_per_epoch)
        b = self.cfg.batch_size
        x, y = self.data.train.batch(self.order(epoch)[k * b : (k + 1) * b])
        lr = self.lr_at(epoch)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss = (self.model(x) - y).pow(2).mean()
        loss.backward()
        check_finite(loss.item(), "loss", self, step)
        self.opt.step()
        logs = {"epoch": epoch + 1, "loss": loss.item(), "lr": lr}
        if k == self.steps_per_epoch - 1:  # the epoch's end: validate, keep the best weights, maybe stop
            val = evaluate_forecaster(self.model, self.data.val, self.cfg.eval_batch_size)["mse"]
            self.early.update(epoch, val, self.model)
            self.should_stop = self.early.stopped
            logs["val_mse"] = val
        return logs

    def evaluate_metrics(self) -> dict[str, float]:
        return {"best_mse": self.early.best} if self.early.history else {}

    def resume(self, map_location: Any = "cpu") -> bool:
        resumed = super().resume(map_location)
        if resumed and self.early.stopped:  # an early-stopped run is finished: nothing left to train
            epoch = self.step // self.steps_per_epoch  # early stopping ends an epoch
            if self.run.extend and self.total_steps > self.step:
                raise ValueError(f"{self.run.out} stopped early after epoch {epoch} (no lower validation MSE in "
                                 f"{self.early.patience} epochs; best epoch {self.early.best_epoch + 1}): it is "
                                 f"finished, and --extend has nothing to train. To train longer, start over with "
                                 f"--fresh and a larger --patience (0 = never stop early)")  # fmt: skip
            # reported as the run that stopped reported itself (metrics.json is written again with this summary)
            self.stopped_early = self.step < self.total_steps
            self.total_steps = self.step
        return resumed

    def _row(self, logs: dict[str, Any]) -> dict[str, Any]:
        row = super()._row(logs)
        row["train_seconds"] = f"{self.train_seconds:.2f}"
        return row


def _save_best(path: Path, weights: dict[str, torch.Tensor]) -> None:
    import safetensors.torch as st

    atomic_write_bytes(path, st.save({k: v.contiguous() for k, v in weights.items()}))


def train_forecaster(cfg: ForecastConfig, fresh: bool = False, extend: bool = False,
                     callbacks: Sequence[Callback] = (), progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Train (or resume) a forecaster, keep its best validation epoch, score it on the test windows.

    Writes ``config.json``, ``log.csv``, ``checkpoints/``, ``best_model.safetensors`` and ``metrics.json`` under
    ``cfg.out``. A model without parameters (``repeat_last``) is only scored.

    Args:
        cfg (ForecastConfig): the run.
        fresh (bool, Optional): start over when ``cfg.out`` holds a run (kept as ``<out>.previous-<time>``).
            Default: False.
        extend (bool, Optional): allow more ``epochs`` than the checkpoint's. Default: False.
        callbacks (Sequence[Callback], Optional): :class:`innerloop.runs.Callback` hooks. Default: ().
        progress (bool, Optional): a progress bar and resume messages. Default: False.

    Returns:
        dict: the metrics as written to ``metrics.json`` (``test_mse``, ``test_mae``, ``val_mse``, ...); a run stopped
        before its first epoch ended (by a callback) has no validated weights: only the training summary is returned
        (``epochs_run`` 0) and nothing is scored or written besides the checkpoint, which the next call resumes.
    """
    with torch_threads(cfg.threads):
        return _train_forecaster(cfg, fresh, extend, callbacks, progress)


def _train_forecaster(cfg: ForecastConfig, fresh: bool, extend: bool, callbacks: Sequence[Callback],
                      progress: bool) -> dict[str, Any]:  # fmt: skip
    data = load_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_forecaster(cfg.model, cfg.lookback, cfg.horizon, len(data.columns), **model_options(cfg))
    out = Path(cfg.out)
    summary: dict[str, Any] = {"steps": 0, "train_seconds": 0.0, "stopped_early": False}
    best_epoch = None
    if any(True for _ in model.parameters()):
        trainer = ForecastTrainer(cfg, model, data, fresh, extend, callbacks, progress)
        summary = trainer.fit()
        run = trainer.run
        if not trainer.early.history:  # stopped (by a callback) before the first epoch's validation: nothing to score
            return {**summary, "best_epoch": None, "epochs_run": 0}
        model.load_state_dict(trainer.early.best_weights)
        best_epoch = trainer.early.best_epoch + 1
        epochs_run = len(trainer.early.history)
    else:
        run = Run(out, dataclasses.asdict(cfg), steps_key="epochs", resume_free=RESUME_FREE_KEYS, fresh=fresh,
                  command="innerloop forecast train")  # fmt: skip
        run.start_fresh_if_asked()
        out.mkdir(parents=True, exist_ok=True)
        run.write_config({"windows": data.sizes(), "borders": data.borders, "channels": list(data.columns)})
        epochs_run = 0
    _save_best(out / BEST_FILE, model.state_dict())
    metrics = _metrics(cfg, model, data)
    metrics.update(best_epoch=best_epoch, epochs_run=epochs_run, steps=summary["steps"],
                   train_seconds=summary["train_seconds"], stopped_early=summary["stopped_early"])
    run.write_metrics(metrics)
    return metrics


def _metrics(cfg: ForecastConfig, model: nn.Module, data: ForecastData) -> dict[str, Any]:
    val = evaluate_forecaster(model, data.val, cfg.eval_batch_size)
    test = evaluate_forecaster(model, data.test, cfg.eval_batch_size, drop_last_of=cfg.batch_size)
    # test_mse is over every window (the honest number); test_mse_drop_last is what the reference code reports (its
    # test loader drops the last partial batch of the training batch size: the last windows of the test period)
    return {"data": cfg.data, "model": cfg.model, "features": cfg.features, "lookback": cfg.lookback,
            "horizon": cfg.horizon, "test_mse": test["mse"], "test_mae": test["mae"], "val_mse": val["mse"],
            "val_mae": val["mae"], "test_mse_drop_last": test["mse_drop_last"],
            "test_mae_drop_last": test["mae_drop_last"], "test_windows_drop_last": test["windows_drop_last"],
            "windows": data.sizes(), "num_params": count_params(model)}


def load_forecaster(out: str | Path, **overrides: Any) -> tuple[ForecastConfig, nn.Module]:
    """The config and best weights of run ``out`` (``overrides`` replace saved config values, e.g. ``data_root``)."""
    import safetensors.torch as st

    out = Path(out)
    cfg_path, best = out / "config.json", out / BEST_FILE
    if not cfg_path.is_file() or not best.is_file():
        raise FileNotFoundError(f"{out} holds no finished forecasting run ({cfg_path.name} and {BEST_FILE} are "
                                f"written by `innerloop forecast train --out {out}`)")  # fmt: skip
    saved, resolved = read_config(out, "innerloop forecast train")
    channels = resolved.get("channels")
    if not channels:
        raise ValueError(f"{cfg_path} does not record the run's channels: it was not written by `innerloop forecast "
                         f"train`; train the run again with that command")  # fmt: skip
    channels = len(channels)
    cfg = ForecastConfig(**{**saved, **overrides})
    model = build_forecaster(cfg.model, cfg.lookback, cfg.horizon, channels, **model_options(cfg))
    model.load_state_dict(st.load_file(str(best)))
    return cfg, model


def evaluate_run(out: str | Path, **overrides: Any) -> dict[str, Any]:
    """Score run ``out``'s best weights again on its validation and test windows (``metrics.json`` is not changed)."""
    cfg, model = load_forecaster(out, **overrides)
    return _metrics(cfg, model, load_data(cfg))
