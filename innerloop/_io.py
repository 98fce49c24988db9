"""Small output helpers shared by the packages that write results: CSV tables and headless matplotlib."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend; a clear error when the ``plot`` extra is missing."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'innerloop[plot]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path, fields: Sequence[str] | None = None) -> None:
    """Write ``rows`` (dicts) to ``path`` with a header; columns are ``fields`` or the first row's keys."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields or rows[0]))
        w.writeheader()
        w.writerows(rows)
