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


def _backbone(d: Path, m: dict) -> str:
    """The row's backbone from the run's own config (the mixer of a patch model, else the model), not from the folder
    name, which need not follow the ``<data>-<backbone>-H<horizon>`` pattern."""
    cfg = _load(d / "config.json") or {}
    model = m.get("model") or cfg.get("model")
    name = cfg.get("mixer") if model == "patch" else model
    return name or (d.name.split("-") + ["?"])[1]  # the folder name only as a last resort


def _check_walk(path: Path, r: dict | None, m: dict) -> None:
    """Refuse an adaptation result that is not a walk of this run's whole test split with its weights: its MSE would
    sit beside the test MSE of ``metrics.json`` as if of the same windows (``--limit``, ``--split val``, or a run
    trained again after the walk)."""
    if r is None:
        return
    split, windows = r.get("split", "test"), r.get("windows")
    if split != "test" or windows != m["windows"]["test"]:
        raise SystemExit(f"{path}: a walk of {windows} {split} windows, not of the run's {m['windows']['test']} test "
                         f"windows (--limit or --split?); walk the whole test split again: innerloop forecast eval "
                         f"--out {path.parent} --adapt {r.get('adapt')} ...")  # fmt: skip
    if abs(r["frozen_mse"] - m["test_mse"]) > 1e-4 * abs(m["test_mse"]):
        raise SystemExit(f"{path}: its frozen MSE {r['frozen_mse']:.6f} is not the run's test MSE "
                         f"{m['test_mse']:.6f}: it walked other weights (the run was trained again after it); walk "
                         f"it again: innerloop forecast eval --out {path.parent} --adapt {r.get('adapt')} ...")


def main(root: str) -> None:
    rows = []
    for d in sorted(Path(root).iterdir()):
        m = _load(d / "metrics.json")
        if m is None or not {"data", "horizon", "test_mse"} <= m.keys():
            continue  # not a forecasting run (an LM, synth, RL run... in the same folder)
        name = _backbone(d, m)
        st, on = _load(d / "adapt-state.json"), _load(d / "adapt-online.json")
        _check_walk(d / "adapt-state.json", st, m)
        _check_walk(d / "adapt-online.json", on, m)
        rows.append((m["data"], m["horizon"], ORDER.index(name) if name in ORDER else 99, name, m, st, on))
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
