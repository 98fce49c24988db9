"""triton_chunked_selective_scan (parallel over time) against the sequential reference: outputs, final states and every
input gradient; the CUDA dispatch that picks it.

Without CUDA the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by ``tests/conftest.py``
before triton is imported), so every CPU case is tiny.
"""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from innerloop.ops.selective_scan import chunk_selective_scan, fused, naive_selective_scan  # noqa: E402
from innerloop.ops.selective_scan import triton_chunked as tc  # noqa: E402
from innerloop.ops.selective_scan.triton_chunked import triton_chunked_selective_scan  # noqa: E402
from innerloop.ops.selective_scan.triton_scan import triton_selective_scan  # noqa: E402
from innerloop.testing import SCAN_BAD_SHAPES, assert_close, outputs_and_grads, selective_scan_inputs  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("y", "final_state", "du", "ddelta", "dA", "dB", "dC", "dD", "dh0")
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def make_inputs(B, T, E, N, dtype, with_d=True, with_h0=True, seed=0, device=DEVICE):
    return selective_scan_inputs(B, T, E, N, dtype, device, with_d=with_d, with_h0=with_h0, seed=seed)


def names_for(ins):
    return [n for n in NAMES if not (n == "dD" and ins[5] is None) and not (n == "dh0" and ins[6] is None)]


def cotangents(B, T, E, N, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, E, generator=g, dtype=torch.float64).to(DEVICE),
            torch.randn(B, E, N, generator=g, dtype=torch.float64).to(DEVICE))


@pytest.mark.parametrize(("B", "T", "E", "N", "chunk", "block_e", "programs", "dtype", "d", "h0"), [
    pytest.param(1, 1, 3, 2, 4, None, None, torch.float64, True, True, id="T1"),
    pytest.param(2, 15, 5, 3, 4, 4, None, torch.float64, True, True, id="T15-c4-E5-be4-N3"),
    pytest.param(2, 17, 6, 16, 8, 2, 2, torch.float64, False, False, id="T17-c8-N16-noD-noh0-2progs"),
    pytest.param(1, 63, 4, 5, 16, None, 1, torch.float64, True, True, id="T63-c16-1prog"),
    pytest.param(3, 16, 3, 4, 16, None, None, torch.float64, False, True, id="T16-c16-B3-onechunk",
                 marks=pytest.mark.slow),
    pytest.param(2, 17, 5, 3, 4, 4, 3, torch.float32, True, True, id="T17-c4-fp32-3progs"),
    pytest.param(1, 15, 3, 16, 8, None, None, torch.float32, True, False, id="T15-c8-N16-fp32",
                 marks=pytest.mark.slow),
])
def test_chunked(monkeypatch, B, T, E, N, chunk, block_e, programs, dtype, d, h0):
    """Kernel vs the float64 reference on the same values; ``programs`` caps the backward's programs, so that one
    program walks several chunks."""
    monkeypatch.setattr(tc, "BWD_PROGRAMS", programs)
    ins64 = make_inputs(B, T, E, N, torch.float64, with_d=d, with_h0=h0)
    ins = [None if t is None else t.detach().to(dtype).requires_grad_() for t in ins64]
    dy, dh = cotangents(B, T, E, N)
    ref = outputs_and_grads(naive_selective_scan, ins64, dy, dh)
    fast = outputs_and_grads(lambda *a: triton_chunked_selective_scan(*a, chunk_size=chunk, block_e=block_e), ins,
                             dy.to(dtype), dh.to(dtype))
    assert fast[1].dtype == dtype
    for name, r, f in zip(names_for(ins), ref, fast):
        assert_close(name, r, f.double(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_chunked_half(dtype):
    """bf16 / fp16 u, B, C (Δ float32, as the Mamba layer passes it) against float32 on the same rounded values: the
    recurrence is float32, y and du come back rounded to the input dtype."""
    B, T, E, N = 2, 17, 4, 16
    ins = [t.detach() for t in make_inputs(B, T, E, N, torch.float32)]
    for i in (0, 3, 4):
        ins[i] = ins[i].to(dtype)
    ins = [t.requires_grad_() for t in ins]
    ref_ins = [t.detach().float().requires_grad_() for t in ins]
    dy, dh = cotangents(B, T, E, N)
    ref = outputs_and_grads(naive_selective_scan, ref_ins, dy.float(), dh.float())
    fast = outputs_and_grads(lambda *a: triton_chunked_selective_scan(*a, chunk_size=8), ins, dy.to(dtype), dh.float())
    assert fast[0].dtype == dtype and fast[1].dtype == torch.float32
    assert [g.dtype for g in fast[2:]] == [t.dtype for t in ins]
    for name, r, f in zip(NAMES, ref, fast):
        assert_close(name, r, f.float(), ratio=1e-2)


@pytest.mark.slow
def test_chunked_equals_sequential_kernel():
    """Same function as the sequential Triton kernel (float32, several chunks, odd sizes)."""
    ins = make_inputs(2, 23, 5, 3, torch.float32)
    dy, dh = cotangents(2, 23, 5, 3)
    seq = outputs_and_grads(lambda *a: triton_selective_scan(*a, chunk_size=4), ins, dy.float(), dh.float())
    par = outputs_and_grads(lambda *a: triton_chunked_selective_scan(*a, chunk_size=4), ins, dy.float(), dh.float())
    for name, a, b in zip(NAMES, seq, par):
        assert_close(name, a, b, **TOL[torch.float32])


def test_chunked_state_chaining():
    """Whole sequence == pieces of odd lengths run one after the other from the returned state."""
    u, delta, A, B, C, D, h0 = (t.detach() for t in make_inputs(2, 23, 4, 5, torch.float32))
    y, h = triton_chunked_selective_scan(u, delta, A, B, C, D, h0, chunk_size=4)
    ys, s = [], h0
    for a, b in ((0, 1), (1, 10), (10, 11), (11, 23)):
        y_k, s = triton_chunked_selective_scan(u[:, a:b], delta[:, a:b], A, B[:, a:b], C[:, a:b], D, s, chunk_size=4)
        ys.append(y_k)
    assert_close("y chained", y, torch.cat(ys, 1), **TOL[torch.float32])
    assert_close("state chained", h, s, **TOL[torch.float32])


def test_chunked_no_grad_layouts_and_unused_outputs():
    """The no-grad path equals the autograd path; strided inputs are accepted; a loss on one output only."""
    u, delta, A, B, C, D, h0 = make_inputs(2, 9, 3, 4, torch.float64)
    y, h = triton_chunked_selective_scan(u, delta, A, B, C, D, h0, chunk_size=4)
    with torch.no_grad():
        y_ng, h_ng = triton_chunked_selective_scan(u, delta, A, B, C, D, h0, chunk_size=4)
        y_nc, h_nc = triton_chunked_selective_scan(
            u.transpose(0, 1).contiguous().transpose(0, 1), delta, A.t().contiguous().t(), B, C, D, h0, chunk_size=4)
    for name, a, b in (("y", y, y_ng), ("h", h, h_ng), ("y strided", y, y_nc), ("h strided", h, h_nc)):
        assert_close(name, a, b, atol=0.0, rtol=0.0)
    ins = (u, delta, A, B, C, D, h0)
    y_r, h_r = naive_selective_scan(*ins)
    for name, loss_r, loss_f in (("y", y_r.sum(), y.sum()), ("h", h_r.sum(), h.sum())):
        g_r = torch.autograd.grad(loss_r, ins, retain_graph=True, allow_unused=True)
        g_f = torch.autograd.grad(loss_f, ins, retain_graph=True, allow_unused=True)
        for n, r, f in zip(NAMES[2:], g_r, g_f):
            r = torch.zeros_like(f) if r is None else r  # the reference leaves dD unconnected for a state loss
            assert_close(f"{n} ({name} only)", r, f, **TOL[torch.float64])


def test_chunked_stable_with_strong_decay():
    """Large Δ|A| (decays, and the decays of whole chunks, underflow to 0) stays finite and matches."""
    ins = [t.detach() for t in make_inputs(1, 12, 3, 4, torch.float32)]
    ins[1] = ins[1] * 200.0
    ins = [t.requires_grad_() for t in ins]
    dy, dh = cotangents(1, 12, 3, 4)
    ref = outputs_and_grads(naive_selective_scan, ins, dy.float(), dh.float())
    fast = outputs_and_grads(lambda *a: triton_chunked_selective_scan(*a, chunk_size=5), ins, dy.float(), dh.float())
    for name, r, f in zip(NAMES, ref, fast):
        assert torch.isfinite(f).all(), name
        assert_close(name, r, f, atol=1e-3, rtol=1e-4)


def test_chunked_empty_sequence():
    u, delta, A, B, C, D, h0 = (t.detach() for t in make_inputs(2, 5, 3, 4, torch.float32))
    y, h = triton_chunked_selective_scan(u[:, :0], delta[:, :0], A, B[:, :0], C[:, :0], D, h0)
    assert y.shape == (2, 0, 3)
    assert_close("state unchanged", h0, h, atol=0.0, rtol=0.0)



@pytest.mark.parametrize("scan", [triton_chunked_selective_scan, triton_selective_scan], ids=["chunked", "sequential"])
def test_triton_scans_with_no_state_columns(scan):
    """N = 0 (an empty state): y = D * u, as the reference gives it (the kernels' launches divided by zero)."""
    u, delta, A, B, C, D, h0 = make_inputs(2, 5, 3, 4, torch.float32)
    ins = (u, delta, A[:, :0], B[:, :, :0], C[:, :, :0], D, h0[..., :0])
    dy, dh = torch.randn(2, 5, 3, device=DEVICE), torch.randn(2, 3, 0, device=DEVICE)
    ref = outputs_and_grads(naive_selective_scan, ins, dy, dh)
    fast = outputs_and_grads(scan, ins, dy, dh)
    for name, r, f in zip(NAMES, ref, fast):
        assert_close(name, r, f, atol=0.0, rtol=0.0)


@pytest.mark.parametrize(("index", "shape", "match"), SCAN_BAD_SHAPES)
def test_chunked_bad_shapes(index, shape, match):
    ins = [t.detach() for t in make_inputs(2, 5, 3, 4, torch.float32)]
    ins[index] = torch.zeros(shape, device=DEVICE)
    with pytest.raises(ValueError, match=match):
        triton_chunked_selective_scan(*ins)


def test_chunked_bad_options_and_dtypes(monkeypatch):
    ins = [t.detach() for t in make_inputs(2, 5, 3, 4, torch.float32)]
    with pytest.raises(ValueError, match="chunk_size"):
        triton_chunked_selective_scan(*ins, chunk_size=0)
    with pytest.raises(ValueError, match="block_e"):
        triton_chunked_selective_scan(*ins, block_e=3)
    with pytest.raises(ValueError, match="one device"):
        triton_chunked_selective_scan(*ins[:5], torch.zeros(3, device="meta"), ins[6])
    with pytest.raises(TypeError, match="delta is torch.int32.*float16, bfloat16 or float32"):
        triton_chunked_selective_scan(ins[0], ins[1].int(), *ins[2:])
    monkeypatch.setattr(tc, "MAX_CHUNKS", 2)
    with pytest.raises(ValueError, match="raise chunk_size"):
        triton_chunked_selective_scan(*ins, chunk_size=2)
    monkeypatch.setattr(tc, "interpreted", lambda: False)
    with pytest.raises(TypeError, match="float64.*chunk_selective_scan"):
        triton_chunked_selective_scan(*[t.double() for t in ins])
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            triton_chunked_selective_scan(*ins)


def test_chunked_missing_triton(monkeypatch):
    """Without triton the call says how to install it (the module itself imports without triton: the kernels are
    jitted on the first call)."""
    monkeypatch.setitem(sys.modules, "triton", None)
    tc._kernels.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install triton"):
            triton_chunked_selective_scan(*[t.detach() for t in make_inputs(1, 3, 2, 2, torch.float32)])
    finally:
        tc._kernels.cache_clear()


def test_chunked_custom_op_fake_tensors():
    """The custom ops' fake implementations give the shapes and dtypes of the real ones (what torch.compile traces)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    ins = [t.detach() for t in make_inputs(2, 9, 3, 4, torch.float32)]
    ins[0] = ins[0].bfloat16()
    real = tc._fwd_op(*ins, 4, 0, True)
    real_b = tc._bwd_op(*ins[:6], real[2], real[0], real[1], 4, 0)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_ins = [mode.from_tensor(t) for t in ins]
        fake = tc._fwd_op(*fake_ins, 4, 0, True)
        fake_b = tc._bwd_op(*fake_ins[:6], fake[2], fake[0], fake[1], 4, 0)
    for r, f in zip((*real, *real_b), (*fake, *fake_b)):
        assert (r.shape, r.dtype) == (f.shape, f.dtype)


@pytest.mark.slow
def test_chunked_custom_op_traces_without_graph_break():
    """The forward and backward are torch.library custom ops: their fake implementations trace, and a
    ``fullgraph`` compile (no graph break) gives the same outputs and gradients."""
    ins = make_inputs(1, 9, 3, 4, torch.float32)
    dy, dh = cotangents(1, 9, 3, 4)
    eager = outputs_and_grads(lambda *a: triton_chunked_selective_scan(*a, chunk_size=4), ins, dy.float(), dh.float())
    compiled = torch.compile(lambda *a: triton_chunked_selective_scan(*a, chunk_size=4), backend="aot_eager",
                             fullgraph=True)
    traced = outputs_and_grads(compiled, ins, dy.float(), dh.float())
    for name, a, b in zip(NAMES, eager, traced):
        assert_close(name, a, b, atol=0.0, rtol=0.0)


# ---- the CUDA dispatch -------------------------------------------------------------------------------------------

def test_dispatch_picks_the_chunked_kernel_after_its_self_check():
    """The self-check passes here (the interpreter stands in for a GPU), so CUDA would get the chunked kernel."""
    fn, reason = fused._choose_cuda_kernel(torch.device(DEVICE))
    assert reason is None and fn is triton_chunked_selective_scan


@pytest.mark.parametrize("mode", ["bf16-autocast", "inference_mode"])
def test_dispatch_self_check_ignores_the_callers_mode(mode):
    """The one-time CUDA check ran in its caller's mode: under bf16 autocast (the trainers, gpu_lm.py) the reference's
    backward ran in bf16 and both kernels failed it, under inference_mode it raised; the GPU then used the PyTorch
    scan for the rest of the process."""
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16-autocast" else torch.inference_mode()
    with ctx:
        fn, reason = fused._choose_cuda_kernel(torch.device(DEVICE))
    assert reason is None and fn is triton_chunked_selective_scan


def test_dispatch_falls_back_to_the_sequential_kernel(monkeypatch, caplog):
    """A chunked kernel failing its self-check is logged and the sequential one used; both failing gives the
    reason, and fused_selective_scan on CUDA uses the chosen kernel."""
    def failure(device, fn, dtype=torch.float32):
        return "it raised boom" if fn is triton_chunked_selective_scan else None

    monkeypatch.setattr(fused, "_self_check_failure", failure)
    with caplog.at_level(logging.WARNING, logger="innerloop.ops.selective_scan.fused"):
        fn, reason = fused._choose_cuda_kernel(torch.device("cuda"))
    assert fn is triton_selective_scan and reason is None
    assert "the chunked Triton kernel failed its self-check: it raised boom" in caplog.text
    assert "using the sequential Triton kernel" in caplog.text
    monkeypatch.setattr(fused, "_self_check_failure", lambda device, fn, dtype=None: "it raised boom")
    fn, reason = fused._choose_cuda_kernel(torch.device("cuda"))
    assert fn is None and "chunked" in reason and "sequential" in reason
    monkeypatch.setattr(fused, "_CHECKED", {"cuda:3": (triton_selective_scan, None)})
    assert fused._kernel(torch.device("cuda:3")) is triton_selective_scan
    assert fused._kernel(torch.device("cuda:4")) is triton_chunked_selective_scan  # not checked yet


def test_dispatch_off_by_environment(monkeypatch):
    monkeypatch.setenv("INNERLOOP_NO_KERNEL", "1")
    assert "INNERLOOP_NO_KERNEL" in fused.fused_scan_unavailable("cuda")


# ---- ahead-of-time compile for sm_90 (no GPU needed) -------------------------------------------------------------

def _compile_chunked_for_sm90(cases):
    """Compile the five kernels for sm_90 (ptxas ships with triton)."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile
    from triton.runtime.jit import JITFunction

    from innerloop.ops.selective_scan import _triton_chunked_kernels as k
    from innerloop.ops.selective_scan import triton_chunked as tc

    for T, E, N, in_dtype, flags_on in cases:
        BLOCK_E, BLOCK_N, num_warps = tc._launch_config(E, N, None)
        ptr = {"float32": "*fp32", "bfloat16": "*bf16", "float16": "*fp16", "float64": "*fp64"}[in_dtype]
        acc_ptr = "*fp64" if in_dtype == "float64" else "*fp32"
        acc = tc._acc(torch.float64 if in_dtype == "float64" else torch.float32)
        ints = {"T": T, "E": E, "N": N, "n_chunks": -(-T // 64), "n_par": 3}
        common = dict(BLOCK_E=BLOCK_E, BLOCK_N=BLOCK_N, ACC=acc)
        kernels = {
            "chunk_state_kernel": (dict(CHUNK=64), ("u_ptr", "delta_ptr", "B_ptr")),
            "chunk_carry_kernel": (dict(HAS_H0=flags_on, REVERSE=flags_on), ()),
            "chunk_out_kernel": (dict(HAS_D=flags_on, CHUNK=64), ("u_ptr", "delta_ptr", "B_ptr", "C_ptr", "y_ptr")),
            "chunk_grad_state_kernel": (dict(CHUNK=64), ("delta_ptr", "C_ptr", "dy_ptr")),
            "chunk_bwd_kernel": (dict(HAS_D=flags_on, CHUNK=64),
                                 ("u_ptr", "delta_ptr", "B_ptr", "C_ptr", "dy_ptr", "du_ptr", "ddelta_ptr")),
        }
        for name, (flags, input_ptrs) in kernels.items():
            jit = JITFunction(getattr(k, name))
            consts = {**common, **flags, **{a: 1 for a in jit.arg_names if ints.get(a) == 1}}
            sig = {}
            for a in jit.arg_names:
                if a in consts or a in common or a in flags:
                    sig[a] = "constexpr"
                elif a.endswith("_ptr"):
                    sig[a] = ptr if a in input_ptrs else acc_ptr
                else:
                    sig[a] = "i32"
            src = ASTSource(jit, sig, constexprs=consts)
            assert compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["cubin"]


@pytest.mark.parametrize("slow", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["mamba-bf16", "all"])
def test_chunked_compiles_for_sm90(slow):
    """The interpreter never lowers the kernels, so compile them for sm_90 too (in a fresh process, without
    TRITON_INTERPRET): Mamba-sized bf16 with D, initial state and the reverse boundary pass; under slow also every
    int equal to 1, float16, float64 and the other branch of every flag."""
    cases = [(2048, 1536, 16, "bfloat16", True), (7, 1, 1, "float32", False), (100, 64, 5, "float64", True),
             (300, 96, 16, "float16", False)][:None if slow else 1]
    code = f"{inspect.getsource(_compile_chunked_for_sm90)}\n_compile_chunked_for_sm90({cases!r})"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = env.get("TRITON_DEFAULT_FP_FUSION", "1")  # silences a 3.9 warning
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode and ("ImportError" in proc.stderr or "ModuleNotFoundError" in proc.stderr):
        pytest.skip(f"triton's compiler API or NVIDIA backend is missing: {proc.stderr.splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]


# ---- bigger cases ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_chunked_larger_fp32(monkeypatch):
    """More chunks than programs, several channel blocks, Mamba's N = 16, chunk 32: float32 vs float64."""
    monkeypatch.setattr(tc, "BWD_PROGRAMS", 6)
    B, T, E, N = 2, 333, 40, 16
    ins64 = make_inputs(B, T, E, N, torch.float64)
    ins = [t.detach().float().requires_grad_() for t in ins64]
    dy, dh = cotangents(B, T, E, N)
    ref = outputs_and_grads(chunk_selective_scan, ins64, dy, dh)
    fast = outputs_and_grads(lambda *a: triton_chunked_selective_scan(*a, chunk_size=32), ins, dy.float(), dh.float())
    for name, r, f in zip(NAMES, ref, fast):
        assert_close(name, r, f.double(), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", [1000, 4099])
def test_chunked_cuda_large(dtype, T):
    """Mamba-sized shapes on the GPU (N = 16, E = 2 * 768) against the PyTorch chunked path in float32."""
    B = 2
    ins32 = make_inputs(B, T, 1536, 16, torch.float32, device="cuda")
    ins = [t.detach().to(dtype if i in (0, 3, 4) else torch.float32).requires_grad_() for i, t in enumerate(ins32)]
    ref_ins = [t.detach().float().requires_grad_() for t in ins]
    dy = torch.randn(B, T, 1536, device="cuda")
    dh = torch.randn(B, 1536, 16, device="cuda")
    ref = outputs_and_grads(chunk_selective_scan, ref_ins, dy, dh)
    fast = outputs_and_grads(triton_chunked_selective_scan, ins, dy.to(dtype), dh)
    for name, r, f in zip(NAMES, ref, fast):
        if dtype == torch.float32:
            assert_close(name, r, f, atol=1e-3, rtol=1e-3)
        else:
            assert_close(name, r, f.float(), ratio=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mamba_layer_uses_the_chunked_kernel_on_cuda():
    """The layer's default mode passes the self-check on the device, picks the chunked kernel, and matches the
    pure-PyTorch mode (outputs and parameter gradients)."""
    from innerloop.layers.mamba import Mamba

    assert fused.fused_scan_unavailable("cuda") is None
    assert fused._kernel(torch.device("cuda")) is triton_chunked_selective_scan
    torch.manual_seed(0)
    layer = Mamba(64).cuda()
    x = torch.randn(2, 1001, 64, device="cuda")
    outs = []
    for mode in ("auto", "chunk"):
        layer.mode = mode
        layer.zero_grad()
        y, state = layer(x)
        y.square().mean().backward()
        outs.append([y, state.ssm, *(p.grad.clone() for p in layer.parameters())])
    for i, (a, b) in enumerate(zip(*outs)):
        assert_close(f"output/grad {i}", b, a, atol=1e-3, rtol=1e-3)
