"""The inner loop of a TTT layer made visible (Sun et al. 2024, Figure 4).

Along a sequence, for each token ``x_t`` the self-supervised loss ``ℓ(W; x_t) = 1/2 ‖LN(f_res(XK_t; W)) - (XV_t -
XK_t)‖²`` (summed over the head size, averaged over heads and batch) is evaluated at three inner models:

- ``W_0``: the learned initial weights (no test-time training);
- ``W_{t-1}``: the state before reading ``x_t`` (how well what was learned so far generalises to the new token);
- ``W_t``: the state after reading ``x_t`` (what the gradient step on ``x_t`` achieved).

With mini-batch TTT (``mini_batch_size = b``) ``W_t`` is the inner model the layer uses for the output at ``t``
(:meth:`TTTState.materialize`). The layer examined is the first TTT mixer of a :class:`SynthModel` trained as a
byte-level language model on the bundled tiny-shakespeare (first 90%) for ``train_steps`` steps (0 = at
initialisation); the losses are measured on windows of the last 10%.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from innerloop._io import pyplot, write_csv
from innerloop.data.text import load_bytes, random_windows, split
from innerloop.diagnostics._fit import fit
from innerloop.layers.ttt import TTTBase
from innerloop.synth.model import SynthModel

__all__ = ["inner_losses", "run_ttt_inner"]


@torch.no_grad()
def inner_losses(layer: TTTBase, x: Tensor) -> dict[str, Tensor]:
    """Per-token inner losses of ``layer`` on its input ``x [B, T, C]``: keys ``W0``, ``W_prev``, ``W_t``, each ``[T]``.

    Runs the layer one token at a time, carrying its state, and evaluates the loss of token ``t`` (averaged over
    batch and heads) at the three inner models, with the layer's own views and loss (:meth:`TTTBase.views`,
    :meth:`TTTBase.inner_loss`). Works for TTT-Linear and TTT-MLP, with or without ``share_qk``.
    """
    if not isinstance(layer, TTTBase):
        raise ValueError(f"inner_losses needs a TTTLinear/TTTMLP layer, got {type(layer).__name__}")
    B, T, C = x.shape
    tau = layer.tau()
    state = layer.init_state(B, x.device, x.dtype)
    w0 = state.ttt.params
    res: dict[str, list[float]] = {"W0": [], "W_prev": [], "W_t": []}
    for t in range(T):
        _, XK, XV, _, _ = layer.views(x[:, t : t + 1], state)
        k, v = XK[:, 0], XV[:, 0]  # [B, H, D]
        w_prev = state.ttt.materialize(tau)
        _, state = layer(x[:, t : t + 1], state)
        w_t = state.ttt.materialize(tau)
        for key, w in (("W0", w0), ("W_prev", w_prev), ("W_t", w_t)):
            res[key].append(float(layer.inner_loss(w, k, v).mean()))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in res.items()}


def run_ttt_inner(out: str | Path, mixers: tuple[str, ...] = ("ttt_linear", "ttt_mlp"), hidden_size: int = 64,
                  num_heads: int = 4, num_layers: int = 2, mini_batch_size: int = 16, length: int = 256,
                  train_steps: int = 200, batch_size: int = 8, lr: float = 3e-3, seed: int = 0,
                  progress: bool = False) -> list[dict]:
    """Train a small byte LM per TTT mixer, then write ``out/ttt_inner.csv`` and ``out/ttt_inner.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_data, val_data = split(load_bytes())
    rows = []
    for mixer in mixers:
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        model = SynthModel(mixer, hidden_size, num_layers, num_heads, vocab_size=256, out_features=256,
                           mixer_options={"mini_batch_size": mini_batch_size})

        def loss_fn(step: int, model: SynthModel = model, g: torch.Generator = g) -> Tensor:
            x, y = random_windows(train_data, batch_size, length, g)
            logits, _ = model(x)
            return F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))

        fit(model, train_steps, loss_fn, lr=lr, clip=1.0, progress=progress, desc=f"{mixer} byte LM")
        x, _ = random_windows(val_data, batch_size, length, torch.Generator().manual_seed(seed + 99))
        with torch.no_grad():
            h = model.norms[0](model.embed_inputs(x))  # input of the first TTT layer
        losses = inner_losses(model.mixers[0], h)
        for t in range(length):
            rows.append({"mixer": mixer, "t": t} | {k: float(v[t]) for k, v in losses.items()})
        means = {k: float(v.mean()) for k, v in losses.items()}
        print(f"{mixer}: mean inner loss  W0 {means['W0']:.4f}  W_(t-1) {means['W_prev']:.4f}  "
              f"W_t {means['W_t']:.4f}", flush=True)
    write_csv(rows, out / "ttt_inner.csv")
    _plot(rows, out / "ttt_inner.png", train_steps, mini_batch_size)
    return rows


def _plot(rows: list[dict], path: Path, train_steps: int, mini_batch_size: int = 16) -> None:
    plt = pyplot()

    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    fig, axes = plt.subplots(1, len(mixers), figsize=(5.5 * len(mixers), 3.8), squeeze=False)
    labels = {"W0": "ℓ(W_0; x_t)", "W_prev": "ℓ(W_{t-1}; x_t)", "W_t": "ℓ(W_t; x_t)"}
    for ax, m in zip(axes[0], mixers):
        rs = [r for r in rows if r["mixer"] == m]
        for key, lab in labels.items():
            v = torch.tensor([r[key] for r in rs])
            k = min(mini_batch_size, len(v))  # moving average over one mini-batch for readability
            sm = F.avg_pool1d(v[None, None], k, 1).flatten()
            ax.plot(range(k - 1, len(v)), sm.tolist(), label=lab)
        ax.set_title(f"{m} (after {train_steps} LM steps)")
        ax.set_xlabel("token t")
    k = min(mini_batch_size, len(rows) // len(mixers))  # every mixer is measured on the same tokens
    axes[0][0].set_ylabel("inner self-supervised loss" + (f" (mean of tokens t-{k - 1}..t)" if k > 1 else ""))
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
