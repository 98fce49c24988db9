"""``TrainConfig``: everything that defines a language-model run (saved as ``config.json``; CLI flags come from it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from innerloop._config import DictConfig
from innerloop.layers import MIXERS
from innerloop.layers.modes import resolve_mode, upgrade_saved_mode
from innerloop.models.lm import LMConfig

__all__ = ["RESUME_FREE_KEYS", "TrainConfig"]

# Keys that may change when a run resumes: they do not change what is computed, only how it is run or reported.
# ``mode`` picks the op path (same math, another kernel): a run saved with the old default "chunk" resumes as "auto".
RESUME_FREE_KEYS = frozenset({"out", "log_every", "checkpoint_every", "keep_checkpoints", "max_seconds",
                              "tensorboard", "eval_batches", "eval_every", "progress", "cache_dir",
                              "mode"})  # fmt: skip


@dataclass
class TrainConfig(DictConfig):
    """A byte/token LM training run. Sizes are the model's; ``batch_size`` is the *global* batch (sequences per step).

    Tokens per optimizer step are ``batch_size * context``; each of ``world_size * grad_accum`` micro-batches holds
    ``batch_size / (world_size * grad_accum)`` sequences.
    """

    # model (-> LMConfig)
    mixer: str = "ttt_linear"  # any registered mixer: innerloop.layers.MIXERS
    backbone: str = "transformer"  # transformer | mamba
    hidden_size: int = 128
    intermediate_size: int = 0  # 0 = 2 * hidden_size (SwiGLU, so ~3x hidden_size^2 weights per MLP... x2)
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    mini_batch_size: int = 16  # TTT inner mini-batch
    ttt_base_lr: float = 0.0  # 0 = the mixer's default (1.0 TTT-Linear, 0.1 TTT-MLP)
    mode: str = "auto"  # mixer op path: auto | naive | chunk | recurrent | fused (innerloop.layers.modes)
    tokenizer: str = "bytes"  # bytes (vocab 256) | bpe (trained locally on the training split; needs `tokenizers`)
    vocab_size: int = 0  # 0 = 256 for bytes, 2048 for bpe; bpe needs > 256 (may end smaller on tiny corpora)
    # data
    data: str = ""  # "" = bundled tiny-shakespeare; else a .txt file or a folder of .txt files (documents)
    gutenberg: bool = False  # strip Project Gutenberg headers/licence footers from every document (books)
    val_fraction: float = 0.1  # last fraction (of the bytes, or of the documents for a folder) held out
    context: int = 128  # training sequence length T (tokens)
    cache_dir: str = ""  # token cache folder ("" = $INNERLOOP_CACHE/tokens, default ~/.cache/innerloop/tokens, shared)
    # optimisation
    steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1  # AdamW decay, on what the authors decay (innerloop.models._optim_groups)
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = off
    ttt_lr_warmup_steps: int = -1  # TTT inner-LR warm-up; -1 = 10% of steps for ttt_mlp (authors' recipe), else 0
    ttt_base_lr_init: float = 0.01  # inner base LR at step 0 of that warm-up
    # run
    seed: int = 0
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    eval_every: int = 200  # steps between validation evaluations (0 = only at the end)
    eval_batches: int = 8  # validation windows = eval_batches * batch_size
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    max_seconds: float = 0.0  # stop (and checkpoint) after this much training time; 0 = no limit; resumable
    tensorboard: bool = False  # also log to <out>/tb (needs the tensorboard package)
    out: str = "runs/lm/default"

    def __post_init__(self) -> None:
        if self.mixer not in MIXERS:
            raise ValueError(f"unknown mixer {self.mixer!r}; known mixers: {sorted(MIXERS)}")
        if self.tokenizer not in ("bytes", "bpe"):
            raise ValueError(f"tokenizer must be 'bytes' (byte-level, vocab 256) or 'bpe', got {self.tokenizer!r}")
        if self.tokenizer == "bytes" and self.vocab_size not in (0, 256):
            raise ValueError(f"--tokenizer bytes has vocab_size 256, got --vocab-size {self.vocab_size}")
        if self.tokenizer == "bpe" and self.vocab_size != 0 and not 256 < self.vocab_size < 2**32:
            raise ValueError(f"--tokenizer bpe needs --vocab-size > 256 (256 bytes + merges), got {self.vocab_size}")
        positive = ("context", "steps", "batch_size", "grad_accum", "log_every", "checkpoint_every", "eval_batches")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}, {self.min_lr_ratio}")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ValueError(f"dtype must be auto, fp32 or bf16, got {self.dtype!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by grad_accum {self.grad_accum}")
        cls = MIXERS[self.mixer]
        resolve_mode(self.mode, cls.modes, f"mixer {self.mixer!r}", getattr(cls, "mode_aliases", None))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; a saved ``mode='chunk'`` (the old default) is read as ``'auto'``."""
        return super().from_dict(upgrade_saved_mode(d))

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
            ttt_base_lr=self.ttt_base_lr or None, mode=self.mode,
        )  # fmt: skip

    def resolved_ttt_warmup(self) -> int:
        if self.ttt_lr_warmup_steps >= 0:
            return self.ttt_lr_warmup_steps
        return self.steps // 10 if self.mixer == "ttt_mlp" else 0
