"""Timing helpers shared by the benchmark scripts: warm-up, per-repeat wall clock, median and quantiles.

Inputs are built by the caller outside the timed function; ``setup`` runs before every repeat, outside the timer.
On CPU ``time.perf_counter`` is exact enough; on CUDA the device is synchronised around each repeat.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass
class Timing:
    """Seconds per call: ``median`` with the 20% / 80% quantiles over ``repeats`` timed calls."""

    median: float
    q20: float
    q80: float
    repeats: int

    def as_dict(self) -> dict:
        return asdict(self)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(
    fn: Callable[[], object],
    warmup: int = 1,
    repeats: int = 5,
    setup: Callable[[], object] | None = None,
    max_seconds: float = float("inf"),
    min_repeats: int = 3,
) -> Timing:
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed calls.

    Args:
        fn (Callable): the work to time; its result is dropped after the clock stops.
        warmup (int, Optional): untimed calls first. Default: 1.
        repeats (int, Optional): timed calls. Default: 5.
        setup (Callable, Optional): called before every call (warm-up and timed), outside the timer. Default: None.
        max_seconds (float, Optional): stop repeating once this much time was timed and ``min_repeats`` are done
            (keeps slow rows affordable). Default: no limit.
        min_repeats (int, Optional): lower bound on timed calls when ``max_seconds`` cuts a row short. Default: 3.
    Returns:
        Timing: median and quantiles in seconds.
    """
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    times: list[float] = []
    while len(times) < repeats:
        if setup is not None:
            setup()
        _sync()
        t0 = time.perf_counter()
        out = fn()
        _sync()
        times.append(time.perf_counter() - t0)
        del out
        if sum(times) > max_seconds and len(times) >= min(min_repeats, repeats):
            break
    times.sort()
    q = statistics.quantiles(times, n=5, method="inclusive") if len(times) > 1 else [times[0]] * 4
    return Timing(statistics.median(times), q[0], q[3], len(times))


def matmul_gflops(n: int = 2048, dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """Achieved GFLOP/s of an ``n x n @ n x n`` matmul (``2 n^3`` FLOPs) with the current thread setting."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t = measure(lambda: a @ b, warmup=2, repeats=repeats)
    return 2 * n**3 / t.median / 1e9


def git_revision(path: str | os.PathLike | None = None) -> str | None:
    """``git describe --always --dirty`` of the checkout at ``path`` (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=path, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment() -> dict:
    """Torch version, thread count, CPU model and core count, git revision: printed with every benchmark table."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "git": git_revision(os.path.dirname(os.path.abspath(__file__))),
    }
