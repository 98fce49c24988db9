"""Gradient flow through time: ``‖∂L/∂h_t‖`` against the distance ``T - 1 - t`` from the loss, for any mixer.

``h_t`` is the representation entering the first mixer block at step ``t`` (the embedded input, ``[B, T, C]``, before
the block's RMSNorm), so ``∂L/∂h_t`` is everything the loss at the last step sends back to step ``t`` through the
recurrence (for a one-layer vanilla RNN and ``t < T - 1``, ``J_norm(h_t)^T W_xh^T ∂L/∂a_t`` with ``a_t`` the
pre-activation and ``J_norm`` the norm's Jacobian). Vanishing gradients show as a norm decaying with distance,
exploding ones as a norm growing with it. The loss is the adding problem's (scored at the last step only), so every
step's gradient must travel the whole distance.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from innerloop._io import pyplot, write_csv
from innerloop.data.synthetic import make_task
from innerloop.runs import ConfigMismatchError, TrainingDivergedError
from innerloop.synth.harness import SynthConfig, train
from innerloop.synth.model import SynthModel

__all__ = ["gradient_norms", "run_gradient_flow"]


def gradient_norms(model: SynthModel, inputs: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """``‖∂L/∂h_t‖`` averaged over the batch: ``[T]`` (index ``t``; distance from the loss is ``T - 1 - t``).

    Args:
        model (SynthModel): any mixer; its parameters' ``.grad`` are left untouched.
        inputs, targets, mask: a batch as :class:`innerloop.data.synthetic.SynthBatch` lays it out.
    """
    h = model.embed_inputs(inputs).detach().requires_grad_(True)  # [B, T, C]
    out, _ = model.forward_embedded(h)
    task_kind = "classification" if targets.dtype == torch.long else "regression"
    if task_kind == "classification":
        loss = torch.nn.functional.cross_entropy(out[mask], targets[mask])
    else:
        loss = ((out - targets) ** 2).mean(-1)[mask].mean()
    (g,) = torch.autograd.grad(loss, h)
    return g.norm(dim=-1).mean(0)  # [T]


def run_gradient_flow(mixers: list[str], out: str | Path, length: int = 100, hidden_size: int = 32,
                      num_layers: int = 1, train_steps: int = 200, clip_norm: float = 1.0, lr: float = 1e-2,
                      batch_size: int = 32, seed: int = 0) -> list[dict]:
    """For each mixer: gradient norms at init, after training without clipping, and after training with clipping.

    Writes ``out/gradient_flow.csv`` (mixer, phase, distance, grad_norm, relative = grad_norm / its value at
    distance 0, which separates the decay with distance from the overall loss scale) and ``out/gradient_flow.png``
    (relative norms, one panel per phase, log scale). Training is on the adding problem at ``length``
    (``train_steps = 0`` skips it).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task = make_task("adding")
    probe = task.sample(batch_size, length, torch.Generator().manual_seed(seed + 7))
    rows: list[dict] = []
    for mixer in mixers:
        torch.manual_seed(seed)
        init = SynthModel(mixer, hidden_size, num_layers, 2, in_features=2, out_features=1)
        phases = {"init": init}
        if train_steps > 0:
            for phase, clip in (("trained_no_clip", 0.0), (f"trained_clip_{clip_norm:g}", clip_norm)):
                cfg = SynthConfig(task="adding", mixer=mixer, hidden_size=hidden_size, num_layers=num_layers,
                                  steps=train_steps, batch_size=batch_size, lr=lr, train_length=length,
                                  eval_lengths=[length], clip_norm=clip, seed=seed, log_every=max(1, train_steps // 10),
                                  out=str(out / "runs" / f"{mixer}-{phase}"))
                try:
                    try:
                        _, phases[phase] = train(cfg)
                    except ConfigMismatchError:  # this folder's run was made with other settings: redo it
                        _, phases[phase] = train(cfg, fresh=True)
                except TrainingDivergedError:  # diverged without clipping: itself a result
                    phases[phase] = None
        for phase, model in phases.items():
            if model is None:
                norms = torch.full((length,), float("nan"))
            else:
                norms = gradient_norms(model, probe.inputs, probe.targets, probe.mask)
            last = float(norms[-1])
            for t, v in enumerate(norms.tolist()):
                rel = v / last if last > 0 else float("nan")
                rows.append({"mixer": mixer, "phase": phase, "distance": length - 1 - t, "grad_norm": v,
                             "relative": rel})
    write_csv(rows, out / "gradient_flow.csv", ["mixer", "phase", "distance", "grad_norm", "relative"])
    _plot(rows, out / "gradient_flow.png", length)
    return rows


def _plot(rows: list[dict], path: Path, length: int) -> None:
    plt = pyplot()

    phases = list(dict.fromkeys(r["phase"] for r in rows))
    mixers = list(dict.fromkeys(r["mixer"] for r in rows))
    fig, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 3.8), sharey=True, squeeze=False)
    for ax, phase in zip(axes[0], phases):
        for m in mixers:
            pts = sorted((r["distance"], r["relative"]) for r in rows if r["mixer"] == m and r["phase"] == phase)
            ax.plot([p[0] for p in pts], [max(p[1], 1e-30) for p in pts], label=m)
        ax.set_yscale("log")
        ax.set_title(phase)
        ax.set_xlabel("distance from the loss (steps)")
    axes[0][0].set_ylabel("‖∂L/∂h_t‖ / ‖∂L/∂h_{T-1}‖")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"gradient flow on the adding problem, T = {length}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

