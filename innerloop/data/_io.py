"""File helpers of the data layer: atomic writes (one implementation, in :mod:`innerloop._io`) and the user cache
folder."""

from __future__ import annotations

import os
from pathlib import Path

from innerloop._io import atomic_write_bytes

__all__ = ["atomic_write_bytes", "user_cache_dir"]


def user_cache_dir(*parts: str) -> Path:
    """``$INNERLOOP_CACHE/<parts>`` (default ``~/.cache/innerloop/<parts>``): decoded data sets and token caches,
    shared by every run of this user (the compiled kernels live there too, in ``kernels/``)."""
    root = os.environ.get("INNERLOOP_CACHE") or Path.home() / ".cache" / "innerloop"
    return Path(root).joinpath(*parts)
