"""The one switch for every compiled kernel of the ops (C on the CPU, Triton on CUDA): ``INNERLOOP_NO_KERNEL=1``."""

from __future__ import annotations

import os

ENV = "INNERLOOP_NO_KERNEL"


def kernels_disabled() -> str | None:
    """Why compiled kernels are off (``INNERLOOP_NO_KERNEL`` set to anything but ``""``/``"0"``), or None.

    Read on every call, so a test or a user can flip it at run time; the callers fall back to their PyTorch paths.
    """
    if os.environ.get(ENV, "") not in ("", "0"):
        return f"compiled kernels are disabled by {ENV}"
    return None
