"""Run logs: ``log.csv`` always (one row per logged step), TensorBoard when asked for and installed."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from innerloop._io import atomic_write_text

__all__ = ["CSVLogger", "read_log"]


class CSVLogger:
    """Append rows with columns ``fields`` to ``path``.

    On resume (``resume_step`` given), the rows logged after ``resume_step`` by the killed segment of the run are
    dropped first (the resumed run logs them again, with the same values), so the file always reads as one run; the
    TensorBoard events of those steps are purged likewise (``SummaryWriter(purge_step=resume_step + 1)``).

    Args:
        path (str | Path): the CSV file.
        fields (Sequence[str]): column names; the first one is the step column.
        resume_step (int | None, Optional): keep rows up to this step of an existing file; None starts a new file.
            Default: None.
        tensorboard_dir (str | Path | None, Optional): also write every numeric column there. Default: None.
    """

    def __init__(self, path: str | Path, fields: Sequence[str], resume_step: int | None = None,
                 tensorboard_dir: str | Path | None = None) -> None:  # fmt: skip
        self.path, self.fields = Path(path), list(fields)
        self.step_key = self.fields[0]
        if resume_step is not None and self.path.exists():
            rows = [r for r in read_log(self.path) if r.get(self.step_key) and int(r[self.step_key]) <= resume_step]
            buf = io.StringIO(newline="")
            w = csv.DictWriter(buf, self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
            atomic_write_text(self.path, buf.getvalue())  # on disk before it replaces the log (a crash keeps one)
        new = not self.path.exists() or resume_step is None
        self._file = self.path.open("w" if new else "a", newline="")
        self._writer = csv.DictWriter(self._file, self.fields, extrasaction="ignore")
        if new:
            self._writer.writeheader()
            self._file.flush()
        self._tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
            # on resume, hide the events the killed segment logged after the checkpoint (they are logged again)
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(tensorboard_dir), purge_step=purge)

    def log(self, row: dict[str, Any]) -> None:
        """Write one row (missing columns are left empty) and flush it."""
        self._writer.writerow({k: row.get(k, "") for k in self.fields})
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != self.step_key and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, row[self.step_key])

    def sync(self) -> None:
        """Flush the rows written so far to disk (``fsync``): called before a checkpoint, so that a checkpoint that
        survives a power loss never claims steps whose rows were lost with the page cache (nobody logs them again)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_log(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``log.csv`` as dicts of strings (a file that is not text is a ValueError naming it)."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path} is not a readable CSV log ({e}); move it away (the run's checkpoints do not need "
                         f"it) and run the same command again") from e
