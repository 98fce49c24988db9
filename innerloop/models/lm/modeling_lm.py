"""Plain-PyTorch causal LM over any registered mixer, with a recurrent/cached state for decoding.

Layout: token ids ``[B, T]``, hidden states ``[B, T, C]``, logits ``[B, T, V]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from innerloop.layers import RMSNorm, SwiGLU, build_mixer
from innerloop.layers.common import CausalConv1d, at_least_float32
from innerloop.layers.modes import log_once
from innerloop.layers.ttt import TTTBase

from .configuration_lm import LMConfig
from .decoding import CUDAGraphStep, StaticLMState, build_static_state, check_token_ids, static_step

logger = logging.getLogger(__name__)


def _checkpointable(block: nn.Module) -> bool:
    """Whether activation checkpointing can recompute ``block``: not a TTT block in mode ``"naive"``, whose reference
    inner gradients (``torch.func.grad``) refuse checkpointing's saved-tensor hooks; such a block runs as it is."""
    if isinstance(block.mixer, TTTBase) and block.mixer.mode == "naive":
        log_once("checkpoint-naive-ttt", "gradient checkpointing: TTT blocks in mode 'naive' run without it (the "
                 "reference's torch.func inner gradients refuse checkpointing); mode 'chunk' gives the same gradients "
                 "and can be checkpointed", log=logger)  # fmt: skip
        return False
    return True


class BlockState(NamedTuple):
    """State of one block: the pre-conv state ``[B, C, K - 1]`` (Mamba backbone, else None) and the mixer's state."""

    conv: Tensor | None
    mixer: Any


class LMState(NamedTuple):
    """State of the whole LM after ``position`` tokens: one :class:`BlockState` per layer (O(1) in T for TTT)."""

    layers: tuple[BlockState, ...]
    position: int


@dataclass
class CausalLMOutput:
    """``logits [B, T, V]`` (at least float32), ``loss`` (next-token CE, given labels) and the ``state`` after."""

    logits: Tensor
    loss: Tensor | None
    state: LMState


class Block(nn.Module):
    """``[h += Conv(RMSNorm(h))]; h += mixer(RMSNorm(h)); h += SwiGLU(RMSNorm(h))`` (the conv only if pre_conv)."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        C, eps = config.hidden_size, config.rms_norm_eps
        self.conv_norm = RMSNorm(C, eps) if config.pre_conv else None
        self.conv = CausalConv1d(C, config.conv_kernel) if config.pre_conv else None
        self.seq_norm = RMSNorm(C, eps)
        self.mixer = build_mixer(config.mixer, C, config.num_attention_heads, **config.mixer_kwargs())
        self.ffn_norm = RMSNorm(C, eps)
        self.mlp = SwiGLU(C, config.intermediate_size)

    def init_state(self, batch_size: int, device=None, dtype=None) -> BlockState:
        conv = self.conv.init_state(batch_size, device, dtype) if self.conv is not None else None
        return BlockState(conv, self.mixer.init_state(batch_size, device, dtype))

    def forward(self, h: Tensor, state: BlockState | None = None) -> tuple[Tensor, BlockState]:
        if state is not None and (state.conv is None) != (self.conv is None):
            # a pre-conv state of None would silently restart the conv from zeros mid-sequence
            raise ValueError(f"state {'lacks' if state.conv is None else 'has'} a pre-conv state but this model has "
                             f"pre_conv={self.conv is not None}: a state from a model with another backbone/pre_conv?")
        return self.residuals(
            h,
            lambda x: self.conv(x, None if state is None else state.conv),
            lambda x: self.mixer(x, None if state is None else state.mixer),
        )

    def residuals(
        self, h: Tensor, conv: Callable[[Tensor], tuple[Tensor, Any]] | None,
        mixer: Callable[[Tensor], tuple[Tensor, Any]],
    ) -> tuple[Tensor, BlockState]:
        """The block on ``h [B, T, C]`` with the conv and the mixer called as ``conv(x) -> (y, state)`` and
        ``mixer(x) -> (y, state)`` (the eager forward, or a static decode step: ``innerloop.models.lm.decoding``)."""
        conv_state = None
        if self.conv is not None:
            y, conv_state = conv(self.conv_norm(h))
            h = h + y
        y, mixer_state = mixer(self.seq_norm(h))
        h = h + y
        h = h + self.mlp(self.ffn_norm(h))
        return h, BlockState(conv_state, mixer_state)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int = 1) -> None:
    """Clear errors for out-of-range sampling parameters (NaN included), before any token is sampled."""
    if not 0 <= temperature < float("inf"):  # inf: every logit / inf is 0, so top-k and top-p would keep every token
        raise ValueError(f"temperature must be >= 0 (0 = greedy) and finite, got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 1, or 0/None for no top-k filter, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 = no nucleus filter), got {top_p}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


def sample_next(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample one token per row from ``logits [B, V]``; ``temperature == 0`` is greedy. Returns ``[B]`` long.

    The logits are scaled after subtracting each row's maximum (softmax, top-k and top-p are unchanged by it), so a
    temperature small enough to overflow float32 (e.g. ``1e-40``) cannot give ``inf - inf``: the other tokens fall to
    ``-inf`` and the row samples its argmax, the limit of the distribution as the temperature goes to 0.
    """
    if not 0 <= temperature < float("inf"):
        raise ValueError(f"temperature must be >= 0 and finite, got {temperature}")
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float()
    # a temperature below float32's smallest normal would be 0 in float32 (0 / 0 at the maximum): same limit
    logits = (logits - logits.amax(-1, keepdim=True)) / max(temperature, torch.finfo(torch.float32).tiny)
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # keep the smallest prefix whose mass reaches top_p (>= 1 token)
        logits = logits.scatter(-1, idx, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def check_lm_state(state: Any, num_layers: int) -> None:
    """Raise ``ValueError`` unless ``state`` is an :class:`LMState` of ``num_layers`` layers."""
    if not isinstance(state, LMState) or len(state.layers) != num_layers:
        got = f"{len(state.layers)} layers" if isinstance(state, LMState) else type(state).__name__
        raise ValueError(f"state must be an LMState with {num_layers} layers (from init_state / forward), got {got}: "
                         f"a state of another model?")


class CausalLM(nn.Module):
    """Token embedding -> blocks -> RMSNorm -> lm_head (tied to the embedding by default).

    Setting ``model.gradient_checkpointing = True`` recomputes each block's activations in the backward pass instead
    of keeping them (training mode with autograd only; off by default; transformers' ``gradient_checkpointing_enable``
    on the ``innerloop.models.hf`` wrapper sets it).

    Args:
        config (LMConfig): sizes, mixer and backbone.

    Examples:
        >>> cfg = LMConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        ...                num_attention_heads=4, mini_batch_size=4)
        >>> model = CausalLM(cfg)
        >>> out = model(torch.randint(0, 99, (2, 7)))
        >>> out.logits.shape, out.state.position
        (torch.Size([2, 7, 99]), 7)
    """

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        # Activation (gradient) checkpointing of every block in training: off by default. transformers'
        # ``gradient_checkpointing_enable`` sets both attributes; None means torch's non-reentrant checkpoint.
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func = None

    def _init_weights(self, module: nn.Module) -> None:
        # As HF/the TTT authors: every Linear and the embedding ~ N(0, initializer_range), Linear biases zero.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None):
        """State before the first token (also what ``forward(state=None)`` starts from)."""
        w = self.embed_tokens.weight
        device, dtype = device or w.device, dtype or w.dtype
        return LMState(tuple(b.init_state(batch_size, device, dtype) for b in self.layers), 0)

    def forward(self, input_ids: Tensor, state: LMState | None = None, labels: Tensor | None = None) -> CausalLMOutput:
        """Run ``input_ids [B, T]`` from ``state`` (None = sequence start).

        Args:
            input_ids (Tensor): ``[B, T]`` token ids in ``[0, vocab_size)``.
            state (LMState, Optional): state after earlier tokens of the same sequences. Default: None.
            labels (Tensor, Optional): ``[B, T]`` targets aligned with ``input_ids`` (shifted inside, as HF);
                ``-100`` is ignored. Default: None.
        Returns:
            CausalLMOutput: ``logits [B, T, V]`` (>= float32), ``loss`` or None, ``state`` after the last token.
        """
        h, new_state = self.hidden_states(input_ids, state)
        logits = self.lm_head(h)
        logits = logits.to(at_least_float32(logits.dtype))  # at least fp32, as the authors
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels {tuple(labels.shape)} must match input_ids {tuple(input_ids.shape)}")
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise ValueError(f"labels must be integer token ids, got {labels.dtype}")  # int32 taken, as input_ids
            if labels.shape[1] < 2:  # the loss is over (token t, label t+1) pairs: one token has none (NaN)
                raise ValueError(f"labels need at least 2 tokens (the loss predicts token t+1 from t), got "
                                 f"{tuple(labels.shape)}; call without labels for one token")  # fmt: skip
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten().long(), ignore_index=-100)
        return CausalLMOutput(logits, loss, new_state)

    def hidden_states(self, input_ids: Tensor, state: LMState | None = None) -> tuple[Tensor, LMState]:
        """The final (normed) hidden states ``[B, T, C]`` of ``input_ids [B, T]`` from ``state``, before lm_head,
        and the state after the last token (what :meth:`forward` computes its logits from)."""
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int32, torch.int64):
            got = f"{input_ids.dtype} {tuple(input_ids.shape)}"
            raise ValueError(f"input_ids must be an integer [B, T] tensor, got {got}")
        check_token_ids(input_ids, self.config.vocab_size)
        if state is not None:
            check_lm_state(state, len(self.layers))
        h = self.embed_tokens(input_ids)
        new_states = []
        for i, block in enumerate(self.layers):
            block_state = None if state is None else state.layers[i]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and _checkpointable(block):
                func = self._gradient_checkpointing_func or partial(checkpoint, use_reentrant=False)
                h, s = func(block, h, block_state)  # recomputed in backward: activations of one block at a time
            else:
                h, s = block(h, block_state)
            new_states.append(s)
        position = (0 if state is None else state.position) + input_ids.shape[1]
        return self.norm(h), LMState(tuple(new_states), position)

    def static_state(self, state: LMState, max_length: int) -> StaticLMState:
        """Fixed-shape decode buffers holding ``state`` (e.g. after a prefill) for up to ``max_length`` positions in
        all (attention's cache is preallocated to it), for :meth:`static_step` (``innerloop.models.lm.decoding``)."""
        return build_static_state(self, state, max_length)

    def static_step(self, input_ids: Tensor, static: StaticLMState) -> Tensor:
        """One token per row ``input_ids [B, 1]`` from ``static`` (advanced in place): ``logits [B, 1, V]``, the
        values of ``self(input_ids, state).logits``, with the same kernels at every position (CUDA-graph ready)."""
        return static_step(self, static, input_ids)

    @torch.no_grad()
    def generate(
        self, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
        top_p: float | None = None, generator: torch.Generator | None = None, *, cuda_graph: bool | None = None,
        static_cache: bool | None = None, max_length: int | None = None,
    ) -> Tensor:
        """Prefill ``input_ids [B, T]`` once, then decode ``max_new_tokens`` one at a time from the state.

        Sampling (:func:`sample_next`) happens on the host side of each step in the same order whichever way the
        steps run, so the same ``generator`` draws the same random numbers. The ways compute the logits in another
        order of floating-point operations (static buffers and eager agree to ~1e-6 in float32), so the tokens are
        the same unless a draw falls within that of a boundary between two tokens: equal in the tests (greedy and
        seeded sampling), not guaranteed bit for bit.

        Args:
            cuda_graph (bool | None, Optional): capture the one-token step of the whole model in a CUDA graph over
                static buffers and replay it per token (no per-kernel launch cost). None: on when the model is on
                CUDA (unless ``static_cache=False``). True on another device, or with ``static_cache=False``, is an
                error; a failed capture is logged and the steps run without it. Default: None.
            static_cache (bool | None, Optional): decode with fixed-shape state buffers (:meth:`static_step`) even
                without a graph (the same tokens but for ~1e-6 near-ties; a check, or a mixer-by-mixer comparison).
                None: as ``cuda_graph``. Default: None.
            max_length (int | None, Optional): positions the static buffers hold (attention's preallocated cache);
                at least ``T + max_new_tokens``. None: exactly that. Default: None.
        Returns:
            Tensor: ``[B, T + max_new_tokens]``, the prompt followed by the sampled tokens.
        """
        steps = self.iter_generate(input_ids, max_new_tokens, temperature, top_k, top_p, generator,
                                   cuda_graph=cuda_graph, static_cache=static_cache, max_length=max_length)
        return torch.cat([input_ids, *steps], dim=1)

    def iter_generate(
        self, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
        top_p: float | None = None, generator: torch.Generator | None = None, *, cuda_graph: bool | None = None,
        static_cache: bool | None = None, max_length: int | None = None,
    ) -> Iterator[Tensor]:
        """:meth:`generate` one token at a time: yields each sampled ``[B, 1]`` as soon as it exists (streaming).

        The arguments are checked when called (not at the first ``next``); the prefill runs at the first ``next``.
        """
        if input_ids.dim() != 2 or input_ids.shape[1] < 1:
            raise ValueError(f"generate needs a non-empty prompt [B, T], got {tuple(input_ids.shape)}")
        check_sampling(temperature, top_k, top_p, max_new_tokens)
        on_cuda = self.embed_tokens.weight.device.type == "cuda"
        auto = cuda_graph is None and static_cache is None
        if cuda_graph and static_cache is False:
            raise ValueError("cuda_graph=True runs over static buffers; pass static_cache=True (or None)")
        if cuda_graph and not on_cuda:
            raise ValueError(f"cuda_graph=True needs the model on a CUDA device, it is on "
                             f"{self.embed_tokens.weight.device}; pass cuda_graph=None or False")
        cuda_graph = on_cuda and static_cache is not False if cuda_graph is None else cuda_graph
        static_cache = cuda_graph if static_cache is None else static_cache
        total = input_ids.shape[1] + max_new_tokens
        if max_length is not None and max_length < total:
            raise ValueError(f"generate reaches length {total} (prompt {input_ids.shape[1]} + max_new_tokens "
                             f"{max_new_tokens}) but max_length={max_length}; pass max_length >= {total} or None")
        return self._decode(input_ids, max_new_tokens, (temperature, top_k, top_p, generator), bool(cuda_graph),
                            bool(static_cache), auto, max_length or total)

    @torch.no_grad()
    def _decode(self, input_ids: Tensor, max_new_tokens: int, sampling: tuple, cuda_graph: bool, static_cache: bool,
                auto: bool, max_length: int) -> Iterator[Tensor]:
        out = self(input_ids)
        logits, state, step = out.logits[:, -1], out.state, None
        del out
        self.decode_path = "eager"  # which way the last generate() ran its steps (a check for tests and benchmarks)
        if static_cache and max_new_tokens > 1:
            try:
                step = self._static_decoder(state, max_length, input_ids.shape[0], cuda_graph)
                state = None  # the static buffers hold a copy: free the eager state (attention's cache)
            except TypeError as e:  # a mixer without a static step (innerloop.layers.decode)
                if not auto:
                    raise
                log_once(f"generate-static:{self.config.mixer}", "generate: %s; decoding eagerly", e, log=logger)
        for i in range(max_new_tokens):
            nxt = sample_next(logits, *sampling)[:, None]
            yield nxt
            if i + 1 < max_new_tokens:
                if step is not None:
                    logits = step(nxt)[:, -1]
                else:
                    out = self(nxt, state)
                    logits, state = out.logits[:, -1], out.state

    def _static_decoder(self, state: LMState, max_length: int, batch_size: int,
                        cuda_graph: bool) -> Callable[[Tensor], Tensor]:
        """The step function of :meth:`generate`: a CUDA graph's replay, else :meth:`static_step` (the decode path
        is recorded in ``self.decode_path``)."""
        static = self.static_state(state, max_length)
        self.decode_path = "static"
        if not cuda_graph:
            return partial(static_step, self, static)
        try:
            step = CUDAGraphStep(self, static, batch_size)
        except Exception as e:  # noqa: BLE001 - any capture failure: log it and decode without the graph
            logger.warning("generate: capturing the decode step in a CUDA graph failed (%s: %s); decoding without "
                           "the graph (same tokens, slower)", type(e).__name__, e)
            return partial(static_step, self, static)
        self.decode_path = "cuda_graph"
        return step
