"""transformers models over innerloop's :class:`~innerloop.models.lm.CausalLM` (no second implementation).

``InnerloopForCausalLM.model`` *is* a ``CausalLM``: the logits, the loss and every decode state come from it; this
module only speaks transformers' language around it (``PreTrainedModel`` loading/saving, ``GenerationMixin``, a
``Cache`` of innerloop states, ``ModelOutput`` objects). Works with transformers 5.x, where the cache argument is
called ``cache`` (5.24) or ``past_key_values`` (earlier 5.x): both are accepted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from innerloop.layers import RMSNorm
from innerloop.layers.common import at_least_float32
from innerloop.layers.ttt import TTTBase
from innerloop.models.lm import CausalLM

from .cache import InnerloopCache
from .configuration import MODEL_TYPE, InnerloopConfig
from .padded_generate import generate_left_padded, left_padding

__all__ = ["InnerloopForCausalLM", "InnerloopModel", "InnerloopPreTrainedModel"]

_TRAINER_KEY = f"{MODEL_TYPE} (registered by innerloop.models.hf)"

# transformers renamed the cache argument and output field ``past_key_values`` -> ``cache`` (5.2x)
_CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


def _cache_arg(cache: Any, past_key_values: Any) -> InnerloopCache | None:
    cache = cache if cache is not None else past_key_values
    if cache is not None and not isinstance(cache, InnerloopCache):
        raise TypeError(f"an innerloop model decodes from an InnerloopCache (its per-layer TTT/Mamba/RNN states and "
                        f"KV caches), got {type(cache).__name__}; pass cache=None (the model makes one) or "
                        f"InnerloopCache.for_model(model)")  # fmt: skip
    return cache


def _return_dict(config: InnerloopConfig, return_dict: bool | None) -> bool:
    return getattr(config, "return_dict", True) if return_dict is None else return_dict


def _check_inputs(input_ids: Tensor | None, attention_mask: Tensor | None, inputs_embeds: Tensor | None,
                  cache: InnerloopCache | None) -> bool:
    """Refuse what the model cannot compute exactly; True when ``attention_mask`` right-pads a fresh batch.

    Right padding (each row: ones, then zeros) is exact for every mixer: all are causal, so a real token's logits never
    read the pads after it (the loss skips them through ``labels=-100``, as transformers' collators set them). Left
    padding, padding after a cache and any other zeros would feed pads into a row's recurrent state and positions.
    """
    if inputs_embeds is not None:
        raise NotImplementedError("innerloop models take input_ids, not inputs_embeds")
    if input_ids is None:
        raise ValueError("input_ids is required ([B, T] token ids)")
    if attention_mask is None or not attention_mask.numel() or bool(attention_mask.bool().all()):
        return False
    mask = attention_mask
    if mask.shape != input_ids.shape or cache is not None:
        raise NotImplementedError(f"padding (zeros in attention_mask) is supported only on the right of a batch fed "
                                  f"without a cache, with the mask the shape of input_ids; got attention_mask "
                                  f"{tuple(mask.shape)} for input_ids {tuple(input_ids.shape)}"
                                  + (" and a cache" if cache is not None else ""))  # fmt: skip
    valid = mask.bool()
    if not bool(((mask == 0) | (mask == 1)).all()) or bool((valid[:, 1:] & ~valid[:, :-1]).any()):
        raise NotImplementedError("only right padding is supported (each row of attention_mask: ones, then zeros): "
                                  "left padding would feed the pads into every recurrent state and shift the "
                                  "positions. Pad on the right (tokenizer.padding_side = 'right'), or batch prompts of "
                                  "equal length (generate() takes left-padded prompts)")  # fmt: skip
    return True


# keyword arguments of transformers' packed-sequence (padding-free) batches, e.g. DataCollatorWithFlattening's
_PACKED_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "seq_idx")


def _check_positions(input_ids: Tensor, attention_mask: Tensor | None, cache: InnerloopCache | None,
                     position_ids: Tensor | None, kwargs: dict[str, Any]) -> None:  # fmt: skip
    """Refuse ``position_ids`` / ``cache_position`` other than the positions the model uses, and packed batches.

    Every mixer reads a token's position from its state (tokens seen before it in the row), not from these
    arguments: given, they must be ``past + [0, T)`` (past: the cache's tokens), any value on a right pad. A batch
    packing several sequences into one row (positions restarting at 0, or ``cu_seq_lens_*`` / ``seq_idx``) would
    otherwise carry each recurrent state from one sequence into the next, silently.
    """
    refused = [k for k in _PACKED_KWARGS if kwargs.get(k) is not None]  # packed-batch arguments, then positions
    positions = {"position_ids": position_ids, "cache_position": kwargs.get("cache_position")}
    given_positions = [(n, g) for n, g in positions.items() if g is not None]
    if refused:  # a packed batch: refused below whatever the positions say
        given_positions = []
    elif not given_positions:  # the usual call: nothing to compare
        return
    T = input_ids.shape[1]
    past = 0 if cache is None else cache.get_seq_length()
    want = torch.arange(past, past + T, device=input_ids.device)
    for name, given in given_positions:
        given = torch.as_tensor(given, device=input_ids.device)
        rows_fit = given.dim() == 1 or (given.dim() == 2 and given.shape[0] in (1, len(input_ids)))
        if not rows_fit or given.shape[-1] != T:
            raise ValueError(f"{name} {tuple(given.shape)} does not fit input_ids {tuple(input_ids.shape)}")
        ok = given == want
        if name == "position_ids" and attention_mask is not None and attention_mask.shape == input_ids.shape:
            ok = ok | ~attention_mask.bool()  # right pads: any position (HF's cumsum-1 gives them 1 or the last)
        if not bool(ok.all()):
            refused.append(name)
    if refused:
        raise NotImplementedError(f"{' and '.join(refused)} must be the positions the model uses: each row's tokens "
                                  f"continue the cache ({past} tokens), positions {past}..{past + T - 1}. An innerloop "
                                  "model reads positions from its recurrent state, so it cannot take packed sequences "
                                  "(several in one row, e.g. DataCollatorWithFlattening: the state would carry from "
                                  "one into the next) or other positions: use a padding collator (padding on the "
                                  "right), or one sequence per row")  # fmt: skip


def _refuse_padded_generation(attention_mask: Tensor | None) -> None:
    if attention_mask is not None and attention_mask.numel() and not bool(attention_mask.bool().all()):
        raise NotImplementedError("generate() with padding takes left-padded prompts only (tokenizer.padding_side = "
                                  "'left': each row of attention_mask zeros, then ones, the shape of input_ids, no "
                                  "cache): right padding would continue each row after its pads. Pad on the left, or "
                                  "generate prompts of different lengths one at a time")  # fmt: skip


def _expand_cache_for(cache: InnerloopCache, input_ids: Tensor) -> None:
    """Repeat each row of a cache passed to ``generate()`` as generate repeated its prompt rows.

    ``num_beams`` / ``num_return_sequences > 1`` repeat every row of ``input_ids`` (``repeat_interleave``) but not a
    cache given by the caller, whose states then no longer fit the batch. The cache's rows are repeated alike when the
    rows of ``input_ids`` are copies in groups of the same size; any other batch mismatch is refused.
    """
    have, rows = cache.batch_size, input_ids.shape[0]
    if have == rows or have <= 0:
        return
    k = rows // have
    groups = input_ids.view(have, max(k, 1), -1) if rows % have == 0 else None
    if groups is None or not bool((groups == groups[:, :1]).all()):
        raise ValueError(f"generate() got a cache of {have} sequences for input_ids of {rows} rows: pass the "
                         "sequences the cache has seen (e.g. the sequences generate returned with it), one row each; "
                         "num_beams / num_return_sequences repeat them")  # fmt: skip
    cache.batch_repeat_interleave(k)


class InnerloopPreTrainedModel(PreTrainedModel):
    """Shared transformers plumbing: config class, weight init as innerloop's, gradient checkpointing, the cache.

    ``_init_weights`` reproduces innerloop's initialisation module by module (every Linear and the embedding
    ``N(0, initializer_range)`` with zero biases; TTT's inner model ``W0``/``b0``, learnable LR gate, token offsets and
    inner LayerNorm through ``TTTBase.reset_parameters``; Mamba's ``A_log``/``D``/``dt`` through
    ``Mamba.reset_parameters``; PyTorch defaults for convs and RNN cores; RMSNorm weights one). Parameters already
    loaded (transformers marks them ``_is_hf_initialized``) are never changed. A model made from a config
    (``InnerloopForCausalLM(config)``) is initialised once, by ``CausalLM`` itself: same seed, same weights.
    """

    config_class = InnerloopConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    supports_gradient_checkpointing = True
    _is_stateful = True  # transformers refuses assisted decoding for stateful models
    _keys_to_ignore_on_load_unexpected = [r"\.token_idx$"]  # non-persistent TTT buffer some exports contain
    _tied_weights_keys = {"model.lm_head.weight": "model.embed_tokens.weight"}  # when tie_word_embeddings

    def _make_lm(self, config: InnerloopConfig, lm: CausalLM | None) -> CausalLM:
        if lm is None:
            lm = CausalLM(config.to_lm_config())
        elif lm.config != config.to_lm_config():
            raise ValueError(f"the CausalLM's config {lm.config} differs from the InnerloopConfig's "
                             f"{config.to_lm_config()}; build the config with InnerloopConfig.from_lm_config")
        if lm.embed_tokens.weight.device.type != "meta":  # already initialised by innerloop (or trained)
            for module in lm.modules():
                module._is_hf_initialized = True
        return lm

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model makes its own InnerloopCache

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            self.model._init_weights(module)  # innerloop's: N(0, initializer_range), zero Linear biases
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        if isinstance(module, TTTBase) and module.token_idx.device.type != "meta":
            # the non-persistent buffer, as TTTBase.__init__ makes it (from_pretrained builds on the meta device)
            n = module.token_idx.numel()
            module.token_idx.copy_(1.0 / torch.arange(1, n + 1, device=module.token_idx.device))
        if callable(getattr(module, "reset_parameters", None)) and not isinstance(module, (nn.Linear, nn.Embedding)):
            # TTT, Mamba, convs, RNN cores, LayerNorm: the layer's own init, then (as CausalLM does after building
            # its blocks) N(0, initializer_range) on the Linears inside
            _reset_keeping_loaded(module)
            for sub in module.modules():
                if sub is not module and isinstance(sub, (nn.Linear, nn.Embedding)):
                    self.model._init_weights(sub)

    def _lm_forward(self, input_ids: Tensor, cache: InnerloopCache | None, use_cache: bool | None,
                    attention_mask: Tensor | None, inputs_embeds: Tensor | None,
                    output_hidden_states: bool | None = None, position_ids: Tensor | None = None,
                    kwargs: dict[str, Any] | None = None) -> tuple[Tensor, Any, tuple | None]:  # fmt: skip
        """The final hidden states ``[B, T, C]`` from the cache's state, the cache updated in place (or None), and,
        with ``output_hidden_states``, every layer's hidden states as transformers gives them (the embeddings, each
        block's output but the last, the final normed states: ``num_hidden_layers + 1`` tensors), else None."""
        padded = _check_inputs(input_ids, attention_mask, inputs_embeds, cache)
        _check_positions(input_ids, attention_mask, cache, position_ids, kwargs or {})
        if padded and use_cache:
            raise ValueError("use_cache=True with a right-padded batch: the returned state would have read the pads. "
                             "Pass use_cache=False (or leave it unset: a padded forward returns no cache)")  # fmt: skip
        use_cache = False if padded else self.config.use_cache if use_cache is None else use_cache
        if self.model.gradient_checkpointing and self.training:
            use_cache = False  # no decode state while training with checkpointing
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        seen: list[Tensor] = []
        hooks = []
        if output_hidden_states:  # read off the modules CausalLM.hidden_states runs, not a second loop over them
            keep = lambda module, args, out: seen.append(out[0] if isinstance(out, tuple) else out)  # noqa: E731
            hooks = [m.register_forward_hook(keep) for m in (self.model.embed_tokens, *self.model.layers[:-1])]
        try:
            h, state = self.model.hidden_states(input_ids, None if cache is None else cache.lm_state())
        finally:
            for hook in hooks:
                hook.remove()
        all_h = (*seen, h) if output_hidden_states else None
        if not use_cache and cache is None:
            return h, None, all_h
        if cache is None:
            cache = InnerloopCache.for_model(self.model)
        cache.set_lm_state(state)
        return h, cache, all_h

    def resize_token_embeddings(self, *args: Any, **kwargs: Any) -> nn.Embedding:
        """transformers' ``resize_token_embeddings``, keeping the wrapped ``CausalLM``'s config in step (its token-id
        check and everything else read ``vocab_size`` from it)."""
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        self.model.config = dataclasses.replace(self.model.config, vocab_size=embeddings.weight.shape[0])
        return embeddings


def _reset_keeping_loaded(module: nn.Module) -> None:
    """``module.reset_parameters()`` except for the tensors transformers marked as loaded (kept bit for bit)."""
    tensors = list(module.named_parameters())
    if any(t.device.type == "meta" for _, t in tensors):
        return
    kept = {name: t.detach().clone() for name, t in tensors if getattr(t, "_is_hf_initialized", False)}
    if len(kept) == len(tensors):
        return
    module.reset_parameters()
    for name, t in module.named_parameters():
        if name in kept:
            t.copy_(kept[name])


class InnerloopModel(InnerloopPreTrainedModel):
    """The LM without its head (``AutoModel``): final normed hidden states ``[B, T, C]`` and the cache.

    Same weights and parameter names as :class:`InnerloopForCausalLM` (``model.*``), so either loads the other's
    checkpoint.
    """

    def __init__(self, config: InnerloopConfig, lm: CausalLM | None = None) -> None:
        super().__init__(config)
        self.model = self._make_lm(config, lm)
        self.post_init()

    def forward(
        self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, cache: Any = None,
        past_key_values: Any = None, use_cache: bool | None = None, inputs_embeds: Tensor | None = None,
        output_hidden_states: bool | None = None, return_dict: bool | None = None, position_ids: Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        """``input_ids [B, T]`` -> ``last_hidden_state [B, T, C]`` and the cache (an :class:`InnerloopCache`);
        ``position_ids`` as :meth:`InnerloopForCausalLM.forward`."""
        h, cache, all_h = self._lm_forward(input_ids, _cache_arg(cache, past_key_values), use_cache, attention_mask,
                                           inputs_embeds, output_hidden_states, position_ids, kwargs)  # fmt: skip
        out = BaseModelOutputWithPast(last_hidden_state=h, hidden_states=all_h, **{_CACHE_FIELD: cache})
        return out if _return_dict(self.config, return_dict) else out.to_tuple()


class InnerloopForCausalLM(InnerloopPreTrainedModel, GenerationMixin):
    """An innerloop causal LM (any mixer, transformer or mamba backbone) as a transformers model.

    ``generate()`` works with greedy search, sampling (temperature, top-k, top-p), repetition penalty, stopping
    criteria and beam search (the states are reordered); assisted/speculative decoding is refused (a recurrent state
    cannot be rolled back). ``forward`` takes right-padded batches (transformers' padding collators, training and
    scoring: exact, since every mixer is causal; no cache is returned), and refuses left padding; ``generate`` takes
    left-padded prompts (``tokenizer.padding_side = "left"``) and generates each row alone, exactly
    (:mod:`~innerloop.models.hf.padded_generate`), and refuses right padding.

    Args:
        config (InnerloopConfig): the model's config.
        lm (CausalLM, Optional): wrap this trained model (no copy) instead of building a fresh one. Default: None.

    Examples:
        >>> cfg = InnerloopConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                       num_attention_heads=4, mini_batch_size=4)
        >>> model = InnerloopForCausalLM(cfg).eval()
        >>> model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False).shape
        torch.Size([1, 7])
    """

    def __init__(self, config: InnerloopConfig, lm: CausalLM | None = None) -> None:
        super().__init__(config)
        self.model = self._make_lm(config, lm)
        self.post_init()

    @classmethod
    def from_causal_lm(cls, lm: CausalLM, **config_kwargs: Any) -> InnerloopForCausalLM:
        """Wrap a (trained) :class:`CausalLM` without copying it; ``config_kwargs`` go to the InnerloopConfig
        (e.g. ``eos_token_id``, ``innerloop_run``)."""
        return cls(InnerloopConfig.from_lm_config(lm.config, **config_kwargs), lm)

    @classmethod
    def from_pretrained(cls, *args: Any, allow_missing_weights: bool = False, **kwargs: Any):
        """transformers' ``from_pretrained``, refusing a checkpoint that lacks weights of the model (transformers
        would only warn and initialise them at random); ``allow_missing_weights=True`` initialises them as innerloop
        does and keeps every loaded weight."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing = sorted(info.get("missing_keys") or [])
        if missing and not allow_missing_weights:
            shown = ", ".join(missing[:8]) + (f", ... (+{len(missing) - 8} more)" if len(missing) > 8 else "")
            raise ValueError(f"the checkpoint lacks {len(missing)} weights of the model: {shown}. Export it again "
                             "(innerloop lm export), or pass allow_missing_weights=True to initialise them as "
                             "innerloop does")  # fmt: skip
        return (model, info) if want_info else model

    def to_causal_lm(self) -> CausalLM:
        """The wrapped :class:`CausalLM` (shared, not copied): innerloop's own API (``generate``, states, ...)."""
        return self.model

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.model.lm_head = value

    def forward(
        self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, cache: Any = None,
        past_key_values: Any = None, use_cache: bool | None = None, labels: Tensor | None = None,
        logits_to_keep: int | Tensor = 0, inputs_embeds: Tensor | None = None, return_dict: bool | None = None,
        num_items_in_batch: int | Tensor | None = None, output_hidden_states: bool | None = None,
        position_ids: Tensor | None = None, **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits of ``input_ids [B, T]`` continuing the cache's state, and the next-token loss given ``labels``.

        Args:
            input_ids (Tensor): ``[B, T]`` token ids, the tokens after those the cache has seen.
            attention_mask (Tensor, Optional): ``[B, T_total]``: all ones, or ``[B, T]`` ones then zeros per row
                (right padding, without a cache: the real tokens' logits and loss are exactly the unpadded rows';
                no cache is returned). Left padding is refused. Default: None.
            cache / past_key_values (InnerloopCache, Optional): state after earlier tokens. Default: None.
            use_cache (bool, Optional): return the state (an :class:`InnerloopCache`). Default: ``config.use_cache``.
            labels (Tensor, Optional): ``[B, T]`` targets aligned with input_ids (shifted inside), -100 ignored.
            logits_to_keep (int | Tensor, Optional): logits of only the last k positions (0 = all), or of these
                positions. Default: 0.
            num_items_in_batch (int, Optional): the Trainer's count of target tokens over accumulated micro-batches;
                the loss is then the sum over this batch divided by it. Default: None (mean over this batch).
            position_ids (Tensor, Optional): ``[B, T]`` or ``[1, T]``; only checked, since every mixer reads
                positions from its state: they must continue the cache (``past + [0, T)``; any value on a right
                pad). Packed sequences (positions restarting in a row, ``cu_seq_lens_*``: DataCollatorWithFlattening)
                are refused, as is a ``cache_position`` other than ``past + [0, T)``. Default: None.
            output_hidden_states (bool, Optional): also return ``hidden_states``, as transformers models do (the
                embeddings, each block's output, the final normed states). Default: ``config.output_hidden_states``.
            return_dict (bool, Optional): False returns ``to_tuple()`` of the output. Default: ``config.return_dict``.
        Returns:
            CausalLMOutputWithPast: ``logits [B, T', V]`` (at least float32), ``loss``, and the cache.
        """
        h, cache, all_h = self._lm_forward(input_ids, _cache_arg(cache, past_key_values), use_cache, attention_mask,
                                           inputs_embeds, output_hidden_states, position_ids, kwargs)  # fmt: skip
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) and logits_to_keep else logits_to_keep
        if isinstance(keep, int):
            keep = slice(None)
        logits = self.model.lm_head(h[:, keep])
        logits = logits.to(at_least_float32(logits.dtype))  # as CausalLM.forward
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape or logits.shape[1] != labels.shape[1]:
                raise ValueError(f"labels {tuple(labels.shape)} must match input_ids {tuple(input_ids.shape)} "
                                 f"(and logits_to_keep must be 0 when labels are given)")  # fmt: skip
            flat_logits, flat_labels = logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten().to(logits.device)
            if num_items_in_batch is None:
                loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100)
            else:
                loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="sum")
                loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=all_h, **{_CACHE_FIELD: cache})
        return out if _return_dict(self.config, return_dict) else out.to_tuple()

    def generate(self, inputs: Tensor | None = None, generation_config: Any = None, **kwargs: Any) -> Any:
        """transformers' ``generate``; a left-padded batch (``attention_mask`` zeros then ones per row, as a
        tokenizer with ``padding_side="left"`` makes) is generated row by row from each row's real tokens and laid
        out as a batched generation (:func:`~innerloop.models.hf.padded_generate.generate_left_padded`): greedy and
        beam search give each row the tokens of generating it alone. Returns the sequences ``[B * n, P + G]`` then
        (``return_dict_in_generate`` and per-step outputs are refused with padding)."""
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        if not left_padding(input_ids, kwargs.get("attention_mask")):
            return super().generate(inputs, generation_config, **kwargs)
        rest = {k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask")}
        return generate_left_padded(super().generate, generation_config, self.generation_config, input_ids,
                                    kwargs["attention_mask"], rest)  # fmt: skip

    def prepare_inputs_for_generation(
        self, input_ids: Tensor, cache: Any = None, past_key_values: Any = None, attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None, use_cache: bool = True, **kwargs: Any,
    ) -> dict[str, Any]:
        """Feed only the tokens the cache has not seen (all of them at the first step)."""
        cache = _cache_arg(cache, past_key_values)
        if inputs_embeds is not None:
            raise NotImplementedError("innerloop models generate from input_ids, not inputs_embeds")
        _refuse_padded_generation(attention_mask)
        if cache is not None and cache.get_seq_length() > 0:
            _expand_cache_for(cache, input_ids)
            input_ids = input_ids[:, cache.get_seq_length():]
        inputs = {"input_ids": input_ids.contiguous(), "attention_mask": attention_mask, "use_cache": use_cache,
                  _CACHE_FIELD: cache}  # fmt: skip
        for key in ("logits_to_keep", "output_hidden_states"):
            if key in kwargs:
                inputs[key] = kwargs[key]
        return inputs


def register() -> None:
    """Register the classes with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM`` (done on import)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    AutoConfig.register(MODEL_TYPE, InnerloopConfig, exist_ok=True)
    AutoModel.register(InnerloopConfig, InnerloopModel, exist_ok=True)
    AutoModelForCausalLM.register(InnerloopConfig, InnerloopForCausalLM, exist_ok=True)
    # Trainer(label_smoothing_factor>0) shifts the labels (next-token loss) only for class names in this table;
    # register() does not add them, so it would smooth the *unshifted* loss. The key is no config's model type, so
    # the lazy Auto mappings (which import transformers.models.<model_type>) skip it.
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault(_TRAINER_KEY, InnerloopForCausalLM.__name__)
