"""Small file helpers shared by every package that writes results: atomic writes, JSON, CSV, headless matplotlib.

Every write that a crash could leave half-done goes through :func:`atomic_write_bytes`: the data goes to a unique
temporary file in the same folder, is flushed to disk, and is renamed over the target (``os.replace``), so a reader
sees the old file or the new one, never a mixture.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "pyplot", "read_json", "sha256_file",
           "write_csv"]  # fmt: skip


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a unique temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # fails e.g. when path is a folder (--save DIR): leave no .tmp debris next to it
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 ``text``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON with a final newline, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    """``json.loads`` of a file, with an error naming it when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend; a clear error when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path, fields: Sequence[str] | None = None) -> None:
    """Write ``rows`` (dicts) to ``path`` atomically with a header; columns are ``fields`` (other keys are left out)
    or the first row's keys."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(fields or rows[0]), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
