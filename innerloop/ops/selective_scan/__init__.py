"""Selective scan (Mamba-1's SSM): sequential reference and chunked fast path with one signature."""

from .chunk import chunk_selective_scan
from .naive import naive_selective_scan

__all__ = ["chunk_selective_scan", "naive_selective_scan"]
