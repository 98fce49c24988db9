"""Read a multivariate time series from a CSV with a date column: :func:`load_csv` -> :class:`SeriesTable`.

The file is read with the standard ``csv`` module (no pandas): a header row, then one row per time step, oldest
first. The date column is kept as text (its only use is to name rows and, when every date is ISO 8601, to check the
order: a file sorted newest first would train on the future and is refused); every other column must be a number in
every row. Anything else is an error naming the file, the line, the column and the fix.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

__all__ = ["FEATURES", "SeriesTable", "load_csv"]

# "M": every numeric column is an input and a target; "S": the target column alone
FEATURES = ("M", "S")


@dataclass(frozen=True)
class SeriesTable:
    """A time series as read from a CSV.

    Attributes:
        values (np.ndarray): ``[T, C]`` float64, one row per time step (oldest first).
        columns (tuple[str, ...]): the ``C`` column names, in file order.
        dates (tuple[str, ...]): the ``T`` date strings, as written in the file.
        path (str): the file it was read from.
    """

    values: np.ndarray
    columns: tuple[str, ...]
    dates: tuple[str, ...]
    path: str

    def __len__(self) -> int:
        return int(self.values.shape[0])


def load_csv(
    path: str | Path, date_column: str = "date", target: str = "OT", features: str = "M", min_rows: int = 1
) -> SeriesTable:
    """Read ``path`` into a :class:`SeriesTable`.

    Args:
        path (str | Path): a CSV file with a header row.
        date_column (str, Optional): the column holding the time stamps. Default: ``"date"``.
        target (str, Optional): the target column; it must exist (with ``features="S"`` it is the only one kept).
            Default: ``"OT"``.
        features (str, Optional): ``"M"`` (every numeric column) or ``"S"`` (the target only). Default: ``"M"``.
        min_rows (int, Optional): fewer data rows than this is an error (pass look-back + horizon, or more).
            Default: 1.

    Returns:
        SeriesTable: ``values`` ``[T, C]``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a missing or duplicated column, a target that is the date column, an empty / non-numeric / NaN /
            infinite value (file, line and column named), rows of different lengths, a file that is not UTF-8, an ISO
            8601 date column that goes back in time or holds a non-ISO date, or fewer than ``min_rows`` rows.

    Examples:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "s.csv")
        >>> _ = open(f, "w").write("date,a,OT\\n2020-01-01,1,2\\n2020-01-02,3,4\\n")
        >>> t = load_csv(f)
        >>> t.values.shape, t.columns
        ((2, 2), ('a', 'OT'))
    """
    if features not in FEATURES:
        raise ValueError(f"unknown features {features!r}; choose from {', '.join(FEATURES)} (M: every column, "
                         f"S: the target column only)")  # fmt: skip
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"time-series CSV {path} does not exist: give the path to a CSV file with a header row "
                                f"and a {date_column!r} column")  # fmt: skip
    try:
        return _read(path, date_column, target, features, min_rows)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset {e.start}): "
                         f"save the CSV as UTF-8") from None  # fmt: skip


def _read(path: Path, date_column: str, target: str, features: str, min_rows: int) -> SeriesTable:
    """:func:`load_csv` once ``path`` is known to be a file (a non-UTF-8 byte raises ``UnicodeDecodeError``)."""
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a BOM (Excel) is not part of the header
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path} is empty: expected a header row such as 'date,col1,...,{target}'")
        header = [h.strip() for h in header]
        if target == date_column:
            raise ValueError(f"{path}: the target column (target=) and the date column (date_column=) are both "
                             f"{target!r}; the target must be a numeric column such as {header[-1]!r}")  # fmt: skip
        if dupes := sorted({h for h in header if header.count(h) > 1}):
            raise ValueError(f"{path}: the header names column(s) {', '.join(map(repr, dupes))} more than once, so "
                             f"which one is meant is ambiguous; rename them so that every column name is unique")
        for name, what in ((date_column, "date column (date_column=)"), (target, "target column (target=)")):
            if name not in header:
                raise ValueError(f"{path} has no {what} {name!r}; its columns are {', '.join(header)}. Name the right "
                                 f"column or fix the header")  # fmt: skip
        date_i = header.index(date_column)
        keep = [i for i, h in enumerate(header) if i != date_i]
        if features == "S":
            keep = [header.index(target)]
        dates, rows = [], []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue  # a trailing blank line
            if len(row) != len(header):
                raise ValueError(f"{path}:{line} has {len(row)} fields, the header has {len(header)}: fix that row")
            dates.append(row[date_i])
            rows.append([_number(row[i], path, line, header[i]) for i in keep])
    if len(rows) < max(min_rows, 1):
        raise ValueError(f"{path} has {len(rows)} data rows, fewer than the {max(min_rows, 1)} needed (look-back + "
                         f"horizon, and more to split into train / validation / test): use a longer series or a "
                         f"shorter --lookback / --horizon")  # fmt: skip
    _check_order(dates, path)
    values = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(keep))
    return SeriesTable(values, tuple(header[i] for i in keep), tuple(dates), str(path))


def _check_order(dates: list[str], path: Path) -> None:
    """Refuse dates that go back in time when they are ISO 8601 (other formats are not checked), and a column that
    mixes ISO 8601 dates with other text (a missing or mistyped date would otherwise turn the check off)."""
    stamps = []
    for i, d in enumerate(dates):
        try:
            stamps.append(datetime.fromisoformat(d.strip()))
        except (ValueError, TypeError):
            if i == 0:
                return  # not ISO dates: the order is the file's
            raise ValueError(f"{path}: data row {i + 1} has the date {d!r}, not ISO 8601 like the rows before it "
                             f"({dates[0]!r}); fix or drop that row") from None  # fmt: skip
    for i in range(1, len(stamps)):
        try:
            back = stamps[i] < stamps[i - 1]
        except TypeError:  # naive next to timezone-aware: not comparable
            return
        if back:
            raise ValueError(f"{path}: the dates go back in time at data row {i + 1} ({dates[i]!r} after "
                             f"{dates[i - 1]!r}); rows must be oldest first: sort the file by date")  # fmt: skip


def _number(text: str, path: Path, line: int, column: str) -> float:
    """``float(text)``, or an error naming the cell when it is empty, not a number, NaN or infinite."""
    try:
        value = float(text)
    except ValueError:
        what = "empty" if not text.strip() else f"not a number ({text!r})"
        raise ValueError(f"{path}:{line} column {column!r} is {what}: every column except the date must be numeric; "
                         f"fill or drop that row (missing values are not imputed)") from None  # fmt: skip
    if not math.isfinite(value):
        raise ValueError(f"{path}:{line} column {column!r} is {text!r}: NaN and infinite values are not allowed; "
                         f"fill or drop that row")  # fmt: skip
    return value
