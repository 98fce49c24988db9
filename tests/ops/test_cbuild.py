"""innerloop.ops._cbuild: the compiled-kernel cache and the INNERLOOP_NO_KERNEL switch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from innerloop.ops import _cbuild
from innerloop.ops.ttt import cpu_linear

ROOT = Path(__file__).resolve().parents[2]
needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache and no library loaded or failed in this process."""
    monkeypatch.setattr(_cbuild, "_LIBS", {})
    monkeypatch.setattr(_cbuild, "_FAILED", {})
    monkeypatch.setenv("INNERLOOP_CACHE", str(tmp_path))
    monkeypatch.delenv("INNERLOOP_NO_KERNEL", raising=False)
    return tmp_path / "kernels"


def q8():
    return torch.zeros(1, 4, 1, 8)


@needs_cc
def test_no_kernel_is_read_on_every_call(fresh, monkeypatch):
    """Setting INNERLOOP_NO_KERNEL=1 at run time turns off a kernel already loaded; unsetting it turns it back on
    (a kernel first asked for while it was set is not remembered as failed)."""
    assert cpu_linear.kernel_unavailable([q8()]) is None
    monkeypatch.setenv("INNERLOOP_NO_KERNEL", "1")
    assert "INNERLOOP_NO_KERNEL" in cpu_linear.kernel_unavailable([q8()])
    assert "INNERLOOP_NO_KERNEL" in cpu_linear.kernel_unavailable([q8().double()])
    monkeypatch.setenv("INNERLOOP_NO_KERNEL", "0")
    assert cpu_linear.kernel_unavailable([q8()]) is None
    assert cpu_linear.kernel_unavailable([q8().double()]) is None


def _in_a_new_process(cache) -> str:
    """kernel_unavailable for a float32 head-dim-8 q in a fresh interpreter (a library once loaded by a process stays
    mapped there under its path, so a rebuild is only seen by the next one)."""
    code = ("import torch; from innerloop.ops.ttt import cpu_linear; "
            "print(cpu_linear.kernel_unavailable([torch.zeros(1, 4, 1, 8)]))")
    env = {**os.environ, "INNERLOOP_CACHE": str(cache.parent), "PYTHONPATH": str(ROOT)}
    env.pop("INNERLOOP_NO_KERNEL", None)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


@needs_cc
@pytest.mark.parametrize("content", [b"", b"\x7fELF truncated"], ids=["empty", "truncated"])
def test_a_corrupt_cached_library_is_rebuilt(fresh, content):
    assert _in_a_new_process(fresh) == "None"
    (lib,) = fresh.glob("ttt_linear_float_d8_*.so")
    lib.unlink()
    lib.write_bytes(content)
    assert _in_a_new_process(fresh) == "None"
    assert lib.stat().st_size > 1000


@needs_cc
def test_a_foreign_library_in_the_cache_falls_back_clearly(fresh):
    """A loadable library without the kernel's functions: the kernel is off with a message naming the file and the
    fix (no AttributeError from ctypes)."""
    assert _in_a_new_process(fresh) == "None"
    (lib,) = fresh.glob("ttt_linear_float_d8_*.so")
    src = fresh / "other.c"
    src.write_text("int not_the_kernel(void) { return 0; }\n")
    lib.unlink()
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    reason = _in_a_new_process(fresh)
    assert "ttt_linear_fwd" in reason and lib.name in reason and "delete" in reason


@needs_cc
def test_a_scan_forward_run_by_the_kernel_gets_its_backward_after_the_switch(fresh, monkeypatch):
    """INNERLOOP_NO_KERNEL set between a fused scan's forward and its backward: the backward still runs (the forward's
    kernel), and the next forward is refused."""
    from innerloop.ops.selective_scan import cpu_fused_selective_scan, naive_selective_scan

    g = torch.Generator().manual_seed(0)
    ins = [torch.randn(1, 6, 3, generator=g), torch.rand(1, 6, 3, generator=g), -torch.rand(3, 2, generator=g),
           torch.randn(1, 6, 2, generator=g), torch.randn(1, 6, 2, generator=g)]
    xs = [x.clone().requires_grad_() for x in ins]
    y, _ = cpu_fused_selective_scan(*xs)
    monkeypatch.setenv("INNERLOOP_NO_KERNEL", "1")
    y.sum().backward()
    ref = [x.clone().requires_grad_() for x in ins]
    naive_selective_scan(*ref)[0].sum().backward()
    for a, b in zip(xs, ref):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="INNERLOOP_NO_KERNEL"):
        cpu_fused_selective_scan(*ins)
