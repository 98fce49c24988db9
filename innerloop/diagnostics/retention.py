"""Memory retention: how well the first token can be decoded from a mixer's state after ``n`` more steps.

The seed's exercises ("how much of the first token survives a length-5 vs a length-50 sequence; what does a larger
hidden state buy?") as a measurement. A sequence is ``[x_1, d_1 .. d_n]``: ``x_1`` uniform over ``vocab_size``
symbols, then ``n`` random distractor tokens from the same vocabulary. The recurrent state after the last token
(every tensor of every layer's state, flattened: ``h`` (and ``c``) of the RNNs, conv + SSM state of Mamba, the inner
weights of TTT, the KV cache of attention) is read by a ridge-regression probe fitted to predict ``x_1`` one-hot on
``n_train`` sequences; the reported number is the probe's accuracy on ``n_test`` fresh sequences (chance
``1 / vocab_size``). ``train_steps > 0`` first trains the model to output ``x_1`` at the last step (else the probe
reads a randomly initialised model: what the dynamics keep by themselves).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from innerloop._io import pyplot, write_csv
from innerloop.diagnostics._fit import fit
from innerloop.layers import KVCache, RNNState
from innerloop.synth.model import SynthModel

__all__ = ["probe_accuracy", "retention", "run_retention", "state_features"]


def state_features(state: Any, batch_size: int) -> Tensor:
    """Every tensor of a (list of) mixer state(s), flattened per sequence: ``[B, F]`` float32."""
    parts: list[Tensor] = []

    def walk(s: Any) -> None:
        if isinstance(s, RNNState):
            for t in s:
                if t is not None:
                    parts.append(t.transpose(0, 1).reshape(batch_size, -1))  # [L, B, S] -> [B, L*S]
        elif isinstance(s, KVCache):
            parts.extend(t.reshape(batch_size, -1) for t in (s.keys, s.values))
        elif isinstance(s, Tensor):
            parts.append(s.reshape(batch_size, -1))
        elif isinstance(s, (tuple, list)):
            for v in s:
                walk(v)
        elif dataclasses.is_dataclass(s):
            for f in dataclasses.fields(s):
                walk(getattr(s, f.name))

    walk(state)
    if not parts:
        raise ValueError(f"no tensors found in state of type {type(state).__name__}")
    return torch.cat([p.float() for p in parts], 1)


def probe_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                   ridge: float = 1e-2) -> float:
    """Fit ridge regression ``features -> one-hot`` (dual form, standardised features); test accuracy."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = ((train_x - mu) / sd).double(), ((test_x - mu) / sd).double()
    Y = F.one_hot(train_y, num_classes).double() - 1.0 / num_classes
    n, d = a.shape
    if d > n:  # dual: W = A^T (A A^T + λ I)^{-1} Y, λ = ridge * d as in the primal branch (the same W)
        K = a @ a.T + ridge * d * torch.eye(n, dtype=a.dtype)
        pred = b @ (a.T @ torch.linalg.solve(K, Y))
    else:
        K = a.T @ a + ridge * d * torch.eye(d, dtype=a.dtype)
        pred = b @ torch.linalg.solve(K, a.T @ Y)
    return float((pred.argmax(1) == test_y).float().mean())


def _sequences(n: int, steps: int, vocab: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    x = torch.randint(0, vocab, (n, steps + 1), generator=g)
    return x, x[:, 0].clone()


def _final_state_features(model: SynthModel, x: Tensor, batch: int = 256) -> Tensor:
    feats = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            xb = x[i : i + batch]
            _, state = model(xb)
            feats.append(state_features(state, xb.shape[0]))
    return torch.cat(feats)


def retention(mixer: str, hidden_size: int, steps: int, vocab_size: int = 8, n_train: int = 512, n_test: int = 256,
              train_steps: int = 0, num_layers: int = 1, seed: int = 0, progress: bool = False) -> float:
    """Probe accuracy for decoding ``x_1`` from the state after ``steps`` more tokens (see the module docstring)."""
    if steps < 0 or vocab_size < 2 or hidden_size < 1 or n_train < 2 or n_test < 1:
        raise ValueError(f"need steps >= 0, vocab_size >= 2, hidden_size >= 1, n_train >= 2 (the probe standardises "
                         f"its features over them), n_test >= 1; got {steps}, {vocab_size}, {hidden_size}, {n_train}, "
                         f"{n_test}")
    torch.manual_seed(seed)
    model = SynthModel(mixer, hidden_size, num_layers, 2, vocab_size=vocab_size, out_features=vocab_size)
    g = torch.Generator().manual_seed(seed + 1)
    if train_steps > 0:

        def loss_fn(step: int) -> Tensor:
            x, y = _sequences(32, steps, vocab_size, g)
            out, _ = model(x)
            return F.cross_entropy(out[:, -1], y)

        fit(model, train_steps, loss_fn, lr=3e-3, clip=1.0, progress=progress,
            desc=f"{mixer} h={hidden_size} n={steps}")  # fmt: skip
    model.eval()
    xa, ya = _sequences(n_train, steps, vocab_size, g)
    xb, yb = _sequences(n_test, steps, vocab_size, g)
    return probe_accuracy(_final_state_features(model, xa), ya, _final_state_features(model, xb), yb, vocab_size)


def run_retention(mixers: list[str], hidden_sizes: list[int], steps: list[int], out: str | Path, vocab_size: int = 8,
                  n_train: int = 512, n_test: int = 256, train_steps: int = 0, seed: int = 0,
                  progress: bool = False) -> list[dict]:  # fmt: skip
    """Grid of :func:`retention`; writes ``out/retention.csv`` and ``out/retention.png`` (accuracy vs steps).

    ``progress`` shows a bar over each model's training (``train_steps > 0``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in mixers:
        for h in hidden_sizes:
            for n in steps:
                acc = retention(m, h, n, vocab_size, n_train, n_test, train_steps, seed=seed, progress=progress)
                rows.append({"mixer": m, "hidden_size": h, "steps": n, "probe_acc": acc, "chance": 1 / vocab_size})
                print(f"{m:>10} hidden {h:>4} after {n:>4} steps: probe accuracy {acc:.3f}", flush=True)
    write_csv(rows, out / "retention.csv")
    _plot(rows, out / "retention.png", vocab_size)
    return rows


def _plot(rows: list[dict], path: Path, vocab: int) -> None:
    plt = pyplot()

    sizes = list(dict.fromkeys(r["hidden_size"] for r in rows))
    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.8), sharey=True, squeeze=False)
    for ax, h in zip(axes[0], sizes):
        for m in mixers:
            pts = sorted((r["steps"], r["probe_acc"]) for r in rows if r["mixer"] == m and r["hidden_size"] == h)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=m)
        ax.axhline(1 / vocab, color="gray", ls=":", label="chance")
        ax.set_xscale("log")
        ax.set_title(f"hidden size {h}")
        ax.set_xlabel("steps after the first token")
    axes[0][0].set_ylabel("first token decoded from the state")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
