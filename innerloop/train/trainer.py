"""A model-agnostic trainer with callbacks, exact resume and data parallelism.

Nothing here knows about language models: the trainer gets a ``batch_fn(step) -> (inputs, targets)`` (this rank's
rows of global batch ``step``; a pure function of the step so that resuming needs no data-loader state), a
``loss_fn(model, inputs, targets) -> loss`` and an optional ``eval_fn(model) -> dict``. It runs AdamW with linear
warm-up + cosine decay, gradient clipping and accumulation, bf16 autocast, logs ``log.csv`` and writes atomic
checkpoints (weights, optimizer, RNG, data position, loss history) from which a killed run continues exactly.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .checkpoint import capture_rng, latest_checkpoint, load_checkpoint, restore_rng, save_checkpoint
from .config import RESUME_FREE_KEYS, TrainConfig, lr_at
from .distributed import DistInfo
from .logging import CSVLogger

__all__ = ["Callback", "Trainer", "TrainingDivergedError", "ConfigMismatchError"]


class TrainingDivergedError(RuntimeError):
    """Raised when the loss or the gradient norm is NaN/inf; the update is not applied and nothing is saved."""


class ConfigMismatchError(ValueError):
    """Raised when a run directory's checkpoint was made with a different config."""


class Callback:
    """Hooks called by :class:`Trainer`; override any of them."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_start(self, trainer: Trainer, step: int) -> None: ...

    def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, Any]) -> None: ...

    def on_eval(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None: ...


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def config_diff(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys (outside :data:`RESUME_FREE_KEYS`) whose values differ: ``{key: (saved, current)}``."""
    keys = (set(saved) | set(current)) - RESUME_FREE_KEYS
    return {k: (saved.get(k), current.get(k)) for k in sorted(keys) if saved.get(k) != current.get(k)}


class Trainer:
    """Train ``model`` for ``cfg.steps`` optimizer steps in ``cfg.out``, resuming from its latest checkpoint.

    Args:
        model (nn.Module): already on ``dist.device``.
        cfg (TrainConfig): optimisation and run settings (model fields are not read here).
        batch_fn (Callable[[int], tuple[Tensor, Tensor]]): this rank's ``(inputs [b, ...], targets [b, ...])`` of
            global step ``step``; split along dim 0 into ``cfg.grad_accum`` micro-batches.
        loss_fn (Callable): ``loss_fn(model, inputs, targets) -> scalar loss`` (mean over the micro-batch).
        eval_fn (Callable, Optional): ``eval_fn(model) -> {name: float}`` on rank 0. Default: None.
        callbacks (Sequence[Callback], Optional): Default: ().
        dist_info (DistInfo, Optional): rank/world/device (from :func:`setup_distributed`). Default: one CPU process.
        tokens_per_step (int, Optional): global tokens per optimizer step, for ``tokens``/``tokens_per_s``. Default: 0.
        progress (bool, Optional): tqdm bar on rank 0 (if tqdm is installed). Default: False.
    """

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, batch_fn: Callable[[int], tuple[Tensor, Tensor]],
        loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor], eval_fn: Callable[[nn.Module], dict] | None = None,
        callbacks: Sequence[Callback] = (), dist_info: DistInfo | None = None, tokens_per_step: int = 0,
        progress: bool = False,
    ) -> None:
        self.cfg, self.model, self.batch_fn, self.loss_fn, self.eval_fn = cfg, model, batch_fn, loss_fn, eval_fn
        self.callbacks = list(callbacks)
        self.dist = dist_info or DistInfo(device=str(next(model.parameters()).device))
        self.tokens_per_step, self.progress = tokens_per_step, progress
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"
        fused = self.dist.device.startswith("cuda")
        extra = {"fused": True} if fused else {}
        self.optimizer = torch.optim.AdamW(
            _param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, **extra
        )
        self.ddp_model = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch.device(self.dist.device).index] if fused else None
            self.ddp_model = DistributedDataParallel(model, device_ids=ids)
        bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and self.dist.device.startswith("cuda"))
        self.autocast = dict(device_type=torch.device(self.dist.device).type, dtype=torch.bfloat16, enabled=bf16)
        self.step = 0
        self.losses: list[float] = []  # per-step training loss (global mean), kept across resumes
        self.train_seconds = 0.0
        self.last_eval: dict[str, float] = {}
        self.stopped_early = False
        self.should_stop = False  # a callback may set this in on_step_end: checkpoint and stop after this step

    # ---- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(), "rng": capture_rng(), "losses": list(self.losses),
            "train_seconds": self.train_seconds, "config": self.cfg.to_dict(), "last_eval": dict(self.last_eval),
            "data": {"sampler": "pure function of (seed, step)", "seed": self.cfg.seed, "next_step": self.step},
        }  # fmt: skip

    def save(self) -> Path | None:
        if not self.dist.is_main:
            return None
        return save_checkpoint(self.ckpt_dir, self.step, self.model, self.state_dict(), self.cfg.keep_checkpoints)

    def resume(self) -> bool:
        """Load ``cfg.out``'s latest checkpoint if any; a checkpoint from a different config is a clear error."""
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            return False
        state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
        diff = config_diff(TrainConfig.upgrade_dict(state["config"]), self.cfg.to_dict())  # older files: 0 -> None
        if diff:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ConfigMismatchError(
                f"{self.out} holds a checkpoint of a different run ({lines}). Use another --out, or the same "
                f"settings to resume; nothing was changed."
            )
        state = load_checkpoint(path, self.model, map_location=self.dist.device)
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"])
        self.step, self.losses = state["step"], list(state["losses"])
        self.train_seconds, self.last_eval = state["train_seconds"], dict(state.get("last_eval", {}))
        return True

    # ---- one optimizer step
    def _train_step(self, step: int) -> tuple[float, float]:
        cfg = self.cfg
        lr = lr_at(step, cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        inputs, targets = self.batch_fn(step)
        if inputs.shape[0] % cfg.grad_accum:
            raise ValueError(f"local batch {inputs.shape[0]} is not divisible by grad_accum {cfg.grad_accum}")
        total = torch.zeros((), device=self.dist.device)
        micro = list(zip(inputs.chunk(cfg.grad_accum), targets.chunk(cfg.grad_accum)))
        for i, (x, y) in enumerate(micro):
            sync = i == len(micro) - 1 or not self.dist.enabled
            with contextlib.nullcontext() if sync else self.ddp_model.no_sync():
                with torch.autocast(**self.autocast):
                    loss = self.loss_fn(self.ddp_model, x, y) / cfg.grad_accum
                loss.backward()
            total += loss.detach().float()
        if self.dist.enabled:
            dist.all_reduce(total)
            total /= self.dist.world_size
        loss_value = total.item()
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDivergedError(self._diverged_msg(step, f"loss is {loss_value}"))
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip).item()
        else:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads))
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDivergedError(self._diverged_msg(step, f"gradient norm is {norm}"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, norm

    def _diverged_msg(self, step: int, what: str) -> str:
        last = latest_checkpoint(self.ckpt_dir)
        kept = f"the last good checkpoint {last} is kept" if last else "no checkpoint had been written yet"
        return (f"training diverged at step {step + 1}: {what}. The update was not applied and {kept}. "
                f"Try a lower --lr (now {self.cfg.lr}), a smaller --grad-clip, or fp32 (--dtype fp32).")  # fmt: skip

    def evaluate(self) -> dict[str, float]:
        if self.eval_fn is None or not self.dist.is_main:
            return {}
        was = self.model.training
        self.model.eval()
        with torch.no_grad(), torch.autocast(**self.autocast):
            metrics = {k: float(v) for k, v in self.eval_fn(self.model).items()}
        self.model.train(was)
        self.last_eval = metrics
        for cb in self.callbacks:
            cb.on_eval(self, self.step, metrics)
        return metrics

    # ---- the loop
    def fit(self) -> dict[str, Any]:
        """Train from the latest checkpoint (or from scratch) to ``cfg.steps``; returns a summary dict."""
        cfg = self.cfg
        resumed = self.resume()
        self.out.mkdir(parents=True, exist_ok=True)
        logger = None
        if self.dist.is_main:
            tb = self.out / "tb" if cfg.tensorboard else None
            logger = CSVLogger(self.out / "log.csv", resume_step=self.step if resumed else None, tensorboard_dir=tb)
        bar = self._bar()
        for cb in self.callbacks:
            cb.on_train_start(self)
        self.model.train()
        try:
            while self.step < cfg.steps:
                step = self.step
                for cb in self.callbacks:
                    cb.on_step_start(self, step)
                t0 = time.perf_counter()
                loss, norm = self._train_step(step)
                self.train_seconds += time.perf_counter() - t0
                self.step = step + 1
                self.losses.append(loss)
                logs = {"step": self.step, "loss": loss, "lr": lr_at(step, cfg), "grad_norm": norm}
                done = self.step == cfg.steps
                out_of_time = cfg.max_seconds > 0 and self.train_seconds >= cfg.max_seconds and not done
                for cb in self.callbacks:
                    cb.on_step_end(self, step, logs)
                out_of_time = out_of_time or (self.should_stop and not done)
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or done or out_of_time:
                    logs.update({f"val_{k}": v for k, v in self.evaluate().items()})
                if logger is not None and (self.step % cfg.log_every == 0 or done or out_of_time or "val_loss" in logs):
                    window = self.losses[-cfg.log_every:]
                    tokens = self.step * self.tokens_per_step
                    logger.log({**logs, "loss": sum(window) / len(window), "tokens": tokens,
                                "tokens_per_s": tokens / max(self.train_seconds, 1e-9),
                                "train_seconds": self.train_seconds})  # fmt: skip
                if self.step % cfg.checkpoint_every == 0 or done or out_of_time:
                    self.save()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}")
                if out_of_time:
                    self.stopped_early = True
                    break
            if resumed and self.step >= cfg.steps and not self.last_eval:
                self.evaluate()
        finally:
            if bar is not None:
                bar.close()
            if logger is not None:
                logger.close()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        tokens = self.step * self.tokens_per_step
        return {
            "steps": self.step, "tokens": tokens, "train_seconds": self.train_seconds,
            "tokens_per_s": tokens / self.train_seconds if self.train_seconds else 0.0,
            "final_train_loss": self.losses[-1] if self.losses else float("nan"),
            "stopped_early": self.stopped_early, **{f"val_{k}": v for k, v in self.last_eval.items()},
        }  # fmt: skip

    def _bar(self):
        if not (self.progress and self.dist.is_main):
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=self.cfg.steps, initial=self.step, desc=f"{self.cfg.mixer}", mininterval=1, leave=False)
