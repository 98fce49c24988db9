"""File helpers of the data layer: atomic writes (a crash leaves the old file or the new one, never half of one) and
the user cache folder."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a unique temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def user_cache_dir(*parts: str) -> Path:
    """``$INNERLOOP_CACHE/<parts>`` (default ``~/.cache/innerloop/<parts>``): decoded data sets and token caches,
    shared by every run of this user (the compiled kernels live there too, in ``kernels/``)."""
    root = os.environ.get("INNERLOOP_CACHE") or Path.home() / ".cache" / "innerloop"
    return Path(root).joinpath(*parts)
