"""Run logs: ``log.csv`` always (one row per logged step), TensorBoard when asked for and installed."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

__all__ = ["LOG_FIELDS", "CSVLogger", "read_log"]

LOG_FIELDS = ["step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "train_seconds", "val_loss", "val_bpb"]


class CSVLogger:
    """Append rows to ``path``; on resume, rows after ``resume_step`` (from the killed segment) are dropped first."""

    def __init__(self, path: str | Path, resume_step: int | None = None, tensorboard_dir: str | Path | None = None):
        self.path = Path(path)
        if resume_step is not None and self.path.exists():
            rows = [r for r in read_log(self.path) if int(r["step"]) <= resume_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            with tmp.open("w", newline="") as f:
                w = csv.DictWriter(f, LOG_FIELDS)
                w.writeheader()
                w.writerows(rows)
            tmp.replace(self.path)
        new = not self.path.exists() or resume_step is None
        self._file = self.path.open("w" if new else "a", newline="")
        self._writer = csv.DictWriter(self._file, LOG_FIELDS)
        if new:
            self._writer.writeheader()
        self._tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
            self._tb = SummaryWriter(str(tensorboard_dir))

    def log(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: row.get(k, "") for k in LOG_FIELDS})
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_log(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``log.csv`` as dicts of strings."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))
