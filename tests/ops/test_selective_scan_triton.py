"""triton_selective_scan against the sequential reference: outputs, final states and every input gradient.

Without CUDA the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by ``tests/conftest.py``
before triton is imported), so every CPU case is tiny.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from innerloop.ops.selective_scan import chunk_selective_scan, naive_selective_scan, triton_scan  # noqa: E402
from innerloop.ops.selective_scan.triton_scan import triton_selective_scan  # noqa: E402
from innerloop.testing import (  # noqa: E402
    SCAN_BAD_SHAPES,
    assert_close,
    outputs_and_grads,
    selective_scan_inputs,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("y", "final_state", "du", "ddelta", "dA", "dB", "dC", "dD", "dh0")
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def make_inputs(B, T, E, N, dtype, with_d=True, with_h0=True, seed=0, device=DEVICE):
    return selective_scan_inputs(B, T, E, N, dtype, device, with_d=with_d, with_h0=with_h0, seed=seed)


def names_for(ins):
    skip = {"dD"} if ins[5] is None else set()
    return [n for n in NAMES if n not in skip and (ins[6] is not None or n != "dh0")]


@pytest.mark.parametrize(("B", "T", "E", "N", "chunk", "block_e", "dtype", "d", "h0"), [
    pytest.param(1, 1, 3, 2, 4, None, torch.float32, True, True, id="T1"),
    pytest.param(2, 37, 5, 3, 8, 4, torch.float32, True, True, id="T37-c8-E5-be4-N3"),
    pytest.param(2, 20, 6, 5, 16, 2, torch.float32, False, False, id="T20-c16-N5-noD-noh0"),
    pytest.param(1, 16, 8, 4, 16, None, torch.float32, False, True, id="T16-c16-noD"),
    pytest.param(2, 13, 3, 6, 5, None, torch.float32, True, False, id="T13-c5-N6-noh0"),
    pytest.param(2, 70, 20, 16, 32, None, torch.float32, True, True, id="T70-c32-E20-N16"),
    pytest.param(2, 13, 3, 6, 5, 2, torch.float64, True, True, id="T13-c5-N6-fp64"),
])
def test_triton(B, T, E, N, chunk, block_e, dtype, d, h0):
    """float32 kernel vs a float64 reference run on the same values (float64 kernel vs float64 reference)."""
    ins64 = make_inputs(B, T, E, N, torch.float64, with_d=d, with_h0=h0)
    ins = [None if t is None else t.detach().to(dtype).requires_grad_() for t in ins64]
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(B, T, E, generator=g, dtype=torch.float64).to(DEVICE)
    dh = torch.randn(B, E, N, generator=g, dtype=torch.float64).to(DEVICE)
    ref = outputs_and_grads(naive_selective_scan, ins64, dy, dh)
    fast = outputs_and_grads(lambda *a: triton_selective_scan(*a, chunk_size=chunk, block_e=block_e), ins, dy.to(dtype),
                    dh.to(dtype))
    assert fast[1].dtype == dtype
    for name, r, f in zip(names_for(ins), ref, fast):
        assert_close(name, r, f.double(), **TOL[dtype])


def test_triton_gradcheck():
    ins = make_inputs(1, 5, 3, 2, torch.float64)
    assert torch.autograd.gradcheck(lambda *a: triton_selective_scan(*a, chunk_size=2, block_e=2), ins)


def test_triton_unused_outputs():
    """A loss on y only (no final-state gradient reaches the backward) and on the final state only."""
    u, delta, A, B, C, D, h0 = make_inputs(2, 11, 3, 4, torch.float64)
    y_r, h_r = naive_selective_scan(u, delta, A, B, C, D, h0)
    y_f, h_f = triton_selective_scan(u, delta, A, B, C, D, h0, chunk_size=4)
    for name, loss_r, loss_f in (("y", y_r.sum(), y_f.sum()), ("h", h_r.sum(), h_f.sum())):
        g_r = torch.autograd.grad(loss_r, (u, delta, A, B, C, D, h0), retain_graph=True, allow_unused=True)
        g_f = torch.autograd.grad(loss_f, (u, delta, A, B, C, D, h0), retain_graph=True, allow_unused=True)
        for n, r, f in zip(NAMES[2:], g_r, g_f):
            r = torch.zeros_like(f) if r is None else r  # the reference leaves dD unconnected for a state loss
            assert_close(f"{n} ({name} only)", r, f, **TOL[torch.float64])


def test_triton_state_chaining():
    """Whole sequence == prefix, then the rest from the returned state, for splits of odd sizes."""
    u, delta, A, B, C, D, h0 = (t.detach() for t in make_inputs(2, 23, 4, 5, torch.float32))
    y, h = triton_selective_scan(u, delta, A, B, C, D, h0, chunk_size=4)
    ys, s = [], h0
    for a, b in ((0, 1), (1, 10), (10, 11), (11, 23)):
        y_k, s = triton_selective_scan(u[:, a:b], delta[:, a:b], A, B[:, a:b], C[:, a:b], D, s, chunk_size=4)
        ys.append(y_k)
    assert_close("y chained", y, torch.cat(ys, 1), **TOL[torch.float32])
    assert_close("state chained", h, s, **TOL[torch.float32])


def test_triton_no_grad_and_layouts():
    """The inference path (no checkpoints) equals the autograd path; non-contiguous inputs are accepted."""
    u, delta, A, B, C, D, h0 = make_inputs(2, 9, 3, 4, torch.float32)
    y, h = triton_selective_scan(u, delta, A, B, C, D, h0, chunk_size=4)
    with torch.no_grad():
        y_ng, h_ng = triton_selective_scan(u, delta, A, B, C, D, h0, chunk_size=4)
        y_nc, h_nc = triton_selective_scan(
            u.transpose(0, 1).contiguous().transpose(0, 1), delta, A.t().contiguous().t(), B, C, D, h0, chunk_size=4
        )
    for name, a, b in (("y", y, y_ng), ("h", h, h_ng), ("y strided", y, y_nc), ("h strided", h, h_nc)):
        assert_close(name, a, b, atol=0.0, rtol=0.0)


def test_triton_stable_with_strong_decay():
    """Large Δ|A| (decays underflow to 0) stays finite and matches the reference."""
    u, delta, A, B, C, D, h0 = (t.detach() for t in make_inputs(1, 12, 3, 4, torch.float32))
    delta = delta * 200.0
    y_r, h_r = naive_selective_scan(u, delta, A, B, C, D, h0)
    y_f, h_f = triton_selective_scan(u, delta, A, B, C, D, h0, chunk_size=5)
    assert torch.isfinite(y_f).all() and torch.isfinite(h_f).all()
    assert_close("y", y_r, y_f, atol=1e-3, rtol=1e-4)
    assert_close("h", h_r, h_f, atol=1e-3, rtol=1e-4)


def test_triton_empty_sequence():
    u, delta, A, B, C, D, h0 = (t.detach() for t in make_inputs(2, 5, 3, 4, torch.float32))
    y, h = triton_selective_scan(u[:, :0], delta[:, :0], A, B[:, :0], C[:, :0], D, h0)
    assert y.shape == (2, 0, 3)
    assert_close("state unchanged", h0, h, atol=0.0, rtol=0.0)


@pytest.mark.parametrize(("index", "shape", "match"), SCAN_BAD_SHAPES)
def test_triton_bad_inputs(index, shape, match):
    ins = [t.detach() for t in make_inputs(2, 5, 3, 4, torch.float32)]
    ins[index] = torch.zeros(shape, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        triton_selective_scan(*ins)


def test_triton_bad_options():
    ins = [t.detach() for t in make_inputs(2, 5, 3, 4, torch.float32)]
    with pytest.raises(ValueError, match="chunk_size"):
        triton_selective_scan(*ins, chunk_size=0)
    with pytest.raises(ValueError, match="block_e"):
        triton_selective_scan(*ins, block_e=3)
    with pytest.raises(ValueError, match="one device"):
        triton_selective_scan(*ins[:5], torch.zeros(3, device="meta"), ins[6])


def test_triton_missing(monkeypatch):
    """Without triton the import works and the call fails, saying how to install it."""
    code = "import sys; sys.modules['triton'] = None; import innerloop.ops.selective_scan.triton_scan as m; print(m.tl)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "None"
    monkeypatch.setattr(triton_scan, "triton", None)
    triton_scan._kernels.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install triton"):
            triton_selective_scan(*[t.detach() for t in make_inputs(1, 3, 2, 2, torch.float32)])
    finally:
        triton_scan._kernels.cache_clear()


def _compile_for_sm90(cases):
    """Compile both kernels ahead of time for sm_90 (no GPU needed: ptxas ships with triton)."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile
    from triton.runtime.jit import JITFunction

    from innerloop.ops.selective_scan import triton_scan

    for T, E, N, dtype in cases:
        acc = getattr(torch, dtype)
        BLOCK_E, BLOCK_N, num_warps = triton_scan._launch_config(E, N, None)
        chunk = min(64, T)
        ints = {"T": T, "E": E, "N": N, "n_chunks": -(-T // chunk)}
        consts = {k: 1 for k, v in ints.items() if v == 1}  # Triton passes an int argument equal to 1 as a constexpr
        consts.update(CHUNK=chunk, BLOCK_E=BLOCK_E, BLOCK_N=BLOCK_N, HAS_D=True, ACC=triton_scan._acc(acc))
        ptr = "*fp64" if acc == torch.float64 else "*fp32"
        for fn, extra in ((triton_scan._fwd_kernel, {"HAS_H0": True, "SAVE": True}), (triton_scan._bwd_kernel, {})):
            jit = JITFunction(fn)
            n_ptrs = jit.arg_names.index("T")
            sig = {name: ptr for name in jit.arg_names[:n_ptrs]}
            sig.update({k: "constexpr" if k in consts else "i32" for k in ints})
            sig.update({k: "constexpr" for k in jit.arg_names[n_ptrs + len(ints):]})
            src = ASTSource(jit, sig, constexprs={**consts, **extra})
            assert compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["cubin"]


def test_triton_compiles_for_sm90():
    """The interpreter never lowers the kernels, so compile them for sm_90 too (in a fresh process: with
    TRITON_INTERPRET=1, triton's own jit helpers such as tl.sum are interpreted-only). Mamba-sized, every int equal
    to 1, and float64."""
    cases = [(1000, 768, 16, "float32"), (7, 1, 1, "float32"), (100, 64, 5, "float64")]
    code = f"{inspect.getsource(_compile_for_sm90)}\n_compile_for_sm90({cases!r})"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = env.get("TRITON_DEFAULT_FP_FUSION", "1")  # silences a 3.9 warning
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode and ("ImportError" in proc.stderr or "ModuleNotFoundError" in proc.stderr):
        pytest.skip(f"triton's compiler API or NVIDIA backend is missing: {proc.stderr.splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_cuda_large(dtype):
    """Mamba-sized shapes on the GPU (N = 16, E = 2 * 384, T = 1000) against the chunked path in float32."""
    ins32 = make_inputs(2, 1000, 768, 16, torch.float32, device="cuda")
    ins = [t.detach().to(dtype).requires_grad_() for t in ins32]
    ref_ins = [t.detach().float().requires_grad_() for t in ins]  # same (rounded) values, float32 reference
    dy = torch.randn(2, 1000, 768, device="cuda")
    dh = torch.randn(2, 768, 16, device="cuda")
    ref = outputs_and_grads(chunk_selective_scan, ref_ins, dy, dh)
    fast = outputs_and_grads(triton_selective_scan, ins, dy.to(dtype), dh)
    for name, r, f in zip(NAMES, ref, fast):
        if dtype == torch.float32:
            assert_close(name, r, f, atol=1e-3, rtol=1e-3)
        else:  # y, du, ddelta are rounded to bf16; the state and the reductions stay float32
            assert_close(name, r, f, ratio=1e-2)


def test_triton_passes_the_self_check():
    """The check the Mamba layer runs before trusting the kernel on a device (here: the interpreter)."""
    from innerloop.ops.selective_scan.fused import self_check

    assert self_check(DEVICE, triton_selective_scan)


def test_triton_refuses_double_backward():
    """once_differentiable let a create_graph=True gradient through the kernel come back without a graph, so a
    MAML-style meta-gradient through it was silently wrong; it must raise, naming the naive scan."""
    ins = make_inputs(1, 5, 3, 2, torch.float64)
    y, _ = triton_selective_scan(*ins, chunk_size=2)
    with pytest.raises(RuntimeError, match="triton_selective_scan is once differentiable.*naive_selective_scan"):
        torch.autograd.grad(y.pow(2).sum(), ins[3], create_graph=True)
