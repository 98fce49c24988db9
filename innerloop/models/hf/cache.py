"""A transformers ``Cache`` whose layers hold innerloop's per-block decode states (any mixer, either backbone).

Each :class:`InnerloopCacheLayer` keeps one :class:`~innerloop.models.lm.BlockState` as the model returned it: a
:class:`~innerloop.layers.KVCache` for attention, a ``TTTLayerState`` / ``MambaState`` / ``RNNState`` for the
recurrent mixers, plus the Mamba backbone's pre-conv state. Nothing is converted: the state goes back into
``CausalLM.forward`` unchanged, so decoding through transformers computes exactly what innerloop computes.

Beam search works by reordering every state tensor along its batch dimension. The batch dimension of each tensor is
found once from the block's ``init_state`` at batch sizes 1 and 2 (on the meta device), so it holds for any mixer
that honours the Mixer contract (``RNNState`` keeps it second, the others first). Cropping is refused: a recurrent
state cannot forget tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache, CacheLayerMixin

from innerloop.layers.attention import KVCache
from innerloop.models.lm import BlockState, LMState

__all__ = ["InnerloopCache", "InnerloopCacheLayer"]

_CROP = ("{what} needs to roll the state back by {n} tokens, which a recurrent (TTT/Mamba/RNN) state cannot do: "
         "use greedy search, sampling or beam search without assistant/speculative decoding")  # fmt: skip


def _map_batch(state: Any, ref1: Any, ref2: Any, fn: Callable[[Tensor, int], Tensor]) -> Any:
    """``state`` with ``fn(tensor, batch_dim)`` applied to every tensor; ``ref1`` / ``ref2`` are the same structure at
    batch sizes 1 and 2 (from ``init_state``), from which each tensor's batch dimension is read."""
    if isinstance(state, Tensor):
        if not (isinstance(ref1, Tensor) and isinstance(ref2, Tensor)):
            raise TypeError("the decode state does not have the structure of init_state (a tensor where "
                            f"init_state has {type(ref1).__name__})")  # fmt: skip
        dims = [d for d, (a, b) in enumerate(zip(ref1.shape, ref2.shape)) if (a, b) == (1, 2)]
        if len(dims) != 1:
            raise ValueError(f"cannot tell the batch dimension of a state tensor: init_state gives shapes "
                             f"{tuple(ref1.shape)} (batch 1) and {tuple(ref2.shape)} (batch 2)")  # fmt: skip
        return fn(state, dims[0])
    if isinstance(state, KVCache):  # fresh buffers: a new write record, so no other state views them
        k, v = fn(state.k, 0), fn(state.v, 0)
        return KVCache(k, v, state.length, [state.length])
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        changes = {f.name: _map_batch(getattr(state, f.name), getattr(ref1, f.name), getattr(ref2, f.name), fn)
                   for f in dataclasses.fields(state) if f.init}  # fmt: skip
        return dataclasses.replace(state, **changes)
    if isinstance(state, tuple):
        if not isinstance(ref1, tuple) or len(ref1) != len(state):
            raise TypeError(f"the decode state does not have the structure of init_state ({type(state).__name__})")
        items = [_map_batch(s, r1, r2, fn) for s, r1, r2 in zip(state, ref1, ref2)]
        return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
    return state  # None, ints (positions, offsets), floats


class InnerloopCacheLayer(CacheLayerMixin):
    """One block's decode state (:class:`~innerloop.models.lm.BlockState`), not keys and values.

    Attributes:
        state (BlockState | None): the block's state after ``length`` tokens; None before the first token.
        length (int): tokens seen.
    """

    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, refs: tuple[BlockState, BlockState] | None = None) -> None:
        super().__init__()
        self.state: BlockState | None = None
        self.length = 0
        self._refs = refs

    def __repr__(self) -> str:
        return f"InnerloopCacheLayer(length={self.length}, state={type(getattr(self.state, 'mixer', None)).__name__})"

    def set(self, state: BlockState, length: int) -> None:
        """Replace the state (after ``length`` tokens)."""
        self.state, self.length, self.is_initialized = state, length, True

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        raise NotImplementedError("InnerloopCacheLayer holds an innerloop BlockState; it is filled by the model")

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        raise NotImplementedError("InnerloopCacheLayer holds an innerloop BlockState (recurrent state or KV cache), "
                                  "not transformers keys/values; only InnerloopForCausalLM fills it")  # fmt: skip

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1  # no limit: recurrent states are O(1), the KV cache grows

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def reset(self) -> None:
        self.state, self.length, self.is_initialized = None, 0, False

    def offload(self) -> None:
        self._apply(lambda t, d: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:  # the model moves states onto its device when it reads them
        pass

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove:
            raise NotImplementedError(_CROP.format(what="cropping the cache", n=tokens_to_remove))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply(lambda t, d: t.index_select(d, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t, d: t.repeat_interleave(repeats, dim=d))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._apply(lambda t, d: t.index_select(d, indices.to(t.device)))

    def _apply(self, fn: Callable[[Tensor, int], Tensor]) -> None:
        if self.state is None:
            return
        if self._refs is None:
            raise RuntimeError("this InnerloopCacheLayer was made without the model's reference states; build the "
                               "cache with InnerloopCache.for_model(model)")  # fmt: skip
        self.state = _map_batch(self.state, *self._refs, fn)


class InnerloopCache(Cache):
    """The decode state of an innerloop LM as a transformers ``Cache``: one :class:`InnerloopCacheLayer` per block.

    :meth:`lm_state` gives the :class:`~innerloop.models.lm.LMState` to pass to ``CausalLM.forward`` and
    :meth:`set_lm_state` stores the state it returns; ``get_seq_length()`` is the number of tokens seen.

    Args:
        num_layers (int): blocks of the model.
        refs (list[tuple[BlockState, BlockState]], Optional): each block's ``init_state`` at batch sizes 1 and 2
            (meta tensors); needed by beam search (:meth:`reorder_cache`). Default: None.

    Examples:
        >>> cache = InnerloopCache.for_model(hf_model)       # doctest: +SKIP
        >>> out = hf_model(prompt_ids, cache=cache)             # doctest: +SKIP
    """

    def __init__(self, num_layers: int, refs: list[tuple[BlockState, BlockState]] | None = None) -> None:
        refs = refs if refs is not None else [None] * num_layers
        super().__init__(layers=[InnerloopCacheLayer(r) for r in refs])

    @classmethod
    def for_model(cls, model: nn.Module) -> InnerloopCache:
        """An empty cache for ``model`` (an ``InnerloopForCausalLM`` / ``InnerloopModel`` or a ``CausalLM``)."""
        lm = getattr(model, "model", model)
        with torch.device("meta"):
            refs = [(b.init_state(1, "meta"), b.init_state(2, "meta")) for b in lm.layers]
        return cls(len(lm.layers), refs)

    @property
    def position(self) -> int:
        """Tokens seen (0 for an empty cache)."""
        return self.layers[0].length if self.layers else 0

    def lm_state(self) -> LMState | None:
        """The innerloop state after :attr:`position` tokens, or None for an empty cache."""
        if self.position == 0:
            return None
        return LMState(tuple(layer.state for layer in self.layers), self.position)

    def set_lm_state(self, state: LMState) -> None:
        """Store ``state`` (returned by ``CausalLM.forward``)."""
        if len(state.layers) != len(self.layers):
            raise ValueError(f"state has {len(state.layers)} layers, this cache {len(self.layers)}")
        for layer, s in zip(self.layers, state.layers):
            layer.set(s, state.position)

    @property
    def batch_size(self) -> int:
        """Rows of the state (-1 while empty)."""
        layer = self.layers[0] if self.layers else None
        if layer is None or layer.state is None or layer._refs is None:
            return -1
        sizes: list[int] = []
        _map_batch(layer.state, *layer._refs, lambda t, d: sizes.append(t.shape[d]) or t)  # reads only
        return sizes[0] if sizes else -1
