"""Small C kernels compiled on first use with the system C compiler and loaded with ctypes.

A kernel is one C file next to its Python wrapper, built per set of ``-D`` defines (element type, sizes) with
``$CC`` (default ``cc``) ``-O3 -march=native`` (retried without ``-march=native`` if the compiler refuses it) into
``$INNERLOOP_CACHE/kernels`` (default ``~/.cache/innerloop/kernels``; ``XDG_CACHE_HOME`` is not read). The library
name carries a hash of the source, flags, compiler version and CPU, so an edit or another machine gets a fresh build;
the build writes a temporary file and renames it, so concurrent processes are safe; a cached file that does not load
(truncated, corrupt) is rebuilt. ``INNERLOOP_NO_KERNEL=1`` disables every kernel, also one already loaded (read on
every call; callers fall back to their pure-PyTorch paths).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ._kernels import kernels_disabled

FLAGS = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared"]
ARCH = ["-march=native"]  # dropped if the compiler refuses it
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}  # by (pid, threads): a forked child makes its own
_LIBS: dict[str, ctypes.CDLL] = {}  # loaded libraries by name
_FAILED: dict[str, str] = {}  # names whose build failed in this process, with the reason (never retried)
_LOCK = threading.Lock()


def _cpu_id() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        return next((ln for ln in info if ln.startswith("flags")), "") + platform.processor()
    except OSError:
        return platform.machine() + platform.processor()


def build(src: Path, defines: list[str], name: str) -> ctypes.CDLL:
    """Compile ``src`` with ``defines`` (cached) and load it; raises RuntimeError naming what failed."""
    disabled = kernels_disabled()
    if disabled:
        raise RuntimeError(disabled)
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler: {cc!r} not found (install gcc, or set CC)")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    cache = Path(os.environ.get("INNERLOOP_CACHE", Path.home() / ".cache" / "innerloop")) / "kernels"
    errors = []
    for arch in (ARCH, []):
        args = FLAGS + arch + defines
        key = hashlib.sha256("\0".join([src.read_text(), *args, *version, _cpu_id()]).encode()).hexdigest()[:16]
        lib = cache / f"{name}_{key}.so"
        if lib.exists():
            try:
                return ctypes.CDLL(str(lib))
            except OSError as e:  # a corrupt or truncated file (a full disk, a copied cache): build a fresh one
                errors.append(f"{lib} could not be loaded ({e}); rebuilt")
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        try:
            res = subprocess.run([cc, *args, "-o", tmp, str(src)], capture_output=True, text=True)
            if res.returncode == 0:
                os.replace(tmp, lib)
                return ctypes.CDLL(str(lib))
            errors.append(res.stderr.strip())
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"compiling {src.name} with {cc} failed:\n{errors[-1]}")


def load(src: Path, defines: list[str], name: str, what: str,
         declare: Callable[[ctypes.CDLL], None]) -> ctypes.CDLL:
    """The library ``name`` (``src`` built with ``defines``), built and loaded once per process, ``declare`` setting
    its functions' ctypes signatures. A failed build is remembered: RuntimeError ``"<what> is unavailable: ..."``."""
    disabled = kernels_disabled()  # read on every call (also for a library already loaded), never remembered
    if disabled:
        raise RuntimeError(f"{what} is unavailable: {disabled}")
    with _LOCK:
        if name not in _LIBS:
            if name in _FAILED:
                raise RuntimeError(_FAILED[name])
            try:
                dll = build(src, defines, name)
                declare(dll)
            except AttributeError as e:  # a library in the cache without the kernel's functions: not ours
                _FAILED[name] = f"{what} is unavailable: {e} (delete that file to rebuild it)"
                raise RuntimeError(_FAILED[name]) from e
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                _FAILED[name] = f"{what} is unavailable: {e}"
                raise RuntimeError(_FAILED[name]) from e
            _LIBS[name] = dll
        return _LIBS[name]


def ptr(t: torch.Tensor | None) -> int | None:
    """A tensor's data pointer for ctypes (None -> NULL)."""
    return None if t is None else t.data_ptr()


def run_split(fn, n_items: int, scratch_size: int, dtype: torch.dtype, *args) -> None:
    """Call ``fn(*args, first, end, scratch)`` over ``[0, n_items)`` split evenly over ``torch.get_num_threads()``
    threads (ctypes releases the GIL), each with its own ``scratch_size`` scratch of ``dtype``."""
    n = max(1, min(torch.get_num_threads(), n_items))
    scratch = torch.empty(n, scratch_size, dtype=dtype)
    bounds = [n_items * i // n for i in range(n + 1)]
    calls = [(bounds[i], bounds[i + 1], scratch[i].data_ptr()) for i in range(n) if bounds[i] < bounds[i + 1]]
    if len(calls) == 1:
        fn(*args, *calls[0])
        return
    key = (os.getpid(), n)
    pool = _POOLS.get(key)
    if pool is None:
        pool = _POOLS[key] = ThreadPoolExecutor(n, thread_name_prefix="innerloop-kernel")
    for f in [pool.submit(fn, *args, *c) for c in calls]:
        f.result()
