"""triton_ttt_mlp against the references: outputs, final states and every input and parameter gradient.

Without CUDA the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by ``tests/conftest.py``), which
is slow: the default cases are tiny (``D = 16``, hidden width 64 in two blocks of 32) and compare with the dual form
``chunk_ttt_mlp`` in float64 (itself checked against the token loop in ``test_ttt.py``); the token loop itself and the
rest are ``slow``. The ``gpu`` cases compare with the PyTorch dual form at real shapes on the device.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from innerloop.ops.ttt import TTTState, chunk_ttt_mlp, naive_ttt_mlp  # noqa: E402
from innerloop.ops.ttt.triton_mlp import triton_ttt_mlp  # noqa: E402
from innerloop.testing import assert_close, err_ratio  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
STATE = ["W1", "b1", "W2", "b2"]
OUT_NAMES = ["o", *[f"final {n}" for n in STATE], *[f"final grad {n}" for n in STATE]]
IN_NAMES = ["q", "k", "v", "lr", "tau", "ln_weight", "ln_bias", *[f"{n}_0" for n in STATE],
            *[f"acc_{n}_0" for n in STATE]]


def make_inputs(B, T, H, D, ln=True, offset=0, bsz=16, dtype=torch.float64, seed=0, device=DEVICE, lr_scale=0.3,
                hidden=None):
    """Op inputs ``[q, k, v, lr, tau, ln_weight, ln_bias, W1, b1, W2, b2, acc_W1, acc_b1, acc_W2, acc_b2]``."""
    F = hidden or 4 * D
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return scale * torch.randn(*s, generator=g, dtype=torch.float64)

    a = 1.0 if offset else 0.0
    ts = [r(B, T, H, D), r(B, T, H, D), r(B, T, H, D), lr_scale * torch.rand(B, T, H, generator=g, dtype=torch.float64),
          1 / torch.arange(1, bsz + 1, dtype=torch.float64) + r(bsz, scale=0.05),
          1 + r(H, D, scale=0.2) if ln else None, r(H, D, scale=0.2) if ln else None,
          r(B, H, D, F, scale=D ** -0.5), r(B, H, F, scale=0.3), r(B, H, F, D, scale=F ** -0.5), r(B, H, D, scale=0.3),
          r(B, H, D, F, scale=0.1 * a), r(B, H, F, scale=0.1 * a), r(B, H, F, D, scale=0.05 * a),
          r(B, H, D, scale=0.1 * a)]
    return [None if t is None else t.to(device=device, dtype=dtype).requires_grad_() for t in ts]


def run(op, ts, offset, **kw):
    return op(*ts[:7], TTTState(tuple(ts[7:11]), tuple(ts[11:15]), offset), **kw)


def outputs_and_grads(op, ts, offset, seed=1):
    """Output, final state and the gradients of a fixed random projection of both wrt every input."""
    o, s = run(op, ts, offset)
    gen = torch.Generator().manual_seed(seed)
    outs = [o, *s.params, *s.grads]
    loss = sum((x.double() * torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device)).sum() for x in outs)
    leaves = [t for t in ts if t is not None]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return outs, s.offset, [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


def names(ln):
    return OUT_NAMES + ["d" + n for n in IN_NAMES if ln or not n.startswith("ln")]


def compare(ref_op, ts_ref, ts, offset, tol):
    ref, ref_off, ref_g = outputs_and_grads(ref_op, ts_ref, offset)
    got, got_off, got_g = outputs_and_grads(triton_ttt_mlp, ts, offset)
    assert got_off == ref_off
    for name, r, x in zip(names(ts[5] is not None), ref + ref_g, got + got_g):
        assert_close(name, r, x.to(r.dtype), **tol)


CASES = [  # B, T, H, offset, ln, bsz
    pytest.param(1, 1, 1, 0, True, 16, id="T1"),
    pytest.param(2, 17, 2, 5, True, 16, id="T17-off5-B2-H2"),
    pytest.param(1, 15, 1, 0, False, 4, id="T15-noln-b4"),
    pytest.param(1, 1, 1, 15, True, 16, id="T1-off15", marks=pytest.mark.slow),
    pytest.param(1, 63, 1, 0, True, 16, id="T63", marks=pytest.mark.slow),
    pytest.param(2, 63, 3, 9, True, 16, id="T63-off9-B2-H3", marks=pytest.mark.slow),
    pytest.param(1, 17, 2, 3, False, 8, id="T17-off3-noln-b8", marks=pytest.mark.slow),
    pytest.param(2, 16, 1, 0, True, 16, id="T16-one-full", marks=pytest.mark.slow),
    pytest.param(1, 20, 1, 0, True, 1, id="b1", marks=pytest.mark.slow),
    pytest.param(1, 40, 1, 7, True, 20, id="b20-not-pow2", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("B", "T", "H", "offset", "ln", "bsz"), CASES)
def test_vs_dual_form_fp64(B, T, H, offset, ln, bsz):
    """float64 kernel (interpreter) vs the dual form in float64: every output and gradient to rounding."""
    if DEVICE == "cuda":
        pytest.skip("float64 runs in the interpreter only")
    ts = make_inputs(B, T, H, 16, ln, offset, bsz)
    compare(chunk_ttt_mlp, ts, ts, offset, dict(atol=1e-9, rtol=1e-7))


@pytest.mark.slow
@pytest.mark.parametrize(("T", "offset", "ln"), [(17, 5, True), (9, 0, False)])
def test_vs_naive_fp64(T, offset, ln):
    """float64 kernel vs the token loop (inner gradients by autograd)."""
    if DEVICE == "cuda":
        pytest.skip("float64 runs in the interpreter only")
    ts = make_inputs(2, T, 2, 16, ln, offset, bsz=8)
    compare(naive_ttt_mlp, ts, ts, offset, dict(atol=1e-9, rtol=1e-7))


@pytest.mark.parametrize(("T", "offset", "ln", "D", "hidden"), [
    pytest.param(17, 3, True, 16, None, id="T17-off3"),
    pytest.param(21, 0, False, 16, 48, id="T21-noln-F48", marks=pytest.mark.slow),
    pytest.param(19, 5, True, 64, None, id="T19-off5-D64", marks=pytest.mark.slow),
])
def test_fp32_vs_fp64_reference(T, offset, ln, D, hidden):
    """float32 kernel vs the dual form in float64 on the same values (a hidden width of 48: blocks of 16)."""
    ts64 = make_inputs(1, T, 2, D, ln, offset, lr_scale=0.3 if D <= 16 else 0.1, hidden=hidden)
    ts = [None if t is None else t.detach().float().requires_grad_() for t in ts64]
    compare(chunk_ttt_mlp, ts64, ts, offset, dict(atol=2e-4, rtol=2e-4))


@pytest.mark.parametrize("mode", ["bf16-inputs", "autocast"])
def test_bf16(mode):
    """bf16 q, k, v (or fp32 under bf16 autocast): float32 state and recurrence, bf16 output, close to float64 on the
    same values by error ratio, gradients included."""
    if mode == "autocast" and DEVICE == "cpu":
        pytest.skip("autocast is exercised on CUDA (the interpreter's CPU autocast adds nothing)")
    ts = make_inputs(1, 19, 2, 16, offset=3, dtype=torch.float32, lr_scale=0.05)
    if mode == "bf16-inputs":
        ts = [t.detach().bfloat16().requires_grad_() if i < 3 else t for i, t in enumerate(ts)]
    ref_ts = [None if t is None else t.detach().double().requires_grad_() for t in ts]
    ref, _, ref_g = outputs_and_grads(chunk_ttt_mlp, ref_ts, 3)
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=mode == "autocast"):
        got, _, got_g = outputs_and_grads(triton_ttt_mlp, ts, 3)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    for name, r, x in zip(names(True), ref + ref_g, got + got_g):
        assert not torch.isnan(x).any(), name
        assert err_ratio(r, x) <= 2e-2, f"{name}: error ratio {err_ratio(r, x):.2e}"


def test_state_chaining_and_no_grad():
    """Prefix, then the rest from the returned state (split mid-mini-batch) == one call; the no-grad path (no saved
    states) == the autograd path; non-contiguous inputs give the same numbers."""
    ts = [None if t is None else t.detach() for t in make_inputs(2, 13, 1, 16, offset=2, bsz=8, dtype=torch.float32)]
    o, s = run(triton_ttt_mlp, ts, 2)
    q, k, v, lr, tau, lnw, lnb = ts[:7]
    s1 = TTTState(tuple(ts[7:11]), tuple(ts[11:15]), 2)
    o1, s1 = triton_ttt_mlp(q[:, :4], k[:, :4], v[:, :4], lr[:, :4], tau, lnw, lnb, s1)
    o2, s2 = triton_ttt_mlp(q[:, 4:], k[:, 4:], v[:, 4:], lr[:, 4:], tau, lnw, lnb, s1)
    assert s1.offset == 6 and s2.offset == s.offset == 15 % 8
    tol = dict(atol=1e-5, rtol=1e-5)
    assert_close("o chained", o, torch.cat([o1, o2], 1), **tol)
    for i, (a, b) in enumerate(zip(s.params + s.grads, s2.params + s2.grads)):
        assert_close(f"state[{i}] chained", a, b, **tol)
    grad_ts = [None if t is None else t.clone().requires_grad_() for t in ts]
    o_g, _ = run(triton_ttt_mlp, grad_ts, 2)
    assert_close("o with grad", o, o_g, atol=0.0, rtol=0.0)
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v)]
    o_nc, _ = triton_ttt_mlp(*strided, lr, tau, lnw, lnb, TTTState(tuple(ts[7:11]), tuple(ts[11:15]), 2))
    assert_close("o strided", o, o_nc, atol=0.0, rtol=0.0)


@pytest.mark.slow
def test_fused_passes_equal_split(monkeypatch):
    """The one-pass forward and backward (everything inside the sequential pass) == the split ones (the parts that
    need only the saved weights in parallel over segments), with and without a backward to come."""
    from innerloop.ops.ttt import triton_mlp

    ts = make_inputs(1, 11, 1, 16, offset=3, bsz=4, dtype=torch.float32)
    res = {}
    for mode in ("split", "fused"):
        monkeypatch.setattr(triton_mlp, "FORWARD", mode)
        monkeypatch.setattr(triton_mlp, "BACKWARD", mode)
        outs, _, grads = outputs_and_grads(triton_ttt_mlp, ts, 3)
        with torch.no_grad():
            o_ng, _ = run(triton_ttt_mlp, ts, 3)
        res[mode] = [*outs, *grads, o_ng]
    for i, (a, b) in enumerate(zip(res["split"], res["fused"])):
        assert_close(f"split vs fused [{i}]", a, b, atol=1e-6, rtol=1e-6)


def test_empty_sequence():
    ts = [None if t is None else t.detach() for t in make_inputs(1, 3, 1, 16, dtype=torch.float32)]
    o, s = triton_ttt_mlp(*[x[:, :0] for x in ts[:4]], *ts[4:7], TTTState(tuple(ts[7:11]), tuple(ts[11:15]), 0))
    assert o.shape == (1, 0, 1, 16) and s.offset == 0


@pytest.mark.parametrize(("D", "hidden", "match"), [
    (8, None, "power of two"), (24, None, "power of two"), (256, None, "power of two"), (16, 40, "multiple of 16")])
def test_bad_shapes(D, hidden, match):
    ts = [None if t is None else t.detach() for t in make_inputs(1, 2, 1, D, dtype=torch.float32, hidden=hidden)]
    with pytest.raises(ValueError, match=match):
        run(triton_ttt_mlp, ts, 0)


def test_bad_inputs():
    ts = [None if t is None else t.detach() for t in make_inputs(2, 5, 2, 16, dtype=torch.float32)]
    with pytest.raises(ValueError, match="state tensors"):  # a state of another batch size
        triton_ttt_mlp(*ts[:7], TTTState(tuple(x[:1] for x in ts[7:11]), tuple(x[:1] for x in ts[11:15]), 0))
    with pytest.raises(ValueError, match="TTT-MLP"):  # a TTT-Linear state
        triton_ttt_mlp(*ts[:7], TTTState((ts[7][..., :16], ts[8][..., :16]), (ts[11][..., :16], ts[12][..., :16]), 0))
    with pytest.raises(TypeError, match="share one dtype"):
        triton_ttt_mlp(ts[0], ts[1].double(), *ts[2:7], TTTState(tuple(ts[7:11]), tuple(ts[11:15]), 0))
    with pytest.raises(TypeError, match="float16/bfloat16/float32"):
        q8 = [x.to(torch.float8_e4m3fn) for x in ts[:3]]
        triton_ttt_mlp(*q8, *ts[3:7], TTTState(tuple(ts[7:11]), tuple(ts[11:15]), 0))
    with pytest.raises(ValueError, match="offset"):
        run(triton_ttt_mlp, ts, 16)
    with pytest.raises(ValueError, match="precision"):
        run(triton_ttt_mlp, ts, 0, precision="fp8")
    with pytest.raises(ValueError, match="one device"):
        triton_ttt_mlp(*ts[:5], ts[5].to("meta"), ts[6], TTTState(tuple(ts[7:11]), tuple(ts[11:15]), 0))


@pytest.mark.slow
def test_torch_compile_fullgraph():
    """The custom ops trace without a graph break (fake implementations and the autograd formula)."""
    ts = make_inputs(1, 5, 1, 16, offset=1, dtype=torch.float32)

    def f(*xs):
        o, s = run(triton_ttt_mlp, list(xs), 1)
        return o.sum() + s.params[2].sum() + s.grads[1].sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    leaves = [t for t in ts if t is not None]
    g_ref = torch.autograd.grad(f(*ts), leaves)
    g_cmp = torch.autograd.grad(compiled(*ts), leaves)
    for a, b in zip(g_ref, g_cmp):
        assert_close("compiled grad", a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_opcheck():
    """torch.library's own consistency checks of the forward op (schema, fake implementation)."""
    from innerloop.ops.ttt import triton_mlp

    ts = [None if t is None else t.detach().float() for t in make_inputs(1, 6, 1, 16, offset=2)]
    args = (*[t.contiguous() for t in ts[:7]], *ts[7:], 2, 1e-6, True, "ieee")
    torch.library.opcheck(triton_mlp._fwd_op, args, test_utils=("test_schema", "test_faketensor"))


def _compile_for_sm90(cases):
    """Compile the kernels ahead of time for sm_90 (no GPU needed: ptxas ships with triton); checks shared memory."""
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from innerloop.ops.ttt import _triton_mlp_kernels as kern
    from innerloop.ops.ttt import triton_mlp

    for D, bsz, ln, acc, dtype in cases:
        launch = triton_mlp._launch(D, 4 * D, bsz)
        opts = {k: launch.pop(k) for k in ("num_warps", "num_stages")}
        variants = [(kern.ttt_mlp_fwd_kernel, {"SAVE": True, "OUT": False}), (kern.ttt_mlp_out_kernel, {}),
                    (kern.ttt_mlp_bwd_par_kernel, {}), (kern.ttt_mlp_bwd_seq_kernel, {})]
        if D == 64:  # the one-pass kernels (triton_mlp.FORWARD / BACKWARD = "fused")
            variants += [(kern.ttt_mlp_fwd_kernel, {"SAVE": False, "OUT": True}), (kern.ttt_mlp_bwd_kernel, {})]
        for fn, extra in variants:
            n_ptrs = fn.arg_names.index("T")
            sig = {name: "*fp32" for name in fn.arg_names[:n_ptrs]}
            sig.update({n: f"*{dtype}" for n in ("q_ptr", "k_ptr", "v_ptr", "o_ptr", "do_ptr", "dq_ptr", "dk_ptr",
                                                  "dv_ptr") if n in sig})
            sig.update({k: "i32" for k in ("T", "H", "off", "c0", "n_seg")}, eps="fp32")
            consts = dict(HAS_LN=ln, HAS_ACC=acc, ACC=tl.float32, PREC="ieee", **launch, **extra)
            sig.update({k: "constexpr" for k in consts})
            k = compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32), options=opts)
            assert k.metadata.shared <= 227 * 1024, f"{fn.__name__} D={D}: {k.metadata.shared} bytes of shared memory"


@pytest.mark.slow
@pytest.mark.parametrize("cases", [
    pytest.param([(64, 16, True, True, "bf16")], id="D64"),
    pytest.param([(128, 16, False, False, "fp16")], id="D128"),
])
def test_compiles_for_sm90(cases):
    """The interpreter never lowers the kernels, so compile them for sm_90 too (fresh process, no TRITON_INTERPRET)
    and check they fit an H100/H200's shared memory."""
    code = f"{inspect.getsource(_compile_for_sm90)}\n_compile_for_sm90({cases!r})"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = env.get("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode and ("ImportError" in proc.stderr or "ModuleNotFoundError" in proc.stderr):
        pytest.skip(f"triton's compiler API or NVIDIA backend is missing: {proc.stderr.splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("dtype", "B", "T", "H", "D", "offset"), [
    pytest.param(torch.float32, 2, 500, 12, 64, 0, id="fp32-T500-H12-D64"),
    pytest.param(torch.bfloat16, 2, 500, 12, 64, 0, id="bf16-T500-H12-D64"),
    pytest.param(torch.bfloat16, 1, 131, 4, 128, 7, id="bf16-T131-D128-off7"),
])
def test_cuda_vs_chunk(dtype, B, T, H, D, offset):
    """Real shapes on the GPU against the PyTorch dual form in float32 on the same (rounded) values. (Each case
    compiles four kernels; float32 with an offset is also the self-check, run by the layer test below.)"""
    ts32 = make_inputs(B, T, H, D, offset=offset, dtype=torch.float32, lr_scale=0.05)
    ts = [t.detach().to(dtype).requires_grad_() if i < 3 else t for i, t in enumerate(ts32)]
    ref_ts = [None if t is None else t.detach().float().requires_grad_() for t in ts]
    ref, _, ref_g = outputs_and_grads(chunk_ttt_mlp, ref_ts, offset)
    got, _, got_g = outputs_and_grads(triton_ttt_mlp, ts, offset)
    for name, r, x in zip(names(True), ref + ref_g, got + got_g):
        assert_close(name, r, x.float(), ratio=1e-4 if dtype == torch.float32 else 2e-2)


# ---- dispatch ------------------------------------------------------------------------------------------------------

def test_auto_on_cpu_is_the_dual_form(monkeypatch):
    """On the CPU the default path is chunk_ttt_mlp, untouched (no triton call, no check)."""
    from innerloop.ops.ttt import dispatch

    calls = []
    monkeypatch.setattr(dispatch, "chunk_ttt_mlp", lambda *a: calls.append(a) or "chunk")
    ts = [None if t is None else t.detach().cpu() for t in make_inputs(1, 3, 1, 16, dtype=torch.float32)]
    assert run(dispatch.auto_ttt_mlp, ts, 0) == "chunk" and len(calls) == 1


def test_unavailable_reasons(monkeypatch):
    from innerloop.ops.ttt.dispatch import triton_mlp_unavailable

    assert "CUDA devices" in triton_mlp_unavailable("cpu")
    monkeypatch.setenv("INNERLOOP_NO_KERNEL", "1")
    assert "INNERLOOP_NO_KERNEL" in triton_mlp_unavailable("cuda")
    if not torch.cuda.is_available():
        monkeypatch.setenv("INNERLOOP_NO_KERNEL", "0")
        assert triton_mlp_unavailable("cuda") == "CUDA is not available"


def test_cuda_route_uses_kernel_or_logs_fallback(monkeypatch, caplog):
    """The CUDA branch (driven here on the interpreter): the kernel where it applies, else the dual form with the
    reason logged once; a failed self-check means the dual form."""
    from innerloop.ops.ttt import dispatch

    monkeypatch.setattr(dispatch, "triton_mlp_unavailable", lambda device: None)
    monkeypatch.setattr(dispatch, "_LOGGED", set())
    ts = [None if t is None else t.detach() for t in make_inputs(1, 3, 1, 16, dtype=torch.float32)]
    o, _ = run(dispatch._cuda_mlp, ts, 0)
    o_ref, _ = run(triton_ttt_mlp, ts, 0)
    assert_close("kernel route", o_ref, o, atol=0.0, rtol=0.0)
    small = [None if t is None else t.detach() for t in make_inputs(1, 3, 1, 8, dtype=torch.float32)]
    with caplog.at_level("WARNING", logger=dispatch.__name__):
        o8, _ = run(dispatch._cuda_mlp, small, 0)
        run(dispatch._cuda_mlp, small, 0)
    assert_close("fallback", run(chunk_ttt_mlp, small, 0)[0], o8, atol=0.0, rtol=0.0)
    assert sum("power of two" in r.getMessage() and "TTT-MLP" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.setattr(dispatch, "triton_mlp_unavailable", lambda device: "the kernel failed its self-check")
    o_fb, _ = run(dispatch._cuda_mlp, ts, 0)
    assert_close("failed check", run(chunk_ttt_mlp, ts, 0)[0], o_fb, atol=0.0, rtol=0.0)


@pytest.mark.slow
def test_self_check_catches_a_wrong_kernel(caplog):
    from innerloop.ops.ttt.dispatch import self_check_mlp

    def wrong(q, k, v, lr, tau, lnw, lnb, state, eps=1e-6):
        o, s = chunk_ttt_mlp(q, k, v, lr, tau, lnw, lnb, state, eps)
        return o, TTTState(s.params, (*s.grads[:2], s.grads[2] * 1.01, s.grads[3]), s.offset)

    with caplog.at_level("ERROR"):
        assert not self_check_mlp("cpu", wrong)
    assert "final grad W2" in caplog.text


@pytest.mark.slow
def test_kernel_passes_the_self_check():
    """The check TTTMLP runs before trusting the kernel on a device (here: the interpreter; a few minutes)."""
    from innerloop.ops.ttt.dispatch import self_check_mlp

    assert self_check_mlp(DEVICE, triton_ttt_mlp)


@pytest.mark.slow
def test_cuda_dispatch_self_check_ignores_the_callers_autocast(monkeypatch):
    """As the TTT-Linear test: the one-time check made under the caller's bf16 autocast failed and the GPU ran
    chunk_ttt_mlp for the rest of the process (the interpreter stands in for the GPU)."""
    from innerloop.ops.ttt import dispatch

    monkeypatch.setattr(dispatch, "triton_unavailable", lambda device, what: None)
    monkeypatch.setattr(dispatch, "_CHECKED_MLP", {})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dispatch.triton_mlp_unavailable("cpu") is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_layer_default_mode_uses_kernel():
    """TTTMLP's default mode on CUDA runs the kernel (self-check passed) and matches mode='chunk', grads too."""
    from innerloop.layers.ttt import TTTMLP
    from innerloop.ops.ttt.dispatch import triton_mlp_unavailable

    assert triton_mlp_unavailable("cuda") is None
    torch.manual_seed(0)
    layer = TTTMLP(768, 12, mini_batch_size=16).cuda()
    x = torch.randn(2, 301, 768, device="cuda", requires_grad=True)
    res = []
    for mode in ("auto", "chunk"):
        layer.mode = mode
        y, _ = layer(x)
        g = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()], allow_unused=True)
        res.append([y, *[t for t in g if t is not None]])
    for i, (a, b) in enumerate(zip(*res)):
        assert_close(f"layer output/grad {i}", b, a, ratio=1e-4)


@pytest.mark.slow
def test_layer_with_the_kernel(monkeypatch):
    """TTTMLP with the kernel in its default path (as on CUDA; here the interpreter) == mode='chunk': output, state
    and the gradients of every layer parameter."""
    from innerloop.layers.ttt import TTTMLP
    from innerloop.ops import ttt as ttt_ops

    torch.manual_seed(0)
    layer = TTTMLP(32, 2, mini_batch_size=4).double()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    res = {}
    for mode in ("auto", "chunk"):
        layer.mode = mode
        with monkeypatch.context() as m:
            m.setattr(ttt_ops, "auto_ttt_mlp", triton_ttt_mlp)
            y, state = layer(x[:, :6])
            y2, state = layer(x[:, 6:], state)
        params = [p for p in layer.parameters() if p.requires_grad]
        grads = torch.autograd.grad((y.square().sum() + y2.sum()), params, allow_unused=True)
        res[mode] = [y, y2, *state.ttt.params, *[g for g in grads if g is not None]]
    assert len(res["auto"]) == len(res["chunk"])
    for i, (a, b) in enumerate(zip(res["chunk"], res["auto"])):
        assert_close(f"layer [{i}]", a, b, atol=1e-9, rtol=1e-7)


def test_fp32_saturated_gelu_gradients():
    """Hidden pre-activations ~1e10 (GELU saturated, ``gelu'' = 0``): the kernel's float32 gradients match the float64
    dual form (``gelu''``'s cubic factor used to overflow float32 there: ``0 * inf`` = NaN in most gradients)."""
    ts64 = make_inputs(1, 20, 1, 16)
    with torch.no_grad():
        ts64[7].mul_(1e10)  # W1_0: |XK W1| ~ 1e10
    ts = [None if t is None else t.detach().float().requires_grad_() for t in ts64]
    ref, _, ref_g = outputs_and_grads(chunk_ttt_mlp, ts64, 0)
    got, _, got_g = outputs_and_grads(triton_ttt_mlp, ts, 0)
    for name, r, x in zip(names(True), ref + ref_g, got + got_g):
        assert torch.isfinite(x).all(), name
        assert err_ratio(r, x) < 1e-5, name
