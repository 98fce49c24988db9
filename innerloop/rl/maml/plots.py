"""The MAML-RL figure (Finn et al. 2017, Fig. 5 shape): return against the number of adaptation steps, one line per
policy with 95% CIs over held-out tasks (matplotlib with the Agg backend, imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from innerloop._io import pyplot

__all__ = ["plot_adaptation"]


def plot_adaptation(metrics: dict[str, Any], out: str | Path) -> Path:
    """Plot ``metrics["policies"]`` (from :func:`~innerloop.rl.maml.trainer.evaluate_policies`) to ``out``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, body in metrics["policies"].items():
        steps = sorted(body["steps"], key=int)
        ax.errorbar([int(s) for s in steps], [body["steps"][s]["mean"] for s in steps],
                    yerr=[body["steps"][s]["ci95"] for s in steps], marker="o", capsize=3, label=name)  # fmt: skip
    ax.set_xticks(sorted({int(s) for body in metrics["policies"].values() for s in body["steps"]}))
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return")
    ax.set_title(f"{metrics['env']}: {metrics['eval_tasks']} held-out tasks")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)
