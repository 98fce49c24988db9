"""Configuration of the causal LM over any registered sequence mixer (TTT, attention, ...)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, ClassVar

from innerloop._config import DictConfig
from innerloop.errors import check_choice
from innerloop.layers import MIXERS
from innerloop.layers.modes import MODES, resolve_mode, upgrade_saved_mode

BACKBONES = ("transformer", "mamba")

# The paper's sizes (Table 3; docs/backbones.md §4). Llama tokenizer vocabulary.
PRESETS: dict[str, dict[str, int]] = {
    "125m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12),
    "350m": dict(hidden_size=1024, intermediate_size=2736, num_hidden_layers=24, num_attention_heads=16),
    "760m": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16),
    "1b": dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=32),
}


@dataclass
class LMConfig(DictConfig):
    """Causal LM: embedding -> ``num_hidden_layers`` blocks -> RMSNorm -> lm_head.

    Block (``backbone='transformer'``): ``h += mixer(RMSNorm(h)); h += SwiGLU(RMSNorm(h))``.
    ``backbone='mamba'`` adds ``h += CausalConv(RMSNorm(h))`` first and makes TTT mixers share the Q/K projection
    (two causal convs) and gate their output, as in the paper's "(M)" models.

    Each registered mixer declares the fields it takes in its class attribute ``config_options`` (TTT: the TTT
    fields; attention: ``rope_theta``; Mamba: ``conv_kernel``); ``mode`` goes to every mixer; ``mixer_options``
    are passed verbatim on top; one the mixer's constructor does not take, or one that repeats an LMConfig field, is
    an error.

    Args:
        vocab_size (int, Optional): Default: 32000 (Llama tokenizer).
        hidden_size, intermediate_size, num_hidden_layers, num_attention_heads (int, Optional): sizes. Default: 125m.
        rms_norm_eps (float, Optional): Default: ``1e-6``.
        initializer_range (float, Optional): std of the normal init of every Linear and the embedding. Default: 0.02.
        tie_word_embeddings (bool, Optional): lm_head shares the embedding matrix. Default: True.
        mixer (str, Optional): registered mixer name (``innerloop.layers.MIXERS``). Default: ``'ttt_linear'``.
        backbone (str, Optional): ``'transformer'`` or ``'mamba'``. Default: ``'transformer'``.
        mini_batch_size (int, Optional): TTT inner mini-batch. Default: 16.
        ttt_base_lr (float | None, Optional): TTT base inner LR; None = 1.0 (Linear) / 0.1 (MLP). Default: None.
        rope_theta (float, Optional): RoPE base. Default: ``1e4``.
        conv_kernel (int, Optional): kernel of the Mamba-backbone convs. Default: 4.
        pre_conv, share_qk, use_gate (bool | None, Optional): None = ``backbone == 'mamba'``. Default: None.
        mode (str, Optional): op path of the mixer (``innerloop.layers.modes``: ``'auto'``, ``'naive'``,
            ``'chunk'``, ``'recurrent'``, ``'fused'``; each mixer has some of them). A saved config with
            ``'chunk'``, the old default, loads as ``'auto'`` (:meth:`from_dict`). Default: ``'auto'``.
        mixer_options (dict, Optional): extra mixer kwargs. Default: ``{}``.

    Examples:
        >>> cfg = LMConfig.from_preset("125m", backbone="mamba")
        >>> cfg.hidden_size, cfg.pre_conv, cfg.mixer_kwargs()["share_qk"]
        (768, True, True)
    """

    # allowed values of the fields with a fixed set (the command line offers them as choices)
    CHOICES: ClassVar[dict[str, Collection[str]]] = {"mixer": MIXERS, "backbone": BACKBONES, "mode": MODES}

    vocab_size: int = 32000  # token vocabulary (bytes: 256; bpe: the tokenizer's size)
    hidden_size: int = 768  # model width
    intermediate_size: int = 2048  # SwiGLU MLP width
    num_hidden_layers: int = 12  # number of blocks
    num_attention_heads: int = 12  # heads of the mixer (attention and TTT)
    rms_norm_eps: float = 1e-6  # epsilon of the RMSNorms
    initializer_range: float = 0.02  # std of the normal init of every Linear and the embedding
    tie_word_embeddings: bool = True  # the output layer shares the embedding matrix
    mixer: str = "ttt_linear"  # sequence mixer of every block (any registered one)
    backbone: str = "transformer"  # block layout: transformer (mixer + MLP) or mamba (conv + mixer + MLP)
    mini_batch_size: int = 16  # TTT inner-loop mini-batch (tokens per inner step)
    ttt_base_lr: float | None = None  # TTT inner learning rate; default: the mixer's (1.0 TTT-Linear, 0.1 TTT-MLP)
    rope_theta: float = 1e4  # RoPE base (attention and TTT)
    conv_kernel: int = 4  # kernel of the Mamba-backbone causal convolutions
    pre_conv: bool | None = None  # a causal conv before the mixer; default: on for the mamba backbone
    share_qk: bool | None = None  # TTT: Q and K from one projection (two convs); default: on for the mamba backbone
    use_gate: bool | None = None  # TTT: gate the output (GELU); default: on for the mamba backbone
    mode: str = "auto"  # mixer op path: auto | naive | chunk | recurrent | fused (innerloop.layers.modes)
    mixer_options: dict[str, Any] = field(default_factory=dict)  # extra mixer keyword arguments, passed verbatim

    def __post_init__(self) -> None:
        check_choice("backbone", self.backbone, BACKBONES)
        check_choice("mixer", self.mixer, MIXERS)
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.rms_norm_eps < float("inf"):  # < 0, nan: NaN losses; inf: a model that outputs a constant
            raise ValueError(f"rms_norm_eps must be >= 0 and finite, got {self.rms_norm_eps}")
        if not 0 <= self.initializer_range < float("inf"):
            raise ValueError(f"initializer_range (the std of the init) must be >= 0 and finite, got "
                             f"{self.initializer_range}")  # fmt: skip
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_attention_heads {self.num_attention_heads}"
            )
        mamba = self.backbone == "mamba"
        for name in ("pre_conv", "share_qk", "use_gate"):
            if getattr(self, name) is None:
                setattr(self, name, mamba)
        cls = MIXERS[self.mixer]
        resolve_mode(self.mode, cls.modes, f"mixer {self.mixer!r}", getattr(cls, "mode_aliases", None))
        fields = {f.name for f in dataclasses.fields(self)}
        undeclared = [o for o in cls.config_options if o not in fields]
        if undeclared:
            raise ValueError(f"mixer {self.mixer!r} ({cls.__name__}) declares config_options {undeclared} that "
                             f"LMConfig does not have; pass them in mixer_options instead")
        shadowed = sorted(set(self.mixer_options) & fields)
        if shadowed:  # the mixer would run with the option while the config reported the field
            raise ValueError(f"mixer_options {shadowed} repeat LMConfig fields; set the fields themselves "
                             f"(e.g. LMConfig({shadowed[0]}=...)), so that the config says what the model runs")
        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            taken = [n for n, p in params.items() if n not in ("self", "hidden_size", "num_heads")
                     and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            unknown = sorted(set(self.mixer_options) - set(taken))
            if unknown:
                raise ValueError(f"mixer_options {unknown} are not options of mixer {self.mixer!r} "
                                 f"({cls.__name__}); it takes {taken}")

    def mixer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``build_mixer(self.mixer, hidden_size, num_attention_heads, **kwargs)``: the
        fields the mixer declares in ``config_options``, ``mode``, then ``mixer_options`` on top."""
        kwargs = {name: getattr(self, name) for name in MIXERS[self.mixer].config_options}
        return {**kwargs, "mode": self.mode, **self.mixer_options}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LMConfig:
        """Inverse of :meth:`to_dict`; a saved ``mode='chunk'`` (the old default) is read as ``'auto'``, which
        computes what it did (``innerloop.layers.modes.upgrade_saved_mode``)."""
        return super().from_dict(upgrade_saved_mode(d))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> LMConfig:
        """A config with the paper's sizes for ``name`` (``PRESETS``) and ``overrides`` on top."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})
