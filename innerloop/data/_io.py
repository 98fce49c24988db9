"""Atomic file writes for the data layer: the one implementation lives in :mod:`innerloop._io`."""

from innerloop._io import atomic_write_bytes

__all__ = ["atomic_write_bytes"]
