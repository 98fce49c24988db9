"""Language-model evaluation: validation loss / bits per byte, and loss by token position over long documents.

Works with any model whose ``forward(input_ids [B, T], state=None)`` returns an object with ``.logits [B, T, V]`` and
``.state`` (:class:`innerloop.models.lm.CausalLM`): long documents run chunk by chunk from the carried state, so
evaluation goes beyond the training context in O(chunk) memory for recurrent mixers (a KV cache for attention).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from innerloop._io import pyplot, write_csv
from innerloop.data.text.windows import gather_windows

__all__ = ["bytes_by_position", "evaluate_lm", "evaluate_lm_full", "full_windows", "lm_loss", "loss_by_position",
           "plot_loss_by_position", "val_starts", "val_windows", "write_position_csv"]

LN2 = math.log(2.0)


def lm_loss(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy (nats) of ``model(inputs [B, T]).logits`` against ``targets [B, T]``."""
    logits = model(inputs).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def _check_split(n: int, context: int) -> None:
    if n <= context:
        raise ValueError(f"validation split of {n} tokens is smaller than one context window of {context} + 1; "
                         f"use a smaller --context or a larger --val-fraction")  # fmt: skip


def val_starts(n: int, context: int, num_windows: int) -> Tensor:
    """Start offsets ``[n_windows]`` of the (at most ``num_windows``, distinct) evenly spaced validation windows of a
    split of ``n`` tokens: what :func:`val_windows` scores."""
    _check_split(n, context)
    return torch.linspace(0, n - context - 1, num_windows).long().unique()


def val_windows(tokens: Tensor | np.ndarray, context: int, num_windows: int) -> tuple[Tensor, Tensor]:
    """``num_windows`` evenly spaced windows of ``tokens`` (a tensor or a token-cache memmap): inputs and next-token
    targets, both ``[n, context]`` int64."""
    starts = val_starts(len(tokens), context, num_windows)
    w = gather_windows(tokens, starts, context + 1)
    return w[:, :-1], w[:, 1:]


@torch.no_grad()
def evaluate_lm(model: nn.Module, tokens: Tensor | np.ndarray, context: int, batch_size: int = 16,
                num_windows: int = 128, token_bytes: Tensor | None = None) -> dict[str, float]:  # fmt: skip
    """Validation loss (nats/token) and bits per byte over fixed evenly spaced windows.

    Args:
        token_bytes (Tensor, Optional): ``[V]`` bytes per token (BPE); bits per byte = total bits / bytes of the
            predicted tokens. Default: None (byte tokens: bits per byte = bits per token).
    Returns:
        dict: ``{"loss": float, "bpb": float}``.
    """
    device = next(model.parameters()).device
    x, y = val_windows(tokens, context, num_windows)
    total, count = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        logits = model(xb).logits
        total += F.cross_entropy(logits.flatten(0, 1).float(), yb.flatten(), reduction="sum").item()
        count += yb.numel()
    loss = total / count
    n_bytes = count if token_bytes is None else int(token_bytes[y].sum())
    return {"loss": loss, "bpb": total / LN2 / n_bytes}


def full_windows(n: int, context: int, stride: int) -> tuple[Tensor, Tensor]:
    """The windows that score every target of a split of ``n`` tokens exactly once (the sliding-window protocol).

    Window ``i`` reads ``context`` tokens from ``starts[i]`` and scores only its last ``scored[i]`` targets: the first
    window scores all ``context`` of its targets, each next one slides ``stride`` tokens on (the last one less, up to
    the split's end) and scores the targets no earlier window scored, so each of those sees at least
    ``context - stride`` tokens before it. ``stride == context``: consecutive non-overlapping windows, each from an
    empty state; a smaller stride gives every scored token more context, for ``context / stride`` times the compute.

    Returns:
        tuple[Tensor, Tensor]: ``starts`` and ``scored``, both ``[W]`` int64; ``scored.sum() == n - 1``.
    """
    _check_split(n, context)
    if not 1 <= stride <= context:
        raise ValueError(f"--stride {stride} must be in 1..{context} (the context): a larger stride would skip "
                         f"tokens")  # fmt: skip
    # [W] targets covered after each window (the last one ends at the split's last token)
    ends = torch.tensor(sorted({*range(context, n - 1, stride), n - 1}))
    scored = torch.diff(ends, prepend=torch.tensor([0]))
    return ends - context, scored


@torch.no_grad()
def evaluate_lm_full(model: nn.Module, tokens: Tensor | np.ndarray, context: int, stride: int | None = None,
                     batch_size: int = 16, token_bytes: Tensor | None = None) -> dict[str, float]:  # fmt: skip
    """Validation loss and bits per byte over every token of ``tokens`` (:func:`full_windows`), not a sample.

    Args:
        model (nn.Module): ``forward(ids [B, T]).logits [B, T, V]``.
        tokens (Tensor | np.ndarray): ``[N]`` the split (a tensor or a token-cache memmap; windows are read a batch
            at a time).
        context (int): tokens per window.
        stride (int, Optional): tokens each window slides on (:func:`full_windows`). Default: None = ``context``.
        batch_size (int, Optional): windows per forward. Default: 16.
        token_bytes (Tensor, Optional): ``[V]`` bytes per token (BPE), as for :func:`evaluate_lm`.
    Returns:
        dict: ``{"loss": nats/token, "bpb": float, "windows": W, "scored_tokens": N - 1}``.
    """
    device = next(model.parameters()).device
    starts, scored = full_windows(len(tokens), context, stride or context)
    keep = torch.arange(context)
    total, count, n_bytes = 0.0, 0, 0
    for i in range(0, len(starts), batch_size):
        w = gather_windows(tokens, starts[i : i + batch_size], context + 1)  # [b, context + 1]
        mask = keep >= context - scored[i : i + batch_size, None]  # [b, context]: the targets this window scores
        logits = model(w[:, :-1].to(device)).logits
        nll = F.cross_entropy(logits.float().transpose(1, 2), w[:, 1:].to(device), reduction="none").cpu()
        total += nll[mask].double().sum().item()
        count += int(mask.sum())
        if token_bytes is not None:
            n_bytes += int(token_bytes[w[:, 1:][mask]].sum())
    n_bytes = n_bytes if token_bytes is not None else count
    return {"loss": total / count, "bpb": total / LN2 / n_bytes, "windows": len(starts), "scored_tokens": count}


@torch.no_grad()
def loss_by_position(model: nn.Module, docs: list[Tensor | np.ndarray], length: int, chunk: int = 256,
                     batch_size: int = 4) -> Tensor:  # fmt: skip
    """Mean next-token loss at every position ``0..length-1`` over the documents at least ``length + 1`` long.

    Each document's first ``length + 1`` tokens run through the model ``chunk`` tokens at a time, carrying the state
    (the paper's Figure 2, right: does the model keep improving as it reads further?).

    Args:
        model (nn.Module): a stateful LM (``forward(ids, state) -> .logits, .state``).
        docs (list[Tensor | np.ndarray]): ``[N_i]`` token tensors or token-cache memmaps (only the prefixes are read).
        length (int): positions to score.
        chunk (int, Optional): tokens per forward call. Default: 256.
        batch_size (int, Optional): documents per batch. Default: 4.
    Returns:
        Tensor: ``[length]`` float64 mean loss (nats) per position.
    """
    long_docs = [d for d in docs if len(d) > length]
    if not long_docs:
        longest = max((len(d) for d in docs), default=0)
        raise ValueError(f"no document has more than {length} tokens (longest: {longest}); lower --length")
    device = next(model.parameters()).device
    total = torch.zeros(length, dtype=torch.float64)
    for i in range(0, len(long_docs), batch_size):
        w = torch.stack([_prefix(d, length + 1) for d in long_docs[i : i + batch_size]]).to(device)  # [b, L + 1]
        state = None
        for s in range(0, length, chunk):
            e = min(s + chunk, length)
            out = model(w[:, s:e], state)
            state = out.state
            nll = F.cross_entropy(out.logits.float().transpose(1, 2), w[:, s + 1 : e + 1], reduction="none")  # [b, c]
            total[s:e] += nll.sum(0).double().cpu()
    return total / len(long_docs)


def bytes_by_position(docs: list[Tensor | np.ndarray], length: int, token_bytes: Tensor) -> Tensor:
    """Mean bytes of the predicted (target) token at every position ``0..length-1``, over the same documents as
    :func:`loss_by_position`: with it, bits per byte over positions ``[s, e)`` = ``sum(loss[s:e]) / ln 2 /
    sum(bytes[s:e])`` (BPE tokens hold several bytes each; byte tokens need none of this).

    Returns:
        Tensor: ``[length]`` float64.
    """
    long_docs = [d for d in docs if len(d) > length]
    if not long_docs:
        raise ValueError(f"no document has more than {length} tokens; lower --length")
    tb = token_bytes.double().cpu()
    return torch.stack([tb[_prefix(d, length + 1)[1:]] for d in long_docs]).mean(0)


def _prefix(doc: Tensor | np.ndarray, n: int) -> Tensor:
    """First ``n`` tokens of ``doc`` as ``[n]`` int64."""
    if isinstance(doc, Tensor):
        return doc[:n].long()
    return torch.from_numpy(np.asarray(doc[:n]).astype(np.int64))


def bucket(losses: Tensor, width: int) -> list[tuple[int, int, float]]:
    """``(start, end, mean loss)`` over consecutive buckets of ``width`` positions."""
    return [(s, min(s + width, len(losses)), losses[s : s + width].mean().item()) for s in range(0, len(losses), width)]


def _bucket_bpb(losses: Tensor, width: int, nbytes: Tensor | None) -> list[tuple[int, int, float, float]]:
    """``(start, end, mean loss, bits per byte)`` per bucket; ``nbytes`` (:func:`bytes_by_position`) for BPE curves,
    None for byte tokens (bits per byte = loss / ln 2)."""
    rows = []
    for s, e, v in bucket(losses, width):
        bpb = v / LN2 if nbytes is None else float(losses[s:e].sum() / LN2 / nbytes[s:e].sum())
        rows.append((s, e, v, bpb))
    return rows


def write_position_csv(curves: dict[str, Tensor], path: str | Path, width: int,
                       bytes_per_position: dict[str, Tensor] | None = None) -> None:  # fmt: skip
    """Write ``name, position_start, position_end, loss, bpb`` rows for every curve bucketed by ``width``.

    ``loss`` is nats per token; ``bpb`` is bits per byte, using ``bytes_per_position[name]``
    (:func:`bytes_by_position`) for a BPE curve (without it a curve is taken to be over byte tokens).
    """
    nb = bytes_per_position or {}
    rows = [{"name": name, "position_start": s, "position_end": e, "loss": f"{v:.6f}", "bpb": f"{b:.6f}"}
            for name, losses in curves.items() for s, e, v, b in _bucket_bpb(losses, width, nb.get(name))]  # fmt: skip
    write_csv(rows, path, ["name", "position_start", "position_end", "loss", "bpb"])


def plot_loss_by_position(curves: dict[str, Tensor], path: str | Path, width: int,
                          train_context: int | dict[str, int] = 0,
                          bytes_per_position: dict[str, Tensor] | None = None) -> None:  # fmt: skip
    """PNG of bits per byte against token position (bucketed by ``width``), one line per curve (BPE curves: give
    their ``bytes_per_position``, as for :func:`write_position_csv`).

    ``train_context``: the training context, drawn as a dashed line; runs trained at different contexts give a
    ``{name: context}`` dict, and each distinct context gets its own line, labelled with the runs it belongs to (0 or
    an empty dict: none)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    nb = bytes_per_position or {}
    colors = {}
    for name, losses in curves.items():
        rows = _bucket_bpb(losses, width, nb.get(name))
        (line,) = ax.plot([(s + e) / 2 for s, e, *_ in rows], [b for *_, b in rows], marker=".", label=name)
        colors[name] = line.get_color()
    contexts = train_context if isinstance(train_context, dict) else {name: train_context for name in curves}
    by_context: dict[int, list[str]] = {}
    for name, c in contexts.items():
        if c:
            by_context.setdefault(int(c), []).append(name)
    for c, names in sorted(by_context.items()):
        if len(by_context) == 1:  # every run trained at this context
            ax.axvline(c, color="gray", ls="--", lw=1, label="training context")
        else:
            color = colors.get(names[0], "gray") if len(names) == 1 else "gray"
            ax.axvline(c, color=color, ls="--", lw=1, label=f"training context of {', '.join(names)}")
    ax.set_xlabel("token position")
    ax.set_ylabel("bits per byte")
    ax.set_title("Loss by token position")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(series: dict[str, tuple[list[float], list[float]]], path: str | Path, xlabel: str, ylabel: str,
                title: str = "", styles: dict[str, dict] | None = None) -> None:  # fmt: skip
    """PNG of several ``name -> (xs, ys)`` line series; ``styles`` maps a name to extra ``plot`` kwargs."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.0))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, label=name, **(styles or {}).get(name, {}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
