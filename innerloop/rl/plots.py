"""Plots for RL² runs (matplotlib with the Agg backend, imported lazily): learning curves from each run's ``log.csv``
against the classic baselines of ``innerloop rl baselines --out DIR`` (``DIR/baselines.csv``)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from innerloop._io import pyplot

__all__ = ["plot_rl2_curves"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _config(run: Path) -> dict:
    cfg_path = run / "config.json"
    return json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}


def _label(run: Path) -> str:
    cfg = _config(run)
    return f"RL² {cfg.get('mixer', '?')} ({run.name})" if cfg else run.name


# ``innerloop rl baselines`` plays MDPs of these sizes only (its table says "mdp S=10 A=5 H=10")
_BASELINE_MDP = {"states": 10, "actions": 5, "horizon": 10}


def _trials_of(settings: dict) -> dict:
    """The settings that define an RL² trial (``describe()``'s): env, arms (bandit) or MDP sizes, episodes."""
    env = settings.get("env")
    keys = ("arms",) if env == "bandit" else tuple(_BASELINE_MDP) if env == "mdp" else ()
    return {"env": env, **{k: settings.get(k) for k in keys}, "episodes": settings.get("episodes")}


def _check_same_trials(run: Path, cfg: dict, row: dict[str, str], path: Path) -> None:
    """Refuse a baselines.csv row of other trials than the RL² run's (env, arms or MDP sizes, episodes): its line
    would be drawn beside the run's curve as a baseline of the same task, with nothing in the plot saying otherwise.
    Settings missing on either side (a hand-written file, an old config) are not compared."""
    if row.get("env") == "mdp":
        row = {**_BASELINE_MDP, **row}
    ours, theirs = _trials_of(cfg), _trials_of(row)
    differ = [k for k in {**ours, **theirs} if ours.get(k) not in (None, "") and theirs.get(k) not in (None, "")
              and str(ours[k]) != str(theirs[k])]  # fmt: skip
    if differ:
        def text(d: dict) -> str:
            return ", ".join(f"{k} {v}" for k, v in d.items() if v not in (None, ""))

        raise ValueError(f"--baselines {path}: {row.get('baseline')} was played on other trials ({text(theirs)}) "
                         f"than the RL² run {run} ({text(ours)}), so its line would not be a baseline of that run; "
                         f"give the baselines.csv of `innerloop rl baselines` with the run's settings")  # fmt: skip


def plot_rl2_curves(runs: Sequence[str | Path], out: str | Path, baselines: str | Path | None = None) -> Path:
    """Mean total reward per trial against PPO step for each run, with the baselines as horizontal lines.

    Args:
        runs (Sequence[str | Path]): RL² run directories (made by ``innerloop rl train --algo rl2``), each with a
            ``log.csv`` holding ``step``, ``return`` (training trials) and ``val_return`` (fixed test trials).
        out (str | Path): the PNG to write.
        baselines (str | Path | None, Optional): a ``baselines.csv`` of ``innerloop rl baselines --out``; each row's
            ``mean`` is drawn as a dashed line; every row must be of the runs' trials (env, arms or MDP sizes,
            episodes). Default: None.

    Returns:
        Path: ``out``.

    Raises:
        ValueError: a baseline of ``baselines`` was played on other trials than a run's.
    """
    logs = []
    for run in map(Path, runs):
        log = run / "log.csv"
        if not log.is_file():
            raise FileNotFoundError(f"{log} does not exist: give run directories made by `innerloop rl train --algo "
                                    f"rl2 --out DIR` (they hold log.csv)")  # fmt: skip
        rows = _rows(log)
        if not rows or not {"step", "return"} <= set(rows[0]):
            raise ValueError(f"{log} has no 'step'/'return' columns: it is not the log of an RL² run")
        logs.append((_label(run), rows))
    lines: list[dict[str, str]] = []
    if baselines is not None:  # checked before any drawing: a wrong file is one clear error, not a KeyError
        path = Path(baselines)
        if path.is_dir():
            raise IsADirectoryError(f"--baselines {path} is a folder: give the baselines.csv in it "
                                    f"({path / 'baselines.csv'})")  # fmt: skip
        lines = _rows(path)
        if not lines or not {"baseline", "mean"} <= set(lines[0]):
            raise ValueError(f"{path} has no 'baseline'/'mean' columns: give the baselines.csv written by "
                             f"`innerloop rl baselines --out DIR`")  # fmt: skip
        for run in map(Path, runs):
            cfg = _config(run)
            for row in lines:
                _check_same_trials(run, cfg, row, path)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, rows) in enumerate(logs):
        color = f"C{i % 10}"
        ax.plot([int(r["step"]) for r in rows], [float(r["return"]) for r in rows], color=color, alpha=0.5,
                label=f"{label}, training trials")  # fmt: skip
        val = [(int(r["step"]), float(r["val_return"])) for r in rows if r.get("val_return")]
        if val:
            ax.plot(*zip(*val), "o-", color=color, label=f"{label}, test trials")
    for j, r in enumerate(lines):
        ax.axhline(float(r["mean"]), linestyle="--", linewidth=1, color=f"C{(len(logs) + j) % 10}",
                   label=f"{r['baseline']} {float(r['mean']):.2f}")  # fmt: skip
    ax.set_xlabel("PPO step")
    ax.set_ylabel("total reward per trial")
    ax.set_title("RL² learning curves")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)
