"""Collect forecasting runs and their test-time adaptation results into one markdown table (RESULTS.md).

Usage: ``python scripts/forecast_adapt_table.py RUNS_DIR`` where ``RUNS_DIR`` holds one folder per run named
``<data>-<mixer or dlinear>-H<horizon>`` with ``metrics.json`` (from ``innerloop forecast train``) and, where run,
``adapt-state.json`` / ``adapt-online.json`` (from ``innerloop forecast eval --adapt ...``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = ["dlinear", "attention", "ttt_linear", "ttt_mlp", "mamba", "lstm", "gru"]


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _cell(r: dict | None, key: str = "mse") -> str:
    return "—" if r is None else f"{r[key]:.4f}"


def _delta(r: dict | None) -> str:
    if r is None:
        return "—"
    return f"{r['mse']:.4f} ({r['mse'] - r['frozen_mse']:+.4f})"


def _cost(r: dict | None) -> str:
    """Extra wall time per window over the frozen path of the same walk, and the extra numbers kept (per stream)."""
    if r is None:
        return "—"
    if r["adapt"] == "state":
        return f"{r['extra_ms_per_window']:+.1f} ms; {r['extra_floats'] // r['settings']['streams']:,} floats/stream"
    return f"{r['extra_ms_per_window']:+.1f} ms; {r['params_updated']:,} params"


def main(root: str) -> None:
    rows = []
    for d in sorted(Path(root).iterdir()):
        m = _load(d / "metrics.json")
        if m is None:
            continue
        name = d.name.split("-")[1]
        rows.append((m["data"], m["horizon"], ORDER.index(name) if name in ORDER else 99, name, m,
                     _load(d / "adapt-state.json"), _load(d / "adapt-online.json")))  # fmt: skip
    print("| data | H | backbone | params | test MSE / MAE (frozen) | frozen ms/window | state: MSE (change) | "
          "state cost | online: MSE (change) | online cost |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for data, h, _, name, m, st, on in sorted(rows, key=lambda r: r[:3]):
        print(f"| {data} | {h} | {name} | {m['num_params']:,} | {m['test_mse']:.4f} / {m['test_mae']:.4f} | "
              f"{(on or st or {}).get('frozen_ms_per_window', float('nan')):.1f} | "
              f"{_delta(st)} | {_cost(st)} | {_delta(on)} | {_cost(on)} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", nargs="?", default="runs", help="folder of run folders; default: runs")
    args = parser.parse_args()
    if not Path(args.runs_dir).is_dir():
        parser.error(f"{args.runs_dir} is not a folder: give the folder that holds the forecasting run folders")
    main(args.runs_dir)
