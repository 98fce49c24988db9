"""``InnerloopConfig``: an :class:`~innerloop.models.lm.LMConfig` as a transformers ``PretrainedConfig``."""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PretrainedConfig

from innerloop.models.lm import LMConfig

MODEL_TYPE = "innerloop"
LM_FIELDS = tuple(f.name for f in dataclasses.fields(LMConfig))
# LMConfig fields that PretrainedConfig also knows (passed to its __init__, which stores them)
_SHARED = ("tie_word_embeddings",)


class InnerloopConfig(PretrainedConfig):
    """The config of an :class:`InnerloopForCausalLM`: every :class:`LMConfig` field as a flat attribute (any
    registered mixer, transformer or mamba backbone), plus what transformers keeps (token ids, ``use_cache``).

    Build it from an LMConfig with :meth:`from_lm_config` and back with :meth:`to_lm_config`. The fields are checked
    by LMConfig when the config is made, so a bad value fails at once with LMConfig's message. ``innerloop_run``
    optionally keeps the training run's config (``TrainConfig.to_dict()``) for ``innerloop lm import``.

    Args:
        **kwargs: LMConfig fields (default: LMConfig's, the paper's 125m TTT-Linear) and PretrainedConfig's.

    Examples:
        >>> cfg = InnerloopConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                       num_attention_heads=4, mixer="attention")
        >>> cfg.model_type, cfg.to_lm_config().mixer
        ('innerloop', 'attention')
    """

    model_type = MODEL_TYPE
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(self, innerloop_run: dict[str, Any] | None = None, use_cache: bool = True, **kwargs: Any) -> None:
        lm_kwargs = {k: kwargs.pop(k) for k in LM_FIELDS if k in kwargs and k not in _SHARED}
        tie = kwargs.pop("tie_word_embeddings", LMConfig.tie_word_embeddings)
        lm = LMConfig.from_dict({**lm_kwargs, "tie_word_embeddings": tie})  # validates; 'chunk' -> 'auto'
        for k, v in lm.to_dict().items():
            if k not in _SHARED:
                setattr(self, k, v)
        self.innerloop_run = innerloop_run
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> InnerloopConfig:
        """transformers' ``from_dict``, refusing the config of another model type (transformers only warns)."""
        other = config_dict.get("model_type")
        if other is None and isinstance(config_dict.get("model"), dict):  # config.json of a run directory
            raise ValueError("this is the config.json of an innerloop run directory (innerloop lm train --out), not "
                             "of a transformers model directory: make one with `innerloop lm export --run RUN --to-hf "
                             "DIR` (export_hf in Python) and load or import that")  # fmt: skip
        if other not in (None, MODEL_TYPE):
            raise ValueError(f"this is the config of a {other!r} model, not an innerloop one (model_type "
                             f"{MODEL_TYPE!r}): load it with transformers' AutoModelForCausalLM, or, for the TTT "
                             "authors' checkpoints, innerloop.models.load_official_ttt then export_hf")  # fmt: skip
        return super().from_dict(config_dict, **kwargs)

    def to_lm_config(self) -> LMConfig:
        """The :class:`LMConfig` this config carries (not read as a saved config again: a saved legacy ``mode='chunk'``
        became ``'auto'`` when this config was made, and one from :meth:`from_lm_config` keeps its mode)."""
        return LMConfig(**{k: getattr(self, k) for k in LM_FIELDS})

    @classmethod
    def from_lm_config(cls, config: LMConfig, **kwargs: Any) -> InnerloopConfig:
        """An InnerloopConfig carrying ``config``; ``kwargs`` go to PretrainedConfig (e.g. ``eos_token_id``)."""
        hf_config = cls(**config.to_dict(), **kwargs)
        hf_config.mode = config.mode  # __init__ reads 'chunk' as a saved legacy 'auto'; this config runs what it says
        return hf_config
