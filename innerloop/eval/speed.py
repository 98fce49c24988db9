"""What a longer context costs a causal LM at inference: forward speed, decode speed and decode-state size.

Three numbers per context length ``L``, for one sequence (batch 1), without gradients, inputs built outside the timer:

- **forward tokens/s**: ``L`` / the median seconds of ``model(ids)`` over ``L`` tokens (a prefill, or scoring a text);
- **decode ms/token**: the median seconds of one single-token step right after an ``L``-token prefill, each step
  continuing the state of the one before (the first step is not timed: a KV cache grows its buffer there);
- **state bytes**: the size of the decode state after the ``L`` tokens, exact: the bytes of every tensor it holds.
  A KV cache counts its ``L`` valid positions, not the spare capacity of its buffer; a TTT state holds the inner model
  and its pending gradient, the same size at every ``L``.

The speeds depend on the machine and its load; only ratios measured in one run compare (the models are
timed in turn, call by call, for that reason).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from innerloop.layers.attention import KVCache

__all__ = ["format_speed_table", "measure_speed", "state_bytes"]


def state_bytes(state: Any) -> int:
    """Exact size in bytes of a decode state: the sum over the tensors it holds (tuples, dataclasses, dicts walked).

    A :class:`KVCache` counts its valid keys and values (``length`` positions), not its buffer's spare capacity.
    Python scalars (positions, offsets) and ``None`` count 0.

    Raises:
        TypeError: for an object it cannot size (so nothing is silently left out).
    """
    if state is None or isinstance(state, (bool, int, float, str)):
        return 0
    if isinstance(state, Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, KVCache):
        return state_bytes(state.keys) + state_bytes(state.values)
    if isinstance(state, (tuple, list)):
        return sum(state_bytes(s) for s in state)
    if isinstance(state, dict):
        return sum(state_bytes(s) for s in state.values())
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return sum(state_bytes(getattr(state, f.name)) for f in dataclasses.fields(state))
    raise TypeError(f"state_bytes cannot size a {type(state).__name__}; add it to innerloop.eval.speed.state_bytes")


def _seconds(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


class _Run:
    """One model at one context length: a prefill and single-token steps, each continuing the last state."""

    def __init__(self, model: nn.Module, ids: Tensor) -> None:
        self.model, self.ids, self.tok, self.state = model, ids, ids[:, -1:], None

    def prefill(self) -> None:
        self.state = self.model(self.ids).state

    def step(self) -> None:
        self.state = self.model(self.tok, self.state).state


@torch.no_grad()
def measure_speed(
    models: Mapping[str, nn.Module], lengths: Sequence[int], repeats: int = 5, decode_steps: int = 32, seed: int = 0
) -> dict[str, list[dict[str, float | int]]]:
    """Forward tokens/s, decode ms/token and decode-state bytes of every model at every context length.

    The models are timed in turn, call by call (A, B, A, B, ...), on the same token ids, so a change in the machine's
    load hits them alike and their ratios stay meaningful on a busy machine.

    Args:
        models (Mapping[str, nn.Module]): name -> causal LM called as ``model(ids [B, T], state=None)`` returning
            ``.state`` (:class:`~innerloop.models.lm.CausalLM`), with ``config.vocab_size``; in eval mode.
        lengths (Sequence[int]): context lengths ``L`` (positive).
        repeats (int, Optional): timed forward calls per model and length, after one untimed warm-up call; the
            median counts. Default: 5.
        decode_steps (int, Optional): timed single-token steps per model and length (after one untimed step); the
            median counts. Default: 32.
        seed (int, Optional): seed of the random token ids. Default: 0.
    Returns:
        dict[str, list[dict]]: per model, one dict per length: ``context``, ``forward_seconds`` (median),
        ``forward_tokens_per_s``, ``decode_ms_per_token``, ``state_bytes``.
    Raises:
        ValueError: for no models, an empty ``lengths``, a length < 1, or ``repeats`` / ``decode_steps`` < 1.

    Examples:
        >>> from innerloop.models.lm import CausalLM, LMConfig
        >>> cfg = LMConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...                num_attention_heads=2)
        >>> rows = measure_speed({"ttt": CausalLM(cfg).eval()}, [16, 32], repeats=1, decode_steps=2)["ttt"]
        >>> [r["context"] for r in rows], rows[0]["state_bytes"] == rows[1]["state_bytes"]
        ([16, 32], True)
    """
    if not models:
        raise ValueError("measure_speed needs at least one model")
    if not lengths or any(int(L) < 1 for L in lengths):
        raise ValueError(f"lengths must be positive context lengths, got {list(lengths)}")
    if repeats < 1 or decode_steps < 1:
        raise ValueError(f"repeats and decode_steps must be >= 1, got {repeats} and {decode_steps}")
    cuda = any(next(m.parameters()).device.type == "cuda" for m in models.values())
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    vocab = min(m.config.vocab_size for m in models.values())
    gen = torch.Generator().manual_seed(seed)
    results: dict[str, list[dict[str, float | int]]] = {name: [] for name in models}
    for L in lengths:
        ids = torch.randint(0, vocab, (1, int(L)), generator=gen)
        runs = {name: _Run(m, ids.to(next(m.parameters()).device)) for name, m in models.items()}
        fwd: dict[str, list[float]] = {name: [] for name in runs}
        dec: dict[str, list[float]] = {name: [] for name in runs}
        for r in runs.values():
            r.prefill()  # warm-up: kernels, allocator
        for _ in range(repeats):
            for name, r in runs.items():
                fwd[name].append(_seconds(r.prefill, sync))
        sizes = {name: state_bytes(r.state) for name, r in runs.items()}
        for r in runs.values():
            r.step()  # untimed: a KV cache moves into a growable buffer here
        for _ in range(decode_steps):
            for name, r in runs.items():
                dec[name].append(_seconds(r.step, sync))
        for name in runs:
            f = statistics.median(fwd[name])
            results[name].append({"context": int(L), "forward_seconds": f, "forward_tokens_per_s": int(L) / f,
                                  "decode_ms_per_token": 1e3 * statistics.median(dec[name]),
                                  "state_bytes": sizes[name]})  # fmt: skip
    return results


def format_speed_table(a: list[dict[str, Any]], b: list[dict[str, Any]], name_a: str, name_b: str) -> str:
    """Markdown table of two :func:`measure_speed` results side by side, with ``b``'s cost / ``a``'s cost ratios.

    Every ratio is "how many times cheaper ``a`` is": forward ``a`` tokens/s / ``b`` tokens/s, decode ``b`` ms /
    ``a`` ms, state ``b`` bytes / ``a`` bytes (above 1: ``a`` is faster or smaller).

    Raises:
        ValueError: when the two results were not measured at the same context lengths.
    """
    if [r["context"] for r in a] != [r["context"] for r in b]:
        raise ValueError("both speed results must be measured at the same context lengths")
    lines = [
        f"| context | forward tok/s {name_a} | forward tok/s {name_b} | x | decode ms/token {name_a} "
        f"| decode ms/token {name_b} | x | state bytes {name_a} | state bytes {name_b} | x |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ra, rb in zip(a, b):
        lines.append(
            f"| {ra['context']:,} | {ra['forward_tokens_per_s']:,.0f} | {rb['forward_tokens_per_s']:,.0f} "
            f"| {ra['forward_tokens_per_s'] / rb['forward_tokens_per_s']:.2f} "
            f"| {ra['decode_ms_per_token']:.2f} | {rb['decode_ms_per_token']:.2f} "
            f"| {rb['decode_ms_per_token'] / ra['decode_ms_per_token']:.2f} "
            f"| {ra['state_bytes']:,} | {rb['state_bytes']:,} | {rb['state_bytes'] / max(ra['state_bytes'], 1):.1f} |"
        )
    return "\n".join(lines)
