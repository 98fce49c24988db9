"""``generate()`` on a left-padded batch (``tokenizer.padding_side = "left"``), exactly, for every mixer.

Every innerloop mixer reads a token's position from its state (TTT's mini-batch boundaries, RoPE, the KV cache's
length), so the pads of a left-padded batch cannot simply be fed: they would enter each row's recurrent state and
shift its positions. Nor can rows of different lengths share one decode state (one position for the whole batch).
So each row is generated on its own from its real tokens, and the outputs are laid out as transformers lays out a
batched generation: the row's pads, its prompt, the new tokens, and ``pad_token_id`` after a row that stopped early.

Greedy search and beam search give each row exactly the tokens of generating it alone; sampling draws the rows one
after another from torch's global generator (a seeded batch gives other, equally distributed draws than a batch of
equal-length prompts would). ``max_length`` / ``min_length`` count the padded prompt, as in transformers (a row with
``d`` pads gets ``max_length - d``); ``max_new_tokens`` / ``min_new_tokens`` are per row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

# generate() options that return per-step tensors of the whole batch (scores, caches, ...): not assembled here
_BATCH_OUTPUTS = ("return_dict_in_generate", "output_scores", "output_logits", "output_attentions",
                  "output_hidden_states")  # fmt: skip


def left_padding(input_ids: Tensor | None, attention_mask: Tensor | None) -> bool:
    """True when ``attention_mask`` left-pads ``input_ids`` (each row: zeros, then at least one one) with some zeros."""
    if input_ids is None or attention_mask is None or not attention_mask.numel():
        return False
    mask = attention_mask
    if mask.shape != input_ids.shape or input_ids.dim() != 2 or not bool(((mask == 0) | (mask == 1)).all()):
        return False
    valid = mask.bool()
    return (not bool(valid.all()) and not bool((valid[:, :-1] & ~valid[:, 1:]).any())  # zeros, then ones
            and bool(valid[:, -1].all()))  # fmt: skip


def generate_left_padded(generate_one: Callable[..., Tensor], generation_config: Any, defaults: Any,
                         input_ids: Tensor, attention_mask: Tensor, kwargs: dict[str, Any]) -> Tensor:  # fmt: skip
    """Generate each row of a left-padded batch alone and lay the rows out as transformers does.

    Args:
        generate_one (Callable): transformers' ``generate`` (``GenerationMixin.generate`` bound to the model), called
            as ``generate_one(ids [1, L_i], generation_config=..., attention_mask=ones, **kwargs)``.
        generation_config (GenerationConfig, Optional): the caller's, or None.
        defaults (GenerationConfig): the model's ``generation_config`` (read where the caller's is None).
        input_ids (Tensor): ``[B, P]`` prompts, left-padded.
        attention_mask (Tensor): ``[B, P]``, zeros then ones per row.
        kwargs (dict): the other keyword arguments of ``generate``.
    Returns:
        Tensor: ``[B * num_return_sequences, P + G]`` sequences (``G``: the most new tokens of any row), rows that
        stopped early filled with ``pad_token_id`` as in a batched generation.
    """
    asked = [k for k in _BATCH_OUTPUTS if kwargs.get(k)]
    if asked or kwargs.get("streamer") is not None:
        what = ", ".join(asked) if asked else "streamer"
        raise NotImplementedError(f"generate() on a left-padded batch generates each row alone and returns the "
                                  f"sequences only: {what} is not supported with padding. Generate the prompts one at "
                                  f"a time for per-step outputs")  # fmt: skip
    if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
        raise NotImplementedError("generate() on a left-padded batch cannot continue a cache (its rows saw no pads): "
                                  "pass unpadded prompts with a cache, or the padded prompts without one")  # fmt: skip

    def setting(name: str) -> Any:
        if name in kwargs:
            return kwargs[name]
        for config in (generation_config, defaults):
            if config is not None and getattr(config, name, None) is not None:
                return getattr(config, name)
        return None

    pads = (attention_mask == 0).sum(1).tolist()
    max_length, min_length = setting("max_length"), setting("min_length")
    out = []
    for row, d in enumerate(pads):
        row_kwargs = dict(kwargs)
        if setting("max_new_tokens") is None:  # transformers' max_length counts the padded prompt
            row_kwargs["max_length"] = (20 if max_length is None else max_length) - d
        if setting("min_new_tokens") is None and min_length:
            row_kwargs["min_length"] = max(0, min_length - d)
        ids = input_ids[row : row + 1, d:]
        seqs = generate_one(ids, generation_config=generation_config, attention_mask=torch.ones_like(ids),
                            **row_kwargs)  # fmt: skip
        out.append(torch.cat([input_ids[row : row + 1, :d].expand(len(seqs), d).to(seqs), seqs], 1))
    longest = max(s.shape[1] for s in out)
    if any(s.shape[1] != longest for s in out):
        pad = setting("pad_token_id")
        if pad is None:
            eos = setting("eos_token_id")
            pad = (eos.flatten()[0].item() if isinstance(eos, Tensor) else eos[0] if isinstance(eos, (list, tuple))
                   else eos)  # fmt: skip
        if pad is None:
            raise ValueError("rows of the left-padded batch stopped at different lengths and neither pad_token_id nor "
                             "eos_token_id is set to fill them: pass pad_token_id=")  # fmt: skip
        out = [torch.cat([s, s.new_full((len(s), longest - s.shape[1]), int(pad))], 1) for s in out]
    return torch.cat(out)
