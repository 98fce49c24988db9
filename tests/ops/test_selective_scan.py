"""The fast selective scans (pure-PyTorch chunked, fused CPU kernel) against the sequential reference: outputs, final
states and every input gradient."""

from __future__ import annotations

import pytest
import torch

from innerloop.ops.selective_scan import (
    chunk_selective_scan,
    cpu_fused_selective_scan,
    cpu_kernel_available,
    naive_selective_scan,
)
from innerloop.testing import SCAN_BAD_SHAPES, assert_close, outputs_and_grads, selective_scan_inputs

needs_kernel = pytest.mark.skipif(not cpu_kernel_available(), reason="no C compiler: fused CPU kernel not built")
FAST = {
    "chunk": chunk_selective_scan,
    "fused": pytest.param(cpu_fused_selective_scan, marks=needs_kernel),
}
FAST_IDS = list(FAST)
FAST_FNS = list(FAST.values())

NAMES = ("y", "final_state", "du", "ddelta", "dA", "dB", "dC", "dD", "dh0")


def make_inputs(B, T, E, N, dtype, with_h0=True, seed=0):
    return selective_scan_inputs(B, T, E, N, dtype, with_h0=with_h0, seed=seed)


@pytest.mark.parametrize("fn", FAST_FNS, ids=FAST_IDS)
@pytest.mark.parametrize(("B", "T", "E", "N", "chunk", "dtype", "h0"), [
    pytest.param(1, 1, 3, 2, 4, torch.float64, True, id="T1-fp64"),
    pytest.param(2, 63, 5, 4, 16, torch.float64, True, id="T63-c16-fp64"),
    pytest.param(2, 100, 6, 8, 32, torch.float64, False, id="T100-c32-fp64-noh0"),
    pytest.param(3, 37, 4, 16, 7, torch.float64, True, id="T37-c7-N16-fp64"),
    pytest.param(2, 101, 8, 16, 32, torch.float32, True, id="T101-c32-fp32"),
    pytest.param(1, 64, 4, 4, 64, torch.float32, False, id="T64-c64-fp32-noh0"),
    pytest.param(2, 45, 37, 5, 8, torch.float64, True, id="E37-3blocks-N5-fp64"),
    pytest.param(3, 70, 48, 16, 64, torch.float32, False, id="E48-c64-fp32-noh0"),
])
def test_fast_paths(fn, B, T, E, N, chunk, dtype, h0):
    ins = make_inputs(B, T, E, N, dtype, with_h0=h0)
    dy = torch.randn(B, T, E, dtype=dtype)
    dh = torch.randn(B, E, N, dtype=torch.promote_types(dtype, torch.float32))
    ref = outputs_and_grads(naive_selective_scan, ins, dy, dh)
    fast = outputs_and_grads(lambda *a: fn(*a, chunk_size=chunk), ins, dy, dh)
    names = [n for n in NAMES if h0 or n != "dh0"]
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
    for name, r, f in zip(names, ref, fast):
        assert_close(name, r, f, **tol)


@pytest.mark.parametrize("fn", FAST_FNS, ids=FAST_IDS)
def test_no_skip_and_unused_state(fn):
    """D=None; a loss on y only (no final-state gradient) and on the state only."""
    u, delta, A, B, C, _, h0 = make_inputs(2, 21, 3, 4, torch.float64)
    y_r, h_r = naive_selective_scan(u, delta, A, B, C, None, h0)
    y_f, h_f = fn(u, delta, A, B, C, None, h0, chunk_size=8)
    assert_close("y", y_r, y_f)
    g_r = torch.autograd.grad(y_r.sum(), (u, A, h0), retain_graph=True)
    g_f = torch.autograd.grad(y_f.sum(), (u, A, h0), retain_graph=True)
    for name, r, f in zip(("du", "dA", "dh0"), g_r, g_f):
        assert_close(name, r, f)
    g_r = torch.autograd.grad(h_r.sum(), (delta, B))
    g_f = torch.autograd.grad(h_f.sum(), (delta, B))
    for name, r, f in zip(("ddelta", "dB"), g_r, g_f):
        assert_close(name, r, f)


@pytest.mark.parametrize("fn", FAST_FNS, ids=FAST_IDS)
def test_gradcheck(fn):
    ins = make_inputs(1, 7, 2, 3, torch.float64)
    assert torch.autograd.gradcheck(lambda *a: fn(*a, chunk_size=3), ins)
    assert torch.autograd.gradcheck(naive_selective_scan, make_inputs(1, 4, 2, 2, torch.float64))


@pytest.mark.parametrize("fn", [naive_selective_scan, *FAST_FNS], ids=["naive", *FAST_IDS])
def test_state_chaining(fn):
    """Whole sequence == prefix, then the rest from the returned state, for splits of odd sizes."""
    u, delta, A, B, C, D, h0 = (t.detach() for t in make_inputs(2, 50, 4, 5, torch.float64))
    y, h = fn(u, delta, A, B, C, D, h0)
    ys, s = [], h0
    for a, b in ((0, 1), (1, 18), (18, 19), (19, 50)):
        y_k, s = fn(u[:, a:b], delta[:, a:b], A, B[:, a:b], C[:, a:b], D, s)
        ys.append(y_k)
    assert_close("y chained", y, torch.cat(ys, 1))
    assert_close("state chained", h, s)


@pytest.mark.parametrize("fn", FAST_FNS, ids=FAST_IDS)
def test_stable_with_strong_decay(fn):
    """Large Δ|A| (decays underflow to 0) gives finite values that match the reference; no exp overflow."""
    u, delta, A, B, C, D, h0 = (t.detach() for t in make_inputs(1, 40, 3, 4, torch.float32))
    delta = delta * 200.0
    y_r, h_r = naive_selective_scan(u, delta, A, B, C, D, h0)
    y_f, h_f = fn(u, delta, A, B, C, D, h0, chunk_size=16)
    assert torch.isfinite(y_f).all() and torch.isfinite(h_f).all()
    assert_close("y", y_r, y_f, atol=1e-3, rtol=1e-4)
    assert_close("h", h_r, h_f, atol=1e-3, rtol=1e-4)


def test_empty_sequence():
    u, delta, A, B, C, D, h0 = (t.detach() for t in make_inputs(2, 5, 3, 4, torch.float64))
    for fn in (naive_selective_scan, chunk_selective_scan, cpu_fused_selective_scan):
        y, h = fn(u[:, :0], delta[:, :0], A, B[:, :0], C[:, :0], D, h0)
        assert y.shape == (2, 0, 3)
        assert_close("state unchanged", h0, h)


@pytest.mark.parametrize(("index", "shape", "match"), SCAN_BAD_SHAPES)
def test_bad_inputs(index, shape, match):
    ins = [t.detach() for t in make_inputs(2, 5, 3, 4, torch.float64)]
    ins[index] = torch.zeros(shape, dtype=torch.float64)
    for fn in (naive_selective_scan, chunk_selective_scan, cpu_fused_selective_scan):
        with pytest.raises(ValueError, match=match):
            fn(*ins)
    for fn in (chunk_selective_scan, cpu_fused_selective_scan):
        with pytest.raises(ValueError, match="chunk_size"):
            fn(*[t.detach() for t in make_inputs(2, 5, 3, 4, torch.float64)], chunk_size=0)


@needs_kernel
def test_fused_same_for_any_thread_count():
    """The blocks split over threads write disjoint outputs: 1 and 3 threads give bit-identical results."""
    ins = make_inputs(3, 50, 40, 16, torch.float32)
    dy = torch.randn(3, 50, 40)
    before = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            fn = lambda *a: cpu_fused_selective_scan(*a, chunk_size=16)  # noqa: E731
            outs.append(outputs_and_grads(fn, ins, dy, torch.ones(3, 40, 16)))
    finally:
        torch.set_num_threads(before)
    for name, a, b in zip(NAMES, *outs):
        assert torch.equal(a, b), name


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_low_precision_inputs(dtype):
    """Half inputs are scanned in float32 (state float32, y back in the input dtype), like the chunked path."""
    ins = [t.detach() for t in make_inputs(2, 33, 20, 8, dtype)]
    y_r, h_r = chunk_selective_scan(*ins)
    y_f, h_f = cpu_fused_selective_scan(*ins)
    assert y_f.dtype == dtype and h_f.dtype == torch.float32
    assert_close("y", y_r.float(), y_f.float(), atol=2e-2, rtol=2e-2)
    assert_close("h", h_r, h_f, atol=1e-4, rtol=1e-4)


def test_fused_kernel_build_failure_is_clear(monkeypatch, tmp_path):
    """No compiler: a RuntimeError naming it (and the Mamba layer's 'fused' mode falls back, tested there)."""
    from innerloop.ops import _cbuild
    from innerloop.ops.selective_scan import cpu_fused

    monkeypatch.setattr(_cbuild, "_LIBS", {})
    monkeypatch.setattr(_cbuild, "_FAILED", {})
    monkeypatch.setenv("INNERLOOP_CACHE", str(tmp_path))
    monkeypatch.delenv("INNERLOOP_NO_KERNEL", raising=False)
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    with pytest.raises(RuntimeError, match="no-such-compiler-xyz"):
        cpu_fused_selective_scan(*[t.detach() for t in make_inputs(1, 4, 3, 2, torch.float32)])
    assert not cpu_fused.cpu_kernel_available()
    monkeypatch.setattr(_cbuild, "_FAILED", {})
    monkeypatch.setenv("INNERLOOP_NO_KERNEL", "1")
    with pytest.raises(RuntimeError, match="INNERLOOP_NO_KERNEL"):
        cpu_fused._library(torch.float32)


@needs_kernel
def test_fused_kernel_builds_into_cache(monkeypatch, tmp_path):
    """A fresh cache directory gets one library per dtype, reused by the next load."""
    from innerloop.ops import _cbuild
    from innerloop.ops.selective_scan import cpu_fused

    monkeypatch.setattr(_cbuild, "_LIBS", {})
    monkeypatch.setenv("INNERLOOP_CACHE", str(tmp_path))
    cpu_fused._library(torch.float32)
    built = sorted((tmp_path / "kernels").iterdir())
    assert len(built) == 1 and built[0].name.startswith("selective_scan_float32_") and built[0].suffix == ".so"
    monkeypatch.setattr(_cbuild, "_LIBS", {})
    cpu_fused._library(torch.float32)
    assert sorted((tmp_path / "kernels").iterdir()) == built
    with pytest.raises(TypeError, match="float32 or float64"):
        cpu_fused._library(torch.float16)


@needs_kernel
def test_fused_kernel_builds_without_arch_flag(monkeypatch, tmp_path):
    """A compiler that refuses -march=native (some clangs) still gets a portable build."""
    from innerloop.ops import _cbuild

    monkeypatch.setattr(_cbuild, "_LIBS", {})
    monkeypatch.setattr(_cbuild, "ARCH", ["-march=no-such-arch"])
    monkeypatch.setenv("INNERLOOP_CACHE", str(tmp_path))
    ins = [t.detach() for t in make_inputs(2, 9, 20, 3, torch.float64)]
    assert_close("y", naive_selective_scan(*ins)[0], cpu_fused_selective_scan(*ins)[0])


def test_fused_dispatch_by_device():
    import importlib.util

    from innerloop.ops.selective_scan import fused_scan_available, fused_selective_scan

    # on a CUDA machine with triton this also runs the Triton kernel's self-check on the GPU
    has_triton = importlib.util.find_spec("triton") is not None
    assert fused_scan_available("cuda") == (torch.cuda.is_available() and has_triton)
    assert not fused_scan_available("meta")
    ins = [t.detach() for t in make_inputs(1, 5, 3, 2, torch.float64)]
    if cpu_kernel_available():
        assert_close("cpu dispatch", naive_selective_scan(*ins)[0], fused_selective_scan(*ins)[0])
    with pytest.raises(RuntimeError, match="no fused selective-scan kernel for device meta"):
        fused_selective_scan(*[t.to("meta") for t in ins])


@needs_kernel
def test_fused_works_in_a_forked_child():
    """A forked child (DataLoader workers, multiprocessing) runs the kernel with a thread pool of its own."""
    import multiprocessing as mp

    ins = [t.detach() for t in make_inputs(2, 30, 40, 4, torch.float32)]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y, _ = cpu_fused_selective_scan(*ins)  # the parent's pool now exists
        ctx = mp.get_context("fork")
        with ctx.Pool(1) as pool:
            y_child = pool.apply_async(_fused_in_child, (ins,)).get(timeout=60)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(y, y_child)


def _fused_in_child(ins):
    torch.set_num_threads(2)
    return cpu_fused_selective_scan(*ins)[0]


def test_self_check_rejects_wrong_or_failing_kernels(caplog):
    """A kernel that is slightly wrong (in y or only in one gradient) or raises is refused, with a logged reason."""
    from innerloop.ops.selective_scan.fused import self_check

    def off_y(*a, **kw):
        y, h = chunk_selective_scan(*a, **kw)
        return y * 1.001, h

    class WrongGradB(torch.autograd.Function):
        @staticmethod
        def forward(ctx, B):
            return B.clone()

        @staticmethod
        def backward(ctx, g):
            return 1.01 * g

    def off_db(u, delta, A, B, C, D, h0, chunk_size):
        return chunk_selective_scan(u, delta, A, WrongGradB.apply(B), C, D, h0, chunk_size=chunk_size)

    def raises(*a, **kw):
        raise RuntimeError("boom")

    assert self_check("cpu", chunk_selective_scan)
    with caplog.at_level("ERROR", logger="innerloop.ops.selective_scan.fused"):
        assert not self_check("cpu", off_y)
        assert not self_check("cpu", off_db)
        assert not self_check("cpu", raises)
    messages = " ".join(r.message for r in caplog.records)
    assert "in y" in messages and "in dB" in messages and "boom" in messages


@needs_kernel
def test_fused_available_runs_the_self_check_once(monkeypatch):
    from innerloop.ops.selective_scan import fused

    calls = []
    monkeypatch.setattr(fused, "_CHECKED", {})
    monkeypatch.setattr(fused, "_self_check_failure", lambda device, fn, dtype: calls.append(1) or "it raised boom")
    assert not fused.fused_scan_available("cpu") and not fused.fused_scan_available("cpu")
    assert len(calls) == 1
    assert fused.fused_scan_unavailable("cpu") == "the kernel failed its self-check: it raised boom"


@needs_kernel
@pytest.mark.parametrize("mode", ["bf16-autocast", "inference_mode"])
def test_the_cpu_self_check_ignores_the_callers_mode(monkeypatch, mode):
    """The check is cached for the process: run in its first caller's bf16 autocast it missed the tolerance, under
    inference_mode it raised, and the C kernel was off for every later call (which scan ran depended on the mode of
    the first)."""
    from innerloop.ops.selective_scan import fused

    monkeypatch.setattr(fused, "_CHECKED", {})
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16-autocast" else torch.inference_mode()
    with ctx:
        assert fused.fused_scan_unavailable("cpu") is None


@needs_kernel
def test_the_float64_cpu_build_is_checked_on_its_own(monkeypatch):
    """The C kernel's float64 build is a separate library: a wrong one is refused while float32 is used."""
    from innerloop.ops.selective_scan import fused

    def wrong_in_float64(*a, **kw):
        y, h = cpu_fused_selective_scan(*a, **kw)
        return (y * 1.001 if y.dtype == torch.float64 else y), h

    monkeypatch.setattr(fused, "_CHECKED", {})
    monkeypatch.setattr(fused, "_kernel", lambda device: wrong_in_float64)
    assert fused.fused_scan_unavailable("cpu", torch.float32) is None
    assert "disagrees with the chunked scan in y" in fused.fused_scan_unavailable("cpu", torch.float64)
    assert fused.fused_scan_unavailable("cpu") is None  # float32 by default


@pytest.mark.parametrize("fn", FAST_FNS, ids=FAST_IDS)
def test_refuses_double_backward(fn):
    """With once_differentiable, a gradient taken with create_graph=True had no graph (or a lazy error node that
    torch.autograd.grad(..., inputs=...) never reached), so a MAML-style meta-gradient through it was silently wrong
    (168.08 vs 158.30 here). It must raise, naming the twice-differentiable path; the naive scan gives the reference."""
    ins = make_inputs(2, 9, 5, 3, torch.float64)
    w = torch.randn(2, 9, 5, dtype=torch.float64)

    def meta_grad(op, **kw):
        y, _ = op(*ins, **kw)
        (gB,) = torch.autograd.grad((y * w).sum(), ins[3], create_graph=True)
        y2, _ = naive_selective_scan(ins[0], ins[1], ins[2], ins[3] - 0.1 * gB, *ins[4:])
        return torch.autograd.grad(y2.pow(2).sum(), ins[1])[0]

    ref = meta_grad(naive_selective_scan)
    assert ref.abs().max() > 0
    with pytest.raises(RuntimeError, match="once differentiable.*naive_selective_scan"):
        meta_grad(fn, chunk_size=4)
