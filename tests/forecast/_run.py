"""A tiny forecasting run for the trainer tests, and its child-process entry for the kill test:
``python _run.py CSV OUT SLEEP THREADS`` (each step sleeps SLEEP seconds, numerically inert)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

STEPS = 8  # 4 epochs x 2 steps (121 train windows, batches of 60), a checkpoint every 2 steps, a log row every step


def write_series(path: Path, rows: int = 200, channels: int = 3, seed: int = 0) -> Path:
    """A noisy multi-channel sine with a date column."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)[:, None]
    values = np.sin(2 * np.pi * t / 24 + np.arange(channels)) + 0.1 * rng.normal(size=(rows, channels))
    lines = ["date," + ",".join(f"c{i}" for i in range(channels - 1)) + ",OT"]
    lines += [f"t{i}," + ",".join(f"{v:.5f}" for v in row) for i, row in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(csv: Path, out: Path, callbacks: list | None = None, fresh: bool = False, extend: bool = False,
        **cfg: Any) -> dict:  # fmt: skip
    from innerloop.forecast import ForecastConfig, train_forecaster

    base = dict(data=str(csv), lookback=16, horizon=4, model="dlinear", kernel_size=5, epochs=4, batch_size=60,
                lr=0.01, patience=0, log_every=1, checkpoint_every=2, out=str(out))  # fmt: skip
    return train_forecaster(ForecastConfig(**{**base, **cfg}), fresh=fresh, extend=extend, callbacks=callbacks or [])


if __name__ == "__main__":
    import torch

    from innerloop.testing import SlowSteps

    torch.set_num_threads(int(sys.argv[4]))
    run(Path(sys.argv[1]), Path(sys.argv[2]), callbacks=[SlowSteps(float(sys.argv[3]))])
