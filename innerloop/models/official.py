"""Load checkpoints of the TTT authors' PyTorch model (``TTTForCausalLM``, ttt-lm-pytorch) into :class:`CausalLM`.

The authors' layer is reproduced numerically (``docs/ttt.md`` §12), so a converted model gives the same logits;
``scripts/parity_official.py`` checks this side by side against their code. No ``transformers`` needed here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .lm import CausalLM, LMConfig

# The authors' TTTConfig fields and defaults (ttt.py L149-207). Missing fields take these values, as TTTConfig(**d).
# Fields with no effect on the forward pass (caching, generation ids, memory, init, tensor-parallel slicing) are
# accepted and ignored: max_position_embeddings, initializer_range, use_cache, *_token_id, pretraining_tp, ...
OFFICIAL_DEFAULTS: dict[str, Any] = dict(
    vocab_size=32000, hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=32,
    hidden_act="silu", max_position_embeddings=2048, initializer_range=0.02, rms_norm_eps=1e-6, use_cache=False,
    pad_token_id=None, bos_token_id=1, eos_token_id=2, pretraining_tp=1, tie_word_embeddings=True, rope_theta=10000.0,
    use_gate=False, share_qk=False, ttt_layer_type="linear", ttt_base_lr=1.0, mini_batch_size=16, pre_conv=False,
    conv_kernel=4, scan_checkpoint_group_size=0,
)
# Generic keys every HF PretrainedConfig.to_dict() carries; none of them matters for the forward pass.
_HF_GENERIC = {
    "return_dict", "output_hidden_states", "output_attentions", "torchscript", "torch_dtype", "dtype",
    "use_bfloat16", "tf_legacy_loss", "pruned_heads", "tie_encoder_decoder", "is_decoder", "is_encoder_decoder",
    "cross_attention_hidden_size", "add_cross_attention", "chunk_size_feed_forward", "architectures",
    "finetuning_task", "id2label", "label2id", "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id",
    "task_specific_params", "problem_type", "transformers_version", "model_type", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k",
    "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "output_past",
}
# Non-persistent buffers that some exports still contain; recomputed by our layers, so ignored.
_IGNORED_KEY = re.compile(r"(\.token_idx|\.rotary_emb\.inv_freq)$")


def official_to_lm_config(config: Mapping[str, Any] | Any, mode: str = "auto") -> LMConfig:
    """Translate the authors' ``TTTConfig`` (dict or object with ``to_dict()``) to an :class:`LMConfig`.

    Raises:
        ValueError: listing unknown keys and unsupported values.
    """
    if not isinstance(config, Mapping):
        if not hasattr(config, "to_dict"):
            raise TypeError(f"config must be a dict of TTTConfig fields, got {type(config).__name__}")
        config = config.to_dict()
    unknown = sorted(k for k in config if k not in OFFICIAL_DEFAULTS and k not in _HF_GENERIC and not k.startswith("_"))
    c = {**OFFICIAL_DEFAULTS, **{k: v for k, v in config.items() if k in OFFICIAL_DEFAULTS}}
    problems = [f"unknown config keys {unknown}"] if unknown else []
    if c["ttt_layer_type"] not in ("linear", "mlp"):
        problems.append(f"ttt_layer_type must be 'linear' or 'mlp', got {c['ttt_layer_type']!r}")
    if c["hidden_act"] != "silu":
        problems.append(f"hidden_act must be 'silu' (SwiGLU), got {c['hidden_act']!r}")
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "mini_batch_size", "conv_kernel"):
        if not isinstance(c[k], int) or isinstance(c[k], bool) or c[k] < 1:
            problems.append(f"{k} must be a positive int, got {c[k]!r}")
    for k in ("use_gate", "share_qk", "pre_conv", "tie_word_embeddings"):
        if not isinstance(c[k], bool):
            problems.append(f"{k} must be a bool, got {c[k]!r}")
    H, C = c["num_attention_heads"], c["hidden_size"]
    sizes_ok = all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (H, C))
    if sizes_ok and (C % H or (C // H) % 2):  # checked with the other problems, so one error lists them all
        problems.append(f"hidden_size {C} / num_attention_heads {H} must give an even integer head_dim")
    if problems:
        raise ValueError("unsupported official TTT config:\n  " + "\n  ".join(problems))
    return LMConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
        rms_norm_eps=float(c["rms_norm_eps"]), initializer_range=float(c["initializer_range"]),
        tie_word_embeddings=c["tie_word_embeddings"], mixer=f"ttt_{c['ttt_layer_type']}",
        backbone="mamba" if c["pre_conv"] else "transformer", mini_batch_size=c["mini_batch_size"],
        ttt_base_lr=float(c["ttt_base_lr"]), rope_theta=float(c["rope_theta"]), conv_kernel=c["conv_kernel"],
        pre_conv=c["pre_conv"], share_qk=c["share_qk"], use_gate=c["use_gate"], mode=mode,
    )


# Per-block renames, official -> ours (first match wins; the more specific prefixes come first).
_BLOCK_RENAMES = (
    ("seq_modeling_block.conv_q.", "mixer.conv_q.conv."), ("seq_modeling_block.conv_k.", "mixer.conv_k.conv."),
    ("seq_modeling_block.", "mixer."), ("conv.norm.", "conv_norm."), ("conv.conv.", "conv.conv."), ("mlp.", "mlp."),
    ("seq_norm.", "seq_norm."), ("ffn_norm.", "ffn_norm."),
)


def official_key_to_ours(key: str) -> str | None:
    """Our parameter name for an official ``TTTForCausalLM`` state-dict key (None if it is not one we know)."""
    if key == "lm_head.weight":
        return key
    m = re.fullmatch(r"model\.(embed_tokens\.weight|norm\.weight)", key)
    if m:
        return m.group(1)
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
    if not m:
        return None
    i, rest = m.groups()
    for src, dst in _BLOCK_RENAMES:
        if rest.startswith(src):
            return f"layers.{i}.{dst}{rest[len(src):]}"
    return None


def ours_to_official_key(name: str) -> str:
    """Inverse of :func:`official_key_to_ours` (used to name missing keys in the official layout)."""
    if name in ("embed_tokens.weight", "norm.weight"):
        return f"model.{name}"
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", name)
    if not m:
        return name
    i, rest = m.groups()
    for src, dst in _BLOCK_RENAMES:
        if rest.startswith(dst) and not (dst == "mixer." and rest.startswith(("mixer.conv_q.", "mixer.conv_k."))):
            return f"model.layers.{i}.{src}{rest[len(dst):]}"
    return name


def load_official_ttt(
    config: Mapping[str, Any] | Any, state_dict: Mapping[str, Tensor], mode: str = "auto",
    dtype: torch.dtype = torch.float32,
) -> CausalLM:
    """Build a :class:`CausalLM` equal to the authors' ``TTTForCausalLM`` with ``config`` and ``state_dict``.

    Both backbones (``pre_conv``/``share_qk``/``use_gate``) and both inner models (``ttt_layer_type``) are supported.

    Args:
        config (dict | TTTConfig): the authors' config fields (``hidden_size``, ``ttt_layer_type``, ``pre_conv``, ...);
            missing fields take ``TTTConfig`` defaults.
        state_dict (Mapping[str, Tensor]): keys as ``TTTForCausalLM.state_dict()`` (``model.embed_tokens.weight``,
            ``model.layers.N.seq_modeling_block.W1``, ..., ``lm_head.weight``; the latter optional when tied).
        mode (str, Optional): TTT op path of the built model (``innerloop.layers.modes``). Default: ``'auto'``.
        dtype (torch.dtype, Optional): parameter dtype of the built model. Default: ``torch.float32``.
    Returns:
        CausalLM: in eval mode; ``model(input_ids).logits`` ``[B, T, V]`` matches the authors' logits.
    Raises:
        TypeError: when ``state_dict`` is not a mapping.
        ValueError: for an empty state dict, or listing unknown keys, missing keys, shape mismatches and non-tensor
            values (or unsupported config values); all checked before the model is built.

    Examples:
        >>> model = load_official_ttt(cfg, torch.load("ttt_official.pt"))  # doctest: +SKIP
    """
    lm_config = official_to_lm_config(config, mode)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must map the official parameter names to tensors (TTTForCausalLM.state_dict()), "
                        f"got {type(state_dict).__name__}")  # fmt: skip
    if not state_dict:
        raise ValueError("the official TTT state dict is empty: pass TTTForCausalLM.state_dict() or the dict saved "
                         "from it (torch.load(path, map_location='cpu'))")  # fmt: skip
    # Check every name and shape against a model on the meta device (no memory, no init), so a bad state dict fails
    # at once instead of after building a multi-GB model.
    with torch.device("meta"):
        ours = CausalLM(lm_config).state_dict()
    converted = _convert(state_dict, ours, lm_config.tie_word_embeddings)
    model = CausalLM(lm_config).to(dtype)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def _convert(state_dict: Mapping[str, Tensor], ours: Mapping[str, Tensor], tied: bool) -> dict[str, Tensor]:
    """``state_dict`` renamed to our parameter names, checked against ``ours`` (names and shapes); ValueError listing
    every problem otherwise."""
    converted: dict[str, Tensor] = {}
    unknown, shapes, not_tensors, present = [], [], [], set()
    for key, value in state_dict.items():
        if _IGNORED_KEY.search(key):
            continue
        name = official_key_to_ours(key)
        if name is None or name not in ours:
            unknown.append(key)
            continue
        present.add(name)
        if not isinstance(value, Tensor):
            not_tensors.append(f"{key}: {type(value).__name__}")
        elif tuple(value.shape) != tuple(ours[name].shape):
            shapes.append(f"{key}: got {tuple(value.shape)}, expected {tuple(ours[name].shape)}")
        else:
            converted[name] = value
    needed = [k for k in ours if not (tied and k == "lm_head.weight")]
    missing = [ours_to_official_key(k) for k in needed if k not in present]
    problems = []
    both = tied and "lm_head.weight" in converted and "embed_tokens.weight" in converted
    if both and not torch.equal(converted["lm_head.weight"], converted["embed_tokens.weight"]):
        problems.append("tie_word_embeddings=True but lm_head.weight differs from model.embed_tokens.weight")
    if unknown:
        problems.append(f"unknown keys ({len(unknown)}): {_short(unknown)}")
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_short(missing)}")
    if shapes:
        problems.append(f"wrong shapes ({len(shapes)}): {_short(shapes)}")
    if not_tensors:
        problems.append(f"values that are not tensors ({len(not_tensors)}): {_short(not_tensors)}")
    if problems:
        raise ValueError("cannot load the official TTT state dict:\n  " + "\n  ".join(problems))
    if tied:
        converted["lm_head.weight"] = converted["embed_tokens.weight"]
    return converted


def _short(items: list[str], n: int = 20) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")
