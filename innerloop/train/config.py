"""``TrainConfig``: everything that defines a language-model run, the model's :class:`LMConfig` nested inside it
(saved as ``config.json`` and loaded back as is; the command-line flags come from both dataclasses)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, ClassVar

from innerloop._config import DictConfig
from innerloop.layers.modes import upgrade_saved_mode
from innerloop.models.lm import LMConfig

from .fsdp import PARALLEL

__all__ = ["MODEL_DEFAULTS", "RESUME_FREE_KEYS", "TrainConfig"]

TOKENIZERS, DTYPES = ("bytes", "bpe"), ("auto", "fp32", "bf16")
MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(LMConfig))
# The model of a run when nothing else is said: a small byte-level LM (LMConfig's own defaults are the paper's 125m).
# ``intermediate_size`` unset means 2 * hidden_size, ``vocab_size`` unset the tokenizer's (256 bytes, 2048 bpe).
MODEL_DEFAULTS: dict[str, Any] = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
_BPE_VOCAB = 2048
# the value older versions stored for "unset" in config.json (read back as None)
_LEGACY_UNSET = {"intermediate_size": 0, "ttt_base_lr": 0.0, "vocab_size": 0, "ttt_lr_warmup_steps": -1}

# Keys that may change when a run resumes: they do not change what is computed, only how it is run or reported.
# ``model.mode`` picks the op path (same math, another kernel): a run saved with the old default "chunk" resumes as
# "auto". ``parallel`` changes only how the work is split over processes (checkpoints are the same). Nested keys are
# dotted.
RESUME_FREE_KEYS = frozenset({"out", "log_every", "checkpoint_every", "keep_checkpoints", "max_seconds",
                              "tensorboard", "eval_batches", "eval_every", "progress", "cache_dir",
                              "model.mode", "parallel"})  # fmt: skip


def model_config(tokenizer: str = "bytes", **options: Any) -> LMConfig:
    """The :class:`LMConfig` of a training run: ``options`` (LMConfig fields; None = the run's default) on top of
    :data:`MODEL_DEFAULTS`, ``intermediate_size`` 2 * hidden_size and ``vocab_size`` the tokenizer's when unset.

    Examples:
        >>> m = model_config(hidden_size=64, mixer="attention")
        >>> m.hidden_size, m.intermediate_size, m.vocab_size, m.num_hidden_layers
        (64, 128, 256, 2)
    """
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - MODEL_FIELDS)
    if unknown:
        raise ValueError(f"unknown model options {unknown}; LMConfig has {sorted(MODEL_FIELDS)}")
    opts = {**MODEL_DEFAULTS, **given}
    opts.setdefault("intermediate_size", 2 * opts["hidden_size"])
    if tokenizer == "bytes" and opts.setdefault("vocab_size", 256) != 256:
        raise ValueError(f"--tokenizer bytes has vocab_size 256, got --vocab-size {opts['vocab_size']}")
    if tokenizer == "bpe" and not 256 < opts.setdefault("vocab_size", _BPE_VOCAB) < 2**32:
        raise ValueError(f"--tokenizer bpe needs --vocab-size > 256 (256 bytes + merges), got {opts['vocab_size']}")
    return LMConfig(**opts)


@dataclass
class TrainConfig(DictConfig):
    """A byte/token LM training run: the model (:class:`LMConfig`, nested) and how it is trained.

    ``batch_size`` is the *global* batch (sequences per step): tokens per optimizer step are ``batch_size * context``;
    each of ``world_size * grad_accum`` micro-batches holds ``batch_size / (world_size * grad_accum)`` sequences.
    ``None`` means "the default" wherever a field allows it (the comment says what that is). The trailing comments
    are also the ``--help`` of ``innerloop lm train``. Build one from flat options (as the command line does) with
    :meth:`from_flat`; ``model.vocab_size`` is the requested vocabulary (a BPE tokenizer may end smaller on a tiny
    corpus: the model is then built with the tokenizer's size, :meth:`model_for`).

    Examples:
        >>> cfg = TrainConfig.from_flat(mixer="attention", hidden_size=64, steps=10)
        >>> cfg.model.mixer, cfg.model.intermediate_size, cfg.steps
        ('attention', 128, 10)
        >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    # allowed values of the fields with a fixed set (the command line offers them as choices)
    CHOICES: ClassVar[dict[str, Collection[str]]] = {"tokenizer": TOKENIZERS, "dtype": DTYPES, "parallel": PARALLEL}

    model: LMConfig = field(default_factory=model_config)  # the model; default: a small byte LM (MODEL_DEFAULTS)
    tokenizer: str = "bytes"  # bytes (vocab 256) or bpe (trained locally on the training split; needs `tokenizers`)
    # data
    data: str = ""  # a .txt file or a folder of .txt files (documents); default: the bundled tiny-shakespeare
    gutenberg: bool = False  # strip Project Gutenberg headers/licence footers from every document (books)
    val_fraction: float = 0.1  # last fraction (of the bytes, or of the documents for a folder) held out
    context: int = 128  # training sequence length T (tokens)
    cache_dir: str = ""  # token cache folder ("" = $INNERLOOP_CACHE/tokens, default ~/.cache/innerloop/tokens, shared)
    # optimisation
    steps: int = 1000  # optimizer steps
    batch_size: int = 16  # sequences per optimizer step (global, over all processes and accumulation steps)
    grad_accum: int = 1  # micro-batches per optimizer step (gradient accumulation)
    lr: float = 3e-3  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50  # linear learning-rate warm-up steps
    weight_decay: float = 0.1  # AdamW decay, on what the authors decay (innerloop.models._optim_groups)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    adam_eps: float = 1e-8  # AdamW epsilon
    grad_clip: float = 1.0  # clip the gradient norm to this; 0 = off
    ttt_lr_warmup_steps: int | None = None  # TTT inner-LR warm-up; default: 10% of steps for ttt_mlp, else 0
    ttt_base_lr_init: float = 0.01  # inner base LR at step 0 of that warm-up
    # run
    seed: int = 0  # seed of the initialisation and of the batch order
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    dtype: str = "auto"  # compute precision: auto (bf16 autocast on GPU, fp32 on CPU), fp32 or bf16
    parallel: str = "ddp"  # under torchrun: ddp (whole model per process) or fsdp (weights, grads, AdamW sharded)
    eval_every: int = 200  # steps between validation evaluations; 0 = only at the end
    eval_batches: int = 8  # validation windows = eval_batches * batch_size
    log_every: int = 10  # steps between log.csv rows
    checkpoint_every: int = 200  # steps between checkpoints (also written at the end and on a time limit)
    keep_checkpoints: int = 2  # checkpoints kept on disk (the oldest are deleted)
    max_seconds: float = 0.0  # stop (and checkpoint) after this much training time; 0 = no limit; resumable
    tensorboard: bool = False  # also log to <out>/tb (needs the tensorboard package)
    out: str = "runs/lm/default"  # run folder: config.json, log.csv, checkpoints/ (again with the same one resumes)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = LMConfig.from_dict(self.model)
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be 'bytes' (byte-level, vocab 256) or 'bpe', got {self.tokenizer!r}")
        if self.tokenizer == "bytes" and self.model.vocab_size != 256:
            raise ValueError(f"--tokenizer bytes has vocab_size 256, got --vocab-size {self.model.vocab_size}")
        if self.tokenizer == "bpe" and not 256 < self.model.vocab_size < 2**32:
            raise ValueError(f"--tokenizer bpe needs --vocab-size > 256 (256 bytes + merges), got "
                             f"{self.model.vocab_size}")  # fmt: skip
        positive = ("context", "steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "eval_batches",
                    "keep_checkpoints")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "max_seconds", "eval_every", "seed"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.model.mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {self.model.mini_batch_size}")
        if self.model.ttt_base_lr is not None and not self.model.ttt_base_lr > 0:
            raise ValueError(f"ttt_base_lr must be > 0, or unset (None) for the mixer's default; got "
                             f"{self.model.ttt_base_lr}")  # fmt: skip
        if self.ttt_lr_warmup_steps is not None and self.ttt_lr_warmup_steps < 0:
            raise ValueError(f"ttt_lr_warmup_steps must be >= 0, or unset (None) for 10% of steps for ttt_mlp, "
                             f"else 0; got {self.ttt_lr_warmup_steps}")  # fmt: skip
        if not 0 < self.lr < math.inf or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need a finite lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}, {self.min_lr_ratio}")
        if not 0 < self.adam_eps < math.inf:  # inf: every update is 0 (the run trains nothing); 0 can divide by 0
            raise ValueError(f"adam_eps must be a finite number > 0, got {self.adam_eps}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"AdamW's betas must lie in [0, 1), got beta1 {self.beta1}, beta2 {self.beta2}")
        for name in ("weight_decay", "ttt_base_lr_init"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto, fp32 or bf16, got {self.dtype!r}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"parallel must be 'ddp' or 'fsdp' (FSDP2, under torchrun), got {self.parallel!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by grad_accum {self.grad_accum}")

    @classmethod
    def from_flat(cls, **options: Any) -> TrainConfig:
        """A config from flat options, as the command line gives them: LMConfig's fields go to :attr:`model`
        (:func:`model_config`: the run's model defaults), the others are this config's; None = the default."""
        run_fields = {f.name for f in dataclasses.fields(cls)} - {"model"}
        unknown = sorted(set(options) - run_fields - MODEL_FIELDS)
        if unknown:
            raise ValueError(f"unknown TrainConfig options {unknown}")
        run = {k: v for k, v in options.items() if k in run_fields and v is not None}
        model = model_config(run.get("tokenizer", "bytes"), **{k: v for k, v in options.items() if k in MODEL_FIELDS})
        return cls(model=model, **run)

    @classmethod
    def upgrade_dict(cls, d: dict[str, Any]) -> dict[str, Any]:
        """``d`` (a saved config) as today's versions write it: the flat configs of older versions get their model
        nested (their placeholders 0, 0.0 or -1 read as None), and a saved ``mode='chunk'`` (the old default) reads as
        ``'auto'``."""
        d = {k: None if k in _LEGACY_UNSET and v == _LEGACY_UNSET[k] else v for k, v in d.items()}
        if "model" not in d:  # flat: model fields beside the run's
            model = {k: d.pop(k) for k in list(d) if k in MODEL_FIELDS}
            d["model"] = model_config(d.get("tokenizer", "bytes"), **upgrade_saved_mode(model)).to_dict()
        elif isinstance(d["model"], dict):
            d["model"] = upgrade_saved_mode(d["model"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict` (nested); also reads older versions' ``config.json`` (:meth:`upgrade_dict`)."""
        return super().from_dict(cls.upgrade_dict(d))

    def model_for(self, vocab_size: int | None = None) -> LMConfig:
        """The model's :class:`LMConfig` with the tokenizer's actual ``vocab_size`` (None: the requested one)."""
        return self.model if vocab_size is None else dataclasses.replace(self.model, vocab_size=vocab_size)

    def micro_batch_size(self, world_size: int = 1) -> int:
        """Sequences per forward pass: ``batch_size / (world_size * grad_accum)`` (at least 1); evaluation uses it too,
        so what fits in memory for training fits for evaluation."""
        return max(self.batch_size // (world_size * self.grad_accum), 1)

    def resolved_ttt_warmup(self) -> int:
        """TTT inner-LR warm-up steps: ``ttt_lr_warmup_steps``, or 10% of ``steps`` for ttt_mlp and 0 otherwise."""
        if self.ttt_lr_warmup_steps is not None:
            return self.ttt_lr_warmup_steps
        return self.steps // 10 if self.model.mixer == "ttt_mlp" else 0
