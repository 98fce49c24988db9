"""``TrainConfig``: everything that defines a language-model run (saved as ``config.json``; CLI flags come from it)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, ClassVar

from innerloop._config import DictConfig
from innerloop.errors import check_choice
from innerloop.layers import MIXERS
from innerloop.layers.modes import resolve_mode, upgrade_saved_mode
from innerloop.models.lm import LMConfig

__all__ = ["RESUME_FREE_KEYS", "TrainConfig"]

BACKBONES, TOKENIZERS, DTYPES = ("transformer", "mamba"), ("bytes", "bpe"), ("auto", "fp32", "bf16")
# optional numeric fields: the values they need when set, and what unset (None) means
_UNSET = {"intermediate_size": (">= 1", "2 * hidden_size"), "ttt_base_lr": ("> 0", "the mixer's default"),
          "ttt_lr_warmup_steps": (">= 0", "10% of steps for ttt_mlp, else 0")}  # fmt: skip
# the value older versions stored for "unset" in config.json (read back as None)
_LEGACY_UNSET = {"intermediate_size": 0, "ttt_base_lr": 0.0, "vocab_size": 0, "ttt_lr_warmup_steps": -1}

# Keys that may change when a run resumes: they do not change what is computed, only how it is run or reported.
# ``mode`` picks the op path (same math, another kernel): a run saved with the old default "chunk" resumes as "auto".
RESUME_FREE_KEYS = frozenset({"out", "log_every", "checkpoint_every", "keep_checkpoints", "max_seconds",
                              "tensorboard", "eval_batches", "eval_every", "progress", "cache_dir",
                              "mode"})  # fmt: skip


@dataclass
class TrainConfig(DictConfig):
    """A byte/token LM training run. Sizes are the model's; ``batch_size`` is the *global* batch (sequences per step).

    Tokens per optimizer step are ``batch_size * context``; each of ``world_size * grad_accum`` micro-batches holds
    ``batch_size / (world_size * grad_accum)`` sequences. ``None`` means "the default" wherever a field allows it
    (the comment says what that is). The trailing comments are also the ``--help`` of ``innerloop lm train``.
    """

    # allowed values of the fields with a fixed set (the command line offers them as choices)
    CHOICES: ClassVar[dict[str, Collection[str]]] = {
        "mixer": MIXERS, "backbone": BACKBONES, "tokenizer": TOKENIZERS, "dtype": DTYPES,
    }  # fmt: skip

    # model (-> LMConfig)
    mixer: str = "ttt_linear"  # sequence mixer of every block (any registered one)
    backbone: str = "transformer"  # block layout: transformer (mixer + MLP) or mamba (conv + mixer + MLP)
    hidden_size: int = 128  # model width
    intermediate_size: int | None = None  # SwiGLU MLP width; default: 2 * hidden_size
    num_hidden_layers: int = 2  # number of blocks
    num_attention_heads: int = 4  # heads of the mixer (attention and TTT)
    mini_batch_size: int = 16  # TTT inner-loop mini-batch (tokens per inner step)
    ttt_base_lr: float | None = None  # TTT inner learning rate; default: the mixer's (1.0 TTT-Linear, 0.1 TTT-MLP)
    mode: str = "auto"  # mixer op path: auto | naive | chunk | recurrent | fused (innerloop.layers.modes)
    tokenizer: str = "bytes"  # bytes (vocab 256) or bpe (trained locally on the training split; needs `tokenizers`)
    vocab_size: int | None = None  # 256 for bytes; bpe: > 256, default 2048 (may end smaller on a tiny corpus)
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
    eval_every: int = 200  # steps between validation evaluations; 0 = only at the end
    eval_batches: int = 8  # validation windows = eval_batches * batch_size
    log_every: int = 10  # steps between log.csv rows
    checkpoint_every: int = 200  # steps between checkpoints (also written at the end and on a time limit)
    keep_checkpoints: int = 2  # checkpoints kept on disk (the oldest are deleted)
    max_seconds: float = 0.0  # stop (and checkpoint) after this much training time; 0 = no limit; resumable
    tensorboard: bool = False  # also log to <out>/tb (needs the tensorboard package)
    out: str = "runs/lm/default"  # run folder: config.json, log.csv, checkpoints/ (again with the same one resumes)

    def __post_init__(self) -> None:
        if self.mixer not in MIXERS:
            raise ValueError(f"unknown mixer {self.mixer!r}; known mixers: {sorted(MIXERS)}")
        check_choice("backbone", self.backbone, BACKBONES)
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be 'bytes' (byte-level, vocab 256) or 'bpe', got {self.tokenizer!r}")
        if self.tokenizer == "bytes" and self.vocab_size not in (None, 256):
            raise ValueError(f"--tokenizer bytes has vocab_size 256, got --vocab-size {self.vocab_size}")
        if self.tokenizer == "bpe" and self.vocab_size is not None and not 256 < self.vocab_size < 2**32:
            raise ValueError(f"--tokenizer bpe needs --vocab-size > 256 (256 bytes + merges), got {self.vocab_size}")
        positive = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mini_batch_size", "context", "steps",
                    "batch_size", "grad_accum", "log_every", "checkpoint_every", "eval_batches", "keep_checkpoints")
        for name in positive:  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        bad = {"intermediate_size": self.intermediate_size is not None and self.intermediate_size < 1,
               "ttt_base_lr": self.ttt_base_lr is not None and not self.ttt_base_lr > 0,
               "ttt_lr_warmup_steps": self.ttt_lr_warmup_steps is not None and self.ttt_lr_warmup_steps < 0}
        for name in (n for n, b in bad.items() if b):  # fmt: skip
            need, meaning = _UNSET[name]
            raise ValueError(f"{name} must be {need}, or unset (None) for {meaning}; got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}, {self.min_lr_ratio}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto, fp32 or bf16, got {self.dtype!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by grad_accum {self.grad_accum}")
        cls = MIXERS[self.mixer]
        resolve_mode(self.mode, cls.modes, f"mixer {self.mixer!r}", getattr(cls, "mode_aliases", None))

    @classmethod
    def upgrade_dict(cls, d: dict[str, Any]) -> dict[str, Any]:
        """``d`` (a saved config) as today's versions write it: the placeholders older versions wrote for "the
        default" (0, 0.0 or -1) become ``None``, today's only "use the default" value, and a saved ``mode='chunk'``
        (the old default) reads as ``'auto'``."""
        d = upgrade_saved_mode(d)
        return {k: None if k in _LEGACY_UNSET and v == _LEGACY_UNSET[k] else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; also reads the ``config.json`` of older versions (see :meth:`upgrade_dict`)."""
        return super().from_dict(cls.upgrade_dict(d))

    def resolved_vocab_size(self) -> int:
        """Requested vocabulary: 256 for bytes, ``vocab_size`` (default 2048) for BPE."""
        if self.tokenizer == "bytes":
            return 256
        return self.vocab_size or 2048

    def lm_config(self, vocab_size: int | None = None) -> LMConfig:
        """The model's :class:`LMConfig` (validated there: sizes, heads, backbone).

        Args:
            vocab_size (int, Optional): the tokenizer's actual size. Default: None (:meth:`resolved_vocab_size`).
        """
        vocab_size = vocab_size or self.resolved_vocab_size()
        return LMConfig(
            vocab_size=vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size or 2 * self.hidden_size,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            mixer=self.mixer, backbone=self.backbone, mini_batch_size=self.mini_batch_size,
            ttt_base_lr=self.ttt_base_lr, mode=self.mode,
        )  # fmt: skip

    def resolved_ttt_warmup(self) -> int:
        """TTT inner-LR warm-up steps: ``ttt_lr_warmup_steps``, or 10% of ``steps`` for ttt_mlp and 0 otherwise."""
        if self.ttt_lr_warmup_steps is not None:
            return self.ttt_lr_warmup_steps
        return self.steps // 10 if self.mixer == "ttt_mlp" else 0
