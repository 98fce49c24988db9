"""The data-parallel trainer of supervised models on the run scaffold (:mod:`innerloop.runs`).

Nothing here knows about language models: the trainer gets a ``batch_fn(step) -> (inputs, targets)`` (this rank's
rows of global batch ``step``; a pure function of the step so that resuming needs no data-loader state), a
``loss_fn(model, inputs, targets) -> loss`` and an optional ``eval_fn(model) -> dict``. One step is AdamW with linear
warm-up + cosine decay, gradient clipping and accumulation, bf16 autocast and DDP or FSDP (``cfg.parallel``,
:mod:`innerloop.train.fsdp`); the loop, logs, checkpoints, resume, time budget, NaN stop and Ctrl-C handling are the
scaffold's :class:`~innerloop.runs.TrainLoop`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from innerloop.runs import Callback, ConfigMismatchError, Run, TrainingDivergedError, TrainLoop, check_finite

from .config import RESUME_FREE_KEYS, TrainConfig
from .distributed import DistInfo
from .fsdp import (
    FullOptimizerState,
    StateDictModule,
    as_float,
    check_parallel,
    full_model_state,
    tied_aliases,
    total_norm,
)
from .schedules import lr_at

__all__ = ["LOG_FIELDS", "Callback", "ConfigMismatchError", "Trainer", "TrainingDivergedError"]

# the resume-free config keys the validation (``eval_fn`` of :func:`innerloop.train.train_lm`) depends on: a finished
# run run again with another value is evaluated again. ``eval_every`` only adds evaluations during training; the others
# (``model.mode``, ``parallel``, the process count that sets the evaluation's batch size) change at most rounding.
EVAL_KEYS = ("eval_batches",)
LOG_FIELDS = ["step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "train_seconds", "val_loss", "val_bpb"]


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # the authors' rule, carried by the layers' no-weight-decay marks (innerloop.models._optim_groups)
    from innerloop.models._optim_groups import weight_decay_groups

    return weight_decay_groups(model, weight_decay)


class Trainer(TrainLoop):
    """Train ``model`` for ``cfg.steps`` optimizer steps in ``cfg.out``, resuming from its newest intact checkpoint.

    Args:
        model (nn.Module): already on ``dist.device``. With ``cfg.parallel == "fsdp"`` it is sharded in place when
            :meth:`fit` starts (each block of ``model.layers``, then the root; :mod:`innerloop.train.fsdp`).
        cfg (TrainConfig): optimisation and run settings (model fields are not read here).
        batch_fn (Callable[[int], tuple[Tensor, Tensor]]): this rank's ``(inputs [b, ...], targets [b, ...])`` of
            global step ``step``; split along dim 0 into ``cfg.grad_accum`` micro-batches.
        loss_fn (Callable): ``loss_fn(model, inputs, targets) -> scalar loss`` (mean over the micro-batch).
        eval_fn (Callable, Optional): ``eval_fn(model) -> {name: float}`` on rank 0. Default: None.
        callbacks (Sequence[Callback], Optional): Default: ().
        dist_info (DistInfo, Optional): rank/world/device (from :func:`setup_distributed`). Default: one CPU process.
        tokens_per_step (int, Optional): global tokens per optimizer step, for ``tokens``/``tokens_per_s``. Default: 0.
        progress (bool, Optional): tqdm bar on rank 0. Default: False.
        fresh, extend (bool, Optional): see :class:`innerloop.runs.Run`. Default: False.
        resolved (dict, Optional): what ``config.json`` records under ``"resolved"``. Default: None.
    """

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, batch_fn: Callable[[int], tuple[Tensor, Tensor]],
        loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor], eval_fn: Callable[[nn.Module], dict] | None = None,
        callbacks: Sequence[Callback] = (), dist_info: DistInfo | None = None, tokens_per_step: int = 0,
        progress: bool = False, fresh: bool = False, extend: bool = False, resolved: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.cfg, self.batch_fn, self.loss_fn, self.eval_fn = cfg, batch_fn, loss_fn, eval_fn
        self.dist = dist_info or DistInfo(device=str(next(model.parameters()).device))
        self.out = Path(cfg.out)
        self._resolved = dict(resolved or {})
        fused = self.dist.device.startswith("cuda")
        check_parallel(cfg.parallel, self.dist.world_size)
        self.fsdp = cfg.parallel == "fsdp"
        groups = _param_groups(model, cfg.weight_decay)
        self.optimizer: torch.optim.Optimizer | None = None
        if self.fsdp:  # sharded, and its optimizer built, in resume(): after a checkpoint is read into the whole model
            names = {id(p): n for n, p in model.named_parameters()}
            self._fsdp_groups = [[names[id(p)] for p in g["params"]] for g in groups]
            self._group_options = [{k: v for k, v in g.items() if k != "params"} for g in groups]
            self._aliases = tied_aliases(model)
            optimizer_state: Any = FullOptimizerState(self._fsdp_groups)
        else:
            self.optimizer = optimizer_state = torch.optim.AdamW(
                groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, **({"fused": True} if fused else {})
            )
        run = Run(cfg.out, cfg.to_dict(), steps_key="steps", resume_free=RESUME_FREE_KEYS, fresh=fresh, extend=extend,
                  is_main=self.dist.is_main, keep=cfg.keep_checkpoints, command="innerloop lm train",
                  upgrade=TrainConfig.upgrade_dict)  # fmt: skip
        super().__init__(
            model, run, cfg.steps, stateful={"optimizer": optimizer_state}, log_fields=LOG_FIELDS,
            average=("loss",), log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
            eval_every=cfg.eval_every, max_seconds=cfg.max_seconds, callbacks=callbacks, is_main=self.dist.is_main,
            progress=progress, desc=cfg.model.mixer, tokens_per_step=tokens_per_step, verbose=progress,
            eval_keys=EVAL_KEYS if eval_fn is not None else (),
            diverged_hint=f"Try a lower --lr (now {cfg.lr}), a smaller --grad-clip, or fp32 (--dtype fp32).",
        )  # fmt: skip
        self.ckpt_dir = run.ckpt_dir
        self.ddp_model = model
        if self.dist.enabled and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch.device(self.dist.device).index] if fused else None
            self.ddp_model = DistributedDataParallel(model, device_ids=ids)
        bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and self.dist.device.startswith("cuda"))
        self.autocast = dict(device_type=torch.device(self.dist.device).type, dtype=torch.bfloat16, enabled=bf16)

    def resolved_config(self) -> dict[str, Any]:
        return self._resolved

    def _tensorboard_dir(self) -> Path | None:
        return self.out / "tb" if self.cfg.tensorboard else None

    def resume(self, map_location: Any = None) -> bool:
        if not self.fsdp:
            return super().resume(self.dist.device if map_location is None else map_location)
        resumed = super().resume("cpu" if map_location is None else map_location)  # into the whole model
        if self.optimizer is None:
            self._shard()
        return resumed

    def _shard(self) -> None:
        """FSDP: shard the model per block, build AdamW over the shards, hand it any optimizer state resumed."""
        from .fsdp import shard_model

        cfg = self.cfg
        shard_model(self.model, torch.bfloat16 if self.autocast["enabled"] else None)
        params = dict(self.model.named_parameters())
        # the groups by name: the weight-decay marks on parameters do not survive their replacement by shards
        groups = [{**g, "params": [params[n] for n in names]}
                  for g, names in zip(self._group_options, self._fsdp_groups)]  # fmt: skip
        # AdamW's default (foreach) implementation: the fused one is not relied on for DTensor parameters
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
        self.stateful["optimizer"].attach(self.model, self.optimizer)

    def save(self) -> Path | None:
        if not self.fsdp or self.run is None:
            return super().save()
        # FSDP: gathering the whole weights and optimizer state is a collective every rank joins; rank 0 writes
        weights = full_model_state(self.model, self._aliases)
        state = self.state_dict()
        if not self.is_main:
            return None
        self.last_saved = self.run.save(self.step, StateDictModule(weights), state)
        return self.last_saved

    def evaluate(self) -> dict[str, float]:
        if not self.fsdp or self.is_main:
            return super().evaluate()
        # FSDP: the sharded forward all-gathers weights, so every rank runs the evaluation; only rank 0 reports it.
        # The others keep the numbers too: the loop decides from ``last_eval`` (and ``eval_keys``) whether to evaluate
        # again.
        self.evaluate_now()
        return {}

    def interrupt_requested(self, local: bool) -> bool:
        if not self.dist.enabled:
            return local
        # every rank stops after the same step, for Ctrl-C and for --max-seconds (the ranks' clocks agree on the
        # slowest one's training time): a rank that stopped alone would leave the others waiting in a collective
        flag = torch.tensor([1.0 if local else 0.0, self.train_seconds], device=self.dist.device, dtype=torch.float64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.train_seconds = float(flag[1])
        return bool(flag[0])

    # ---- one optimizer step
    def train_step(self, step: int) -> dict[str, float]:
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
            with contextlib.nullcontext() if sync else self._accumulating():
                with torch.autocast(**self.autocast):
                    loss = self.loss_fn(self.ddp_model, x, y) / cfg.grad_accum
                loss.backward()
            total += loss.detach().float()
        if self.dist.enabled:
            dist.all_reduce(total)
            total /= self.dist.world_size
        loss_value = total.item()
        try:
            check_finite(loss_value, "loss", self, step)
            if cfg.grad_clip > 0:  # over DTensor gradients (FSDP) the norm is of the whole, sharded gradient
                norm = as_float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
            else:  # the norm clip_grad_norm_ reports, with one host sync (sharded FSDP gradients too)
                norm = total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
            check_finite(norm, "gradient norm", self, step)
        except TrainingDivergedError:
            self.optimizer.zero_grad(set_to_none=True)
            raise
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_value, "lr": lr, "grad_norm": norm}

    @contextlib.contextmanager
    def _accumulating(self) -> Iterator[None]:
        """A micro-batch before the last: gradients accumulate locally, without communication."""
        if not self.fsdp:
            with self.ddp_model.no_sync():
                yield
            return
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    def evaluate_metrics(self) -> dict[str, float]:
        if self.eval_fn is None:
            return {}
        with torch.autocast(**self.autocast):
            return self.eval_fn(self.model)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "data": {"sampler": "pure function of (seed, step)", "seed": self.cfg.seed, "next_step": self.step}}
