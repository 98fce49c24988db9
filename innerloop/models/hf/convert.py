"""innerloop ``CausalLM`` <-> a Hub-layout directory (``config.json``, ``model.safetensors``, generation config).

Any ``CausalLM`` exports the same way: a trained run's (``innerloop lm export``), one built by
:func:`innerloop.models.load_official_ttt` from the TTT authors' checkpoint, or a fresh one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from innerloop.models.lm import CausalLM

from .configuration import InnerloopConfig
from .modeling import InnerloopForCausalLM

__all__ = ["TOKENIZER_FILE", "export_hf", "load_hf_as_causal_lm"]

TOKENIZER_FILE = "tokenizer.json"  # innerloop's BPE tokenizer is a Hugging Face `tokenizers` file


def export_hf(model: CausalLM, out: str | Path, *, tokenizer_file: str | Path | None = None,
              innerloop_run: dict[str, Any] | None = None, **config_kwargs: Any) -> Path:  # fmt: skip
    """Write ``model`` as a transformers model directory that ``AutoModelForCausalLM.from_pretrained(out)`` loads.

    Args:
        model (CausalLM): any innerloop LM (its weights are saved as they are, in safetensors).
        out (str | Path): the directory (created).
        tokenizer_file (str | Path, Optional): a ``tokenizer.json`` to copy next to the weights (a BPE run's).
            Default: None.
        innerloop_run (dict, Optional): the training run's config, kept in ``config.json`` for the way back.
            Default: None.
        **config_kwargs: more InnerloopConfig / PretrainedConfig fields (e.g. ``eos_token_id``).
    Returns:
        Path: ``out``.
    """
    if not isinstance(model, CausalLM):
        raise TypeError(f"export_hf takes an innerloop CausalLM, got {type(model).__name__}")
    out = Path(out)
    hf = InnerloopForCausalLM.from_causal_lm(model, innerloop_run=innerloop_run, **config_kwargs)
    hf.save_pretrained(out)
    if tokenizer_file is not None:
        shutil.copyfile(tokenizer_file, out / TOKENIZER_FILE)
    return out


def load_hf_as_causal_lm(path: str | Path, **kwargs: Any) -> tuple[CausalLM, InnerloopConfig]:
    """The ``CausalLM`` and config saved in transformers directory ``path`` (``kwargs`` go to ``from_pretrained``)."""
    hf = InnerloopForCausalLM.from_pretrained(path, **kwargs)
    return hf.to_causal_lm(), hf.config
