"""triton_ttt_linear against the references: outputs, final states and every input and parameter gradient.

Without CUDA the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by ``tests/conftest.py`` before
triton is imported), which is slow: the default cases are tiny (``D = 16``), the rest are ``slow``. The ``gpu`` cases
compare with the PyTorch dual form at real shapes on the device.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from innerloop.ops.ttt import TTTState, chunk_ttt_linear, naive_ttt_linear  # noqa: E402
from innerloop.ops.ttt.triton_linear import triton_ttt_linear  # noqa: E402
from innerloop.testing import assert_close, err_ratio  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OUT_NAMES = ["o", "final W", "final b", "final grad W", "final grad b"]
IN_NAMES = ["q", "k", "v", "lr", "tau", "ln_weight", "ln_bias", "W0", "b0", "acc_W0", "acc_b0"]


def make_inputs(B, T, H, D, ln=True, offset=0, bsz=16, dtype=torch.float64, seed=0, device=DEVICE, lr_scale=0.3):
    """Op inputs ``[q, k, v, lr, tau, ln_weight, ln_bias, W, b, acc_W, acc_b]`` (leaves requiring grad)."""
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return scale * torch.randn(*s, generator=g, dtype=torch.float64)

    ts = [r(B, T, H, D), r(B, T, H, D), r(B, T, H, D), lr_scale * torch.rand(B, T, H, generator=g, dtype=torch.float64),
          1 / torch.arange(1, bsz + 1, dtype=torch.float64) + r(bsz, scale=0.05),
          1 + r(H, D, scale=0.2) if ln else None, r(H, D, scale=0.2) if ln else None,
          r(B, H, D, D, scale=0.3), r(B, H, D, scale=0.3),
          r(B, H, D, D, scale=0.1 if offset else 0.0), r(B, H, D, scale=0.1 if offset else 0.0)]
    return [None if t is None else t.to(device=device, dtype=dtype).requires_grad_() for t in ts]


def run(op, ts, offset, **kw):
    return op(*ts[:7], TTTState((ts[7], ts[8]), (ts[9], ts[10]), offset), **kw)


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
    got, got_off, got_g = outputs_and_grads(triton_ttt_linear, ts, offset)
    assert got_off == ref_off
    for name, r, x in zip(names(ts[5] is not None), ref + ref_g, got + got_g):
        assert_close(name, r, x.to(r.dtype), **tol)


CASES = [  # B, T, H, offset, ln, bsz
    pytest.param(1, 1, 1, 0, True, 16, id="T1"),
    pytest.param(2, 17, 2, 5, True, 16, id="T17-off5-B2-H2"),
    pytest.param(1, 15, 2, 0, False, 4, id="T15-noln-b4"),
    pytest.param(1, 1, 1, 15, True, 16, id="T1-off15", marks=pytest.mark.slow),
    pytest.param(1, 63, 1, 0, True, 16, id="T63", marks=pytest.mark.slow),
    pytest.param(2, 63, 3, 9, True, 16, id="T63-off9-B2-H3", marks=pytest.mark.slow),
    pytest.param(1, 17, 2, 3, False, 8, id="T17-off3-noln-b8", marks=pytest.mark.slow),
    pytest.param(2, 16, 1, 0, True, 16, id="T16-one-full", marks=pytest.mark.slow),
    pytest.param(1, 20, 1, 0, True, 1, id="b1", marks=pytest.mark.slow),
    pytest.param(1, 40, 1, 7, True, 20, id="b20-not-pow2", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("B", "T", "H", "offset", "ln", "bsz"), CASES)
def test_vs_naive_fp64(B, T, H, offset, ln, bsz):
    """float64 kernel (interpreter) vs the token loop: every output and gradient to rounding."""
    if DEVICE == "cuda":
        pytest.skip("float64 runs in the interpreter only")
    ts = make_inputs(B, T, H, 16, ln, offset, bsz)
    compare(naive_ttt_linear, ts, ts, offset, dict(atol=1e-9, rtol=1e-7))


@pytest.mark.parametrize(("T", "offset", "ln", "D"), [
    pytest.param(17, 3, True, 16, id="T17-off3"),
    pytest.param(63, 0, False, 16, id="T63-noln", marks=pytest.mark.slow),
    pytest.param(21, 5, True, 128, id="T21-off5-D128", marks=pytest.mark.slow),
])
def test_fp32_vs_fp64_reference(T, offset, ln, D):
    """float32 kernel vs the dual form in float64 on the same values."""
    ts64 = make_inputs(2, T, 2, D, ln, offset, lr_scale=0.3 if D <= 64 else 0.05)
    ts = [None if t is None else t.detach().float().requires_grad_() for t in ts64]
    compare(chunk_ttt_linear, ts64, ts, offset, dict(atol=2e-4, rtol=2e-4))


@pytest.mark.parametrize("mode", ["bf16-inputs", "autocast"])
def test_bf16(mode):
    """bf16 q, k, v (or fp32 under bf16 autocast): float32 state and recurrence, bf16 output, close to float64 on the
    same values by error ratio, gradients included."""
    if mode == "autocast" and DEVICE == "cpu":
        pytest.skip("autocast is exercised on CUDA (the interpreter's CPU autocast adds nothing)")
    ts = make_inputs(2, 33, 2, 16, offset=3, dtype=torch.float32, lr_scale=0.05)
    if mode == "bf16-inputs":
        ts = [t.detach().bfloat16().requires_grad_() if i < 3 else t for i, t in enumerate(ts)]
    ref_ts = [None if t is None else t.detach().double().requires_grad_() for t in ts]
    ref, _, ref_g = outputs_and_grads(chunk_ttt_linear, ref_ts, 3)
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=mode == "autocast"):
        got, _, got_g = outputs_and_grads(triton_ttt_linear, ts, 3)
    assert got[0].dtype == torch.bfloat16 and got[1].dtype == torch.float32
    for name, r, x in zip(names(True), ref + ref_g, got + got_g):
        assert not torch.isnan(x).any(), name
        assert err_ratio(r, x) <= 2e-2, f"{name}: error ratio {err_ratio(r, x):.2e}"


def test_state_chaining_and_no_grad():
    """Prefix, then the rest from the returned state (split mid-mini-batch) == one call; the no-grad path (no saved
    states) == the autograd path; non-contiguous inputs give the same numbers."""
    ts = [None if t is None else t.detach() for t in make_inputs(2, 23, 2, 16, offset=2, dtype=torch.float32)]
    o, s = run(triton_ttt_linear, ts, 2)
    q, k, v, lr, tau, lnw, lnb = ts[:7]
    s1 = TTTState((ts[7], ts[8]), (ts[9], ts[10]), 2)
    o1, s1 = triton_ttt_linear(q[:, :9], k[:, :9], v[:, :9], lr[:, :9], tau, lnw, lnb, s1)
    o2, s2 = triton_ttt_linear(q[:, 9:], k[:, 9:], v[:, 9:], lr[:, 9:], tau, lnw, lnb, s1)
    assert s1.offset == 11 and s2.offset == s.offset == 25 % 16
    tol = dict(atol=1e-5, rtol=1e-5)
    assert_close("o chained", o, torch.cat([o1, o2], 1), **tol)
    for i, (a, b) in enumerate(zip(s.params + s.grads, s2.params + s2.grads)):
        assert_close(f"state[{i}] chained", a, b, **tol)
    grad_ts = [None if t is None else t.clone().requires_grad_() for t in ts]
    o_g, s_g = run(triton_ttt_linear, grad_ts, 2)
    assert_close("o with grad", o, o_g, atol=0.0, rtol=0.0)
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v)]
    o_nc, _ = triton_ttt_linear(*strided, lr, tau, lnw, lnb, TTTState((ts[7], ts[8]), (ts[9], ts[10]), 2))
    assert_close("o strided", o, o_nc, atol=0.0, rtol=0.0)


def test_fused_passes_equal_split(monkeypatch):
    """The one-pass forward and backward (everything inside the sequential pass) == the split ones (the parts that
    need only the saved weights in parallel), with and without a backward to come."""
    from innerloop.ops.ttt import triton_linear

    ts = make_inputs(2, 21, 1, 16, offset=3, dtype=torch.float32)
    res = {}
    for mode in ("split", "fused"):
        monkeypatch.setattr(triton_linear, "FORWARD", mode)
        monkeypatch.setattr(triton_linear, "BACKWARD", mode)
        outs, _, grads = outputs_and_grads(triton_ttt_linear, ts, 3)
        with torch.no_grad():
            o_ng, _ = run(triton_ttt_linear, ts, 3)
        res[mode] = [*outs, *grads, o_ng]
    for i, (a, b) in enumerate(zip(res["split"], res["fused"])):
        assert_close(f"split vs fused [{i}]", a, b, atol=1e-6, rtol=1e-6)


def test_empty_sequence():
    ts = [None if t is None else t.detach() for t in make_inputs(1, 3, 1, 16, dtype=torch.float32)]
    o, s = triton_ttt_linear(*[x[:, :0] for x in ts[:4]], *ts[4:7], TTTState((ts[7], ts[8]), (ts[9], ts[10]), 0))
    assert o.shape == (1, 0, 1, 16) and s.offset == 0


@pytest.mark.parametrize(("D", "match"), [(8, "power of two"), (24, "power of two"), (256, "power of two")])
def test_bad_head_dim(D, match):
    ts = [None if t is None else t.detach() for t in make_inputs(1, 2, 1, D, dtype=torch.float32)]
    with pytest.raises(ValueError, match=match):
        run(triton_ttt_linear, ts, 0)


def test_bad_inputs():
    ts = [None if t is None else t.detach() for t in make_inputs(2, 5, 2, 16, dtype=torch.float32)]
    with pytest.raises(ValueError, match="state tensors"):  # a state of another batch size
        triton_ttt_linear(*ts[:7], TTTState((ts[7][:1], ts[8][:1]), (ts[9][:1], ts[10][:1]), 0))
    with pytest.raises(ValueError, match="head_dim"):  # a state of another head dim
        small = [x[..., :8, :8] if x.dim() == 4 else x[..., :8] for x in ts[7:]]
        triton_ttt_linear(*ts[:7], TTTState(tuple(small[:2]), tuple(small[2:]), 0))
    with pytest.raises(TypeError, match="share one dtype"):
        triton_ttt_linear(ts[0], ts[1].double(), *ts[2:7], TTTState((ts[7], ts[8]), (ts[9], ts[10]), 0))
    with pytest.raises(ValueError, match="offset"):
        run(triton_ttt_linear, ts, 16)
    with pytest.raises(ValueError, match="precision"):
        run(triton_ttt_linear, ts, 0, precision="fp8")
    with pytest.raises(ValueError, match="one device"):
        triton_ttt_linear(*ts[:5], ts[5].to("meta"), ts[6], TTTState((ts[7], ts[8]), (ts[9], ts[10]), 0))


@pytest.mark.slow
def test_triton_missing():
    """Without triton the module imports (the custom ops register) and a call says how to install it."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch\n"
            "from innerloop.ops.ttt import TTTState\n"
            "from innerloop.ops.ttt.triton_linear import triton_ttt_linear\n"
            "x = torch.zeros(1, 2, 1, 16); st = TTTState.from_params((torch.zeros(1, 16, 16), torch.zeros(1, 16)), 1)\n"
            "try:\n"
            "    triton_ttt_linear(x, x, x, torch.zeros(1, 2, 1), torch.ones(4), None, None, st)\n"
            "except ImportError as e:\n"
            "    print('ImportError', e)\n")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert "pip install triton" in out


@pytest.mark.slow
def test_torch_compile_fullgraph():
    """The custom ops trace without a graph break (fake implementations and the autograd formula)."""
    ts = make_inputs(1, 5, 1, 16, offset=1, dtype=torch.float32)

    def f(*xs):
        o, s = run(triton_ttt_linear, list(xs), 1)
        return o.sum() + s.params[0].sum() + s.grads[1].sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    leaves = [t for t in ts]
    g_ref = torch.autograd.grad(f(*leaves), [t for t in leaves if t is not None])
    g_cmp = torch.autograd.grad(compiled(*leaves), [t for t in leaves if t is not None])
    for a, b in zip(g_ref, g_cmp):
        assert_close("compiled grad", a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_opcheck():
    """torch.library's own consistency checks of the forward op (schema, fake, autograd registration)."""
    from innerloop.ops.ttt import triton_linear as tl_mod

    ts = [None if t is None else t.detach().float() for t in make_inputs(1, 6, 1, 16, offset=2)]
    args = (*[t.contiguous() for t in ts[:7]], *ts[7:], 2, 1e-6, True, "ieee")
    torch.library.opcheck(tl_mod._fwd_op, args, test_utils=("test_schema", "test_faketensor"))


def _compile_for_sm90(cases):
    """Compile the kernels ahead of time for sm_90 (no GPU needed: ptxas ships with triton); returns shared bytes."""
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from innerloop.ops.ttt import _triton_linear_kernels as kern
    from innerloop.ops.ttt import triton_linear

    for D, bsz, ln, acc, dtype in cases:
        launch = triton_linear._launch(D, bsz)
        opts = {k: launch.pop(k) for k in ("num_warps", "num_stages")}
        variants = [(kern.ttt_linear_fwd_kernel, {"SAVE": True, "OUT": False}), (kern.ttt_linear_out_kernel, {}),
                    (kern.ttt_linear_bwd_par_kernel, {}), (kern.ttt_linear_bwd_seq_kernel, {})]
        if D == 16:  # the one-pass variants (triton_linear.FORWARD / BACKWARD = "fused"; not taken at D = 128)
            variants += [(kern.ttt_linear_fwd_kernel, {"SAVE": False, "OUT": True}), (kern.ttt_linear_bwd_kernel, {})]
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


@pytest.mark.parametrize("cases", [
    pytest.param([(16, 4, True, True, "fp32")], id="D16", marks=pytest.mark.slow),
    pytest.param([(64, 16, True, True, "bf16"), (64, 16, False, False, "fp16")], id="D64", marks=pytest.mark.slow),
    pytest.param([(128, 16, True, True, "bf16")], id="D128-split", marks=pytest.mark.slow),
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
    pytest.param(torch.float32, 2, 1000, 12, 64, 0, id="fp32-T1000-H12-D64"),
    pytest.param(torch.bfloat16, 2, 1000, 12, 64, 0, id="bf16-T1000-H12-D64"),
    pytest.param(torch.bfloat16, 1, 515, 4, 128, 7, id="bf16-T515-D128-off7"),
    pytest.param(torch.float32, 3, 77, 2, 32, 3, id="fp32-T77-D32-off3"),
])
def test_cuda_vs_chunk(dtype, B, T, H, D, offset):
    """Real shapes on the GPU against the PyTorch dual form in float32 on the same (rounded) values."""
    ts32 = make_inputs(B, T, H, D, offset=offset, dtype=torch.float32, lr_scale=0.05)
    ts = [t.detach().to(dtype).requires_grad_() if i < 3 else t for i, t in enumerate(ts32)]
    ref_ts = [None if t is None else t.detach().float().requires_grad_() for t in ts]
    ref, _, ref_g = outputs_and_grads(chunk_ttt_linear, ref_ts, offset)
    got, _, got_g = outputs_and_grads(triton_ttt_linear, ts, offset)
    for name, r, x in zip(names(True), ref + ref_g, got + got_g):
        if dtype == torch.float32:
            assert_close(name, r, x.float(), ratio=1e-4)
        else:
            assert_close(name, r, x.float(), ratio=2e-2)


# ---- dispatch ------------------------------------------------------------------------------------------------------

def test_auto_on_cpu_is_the_cpu_path(monkeypatch):
    """On the CPU the default path is cpu_fused_ttt_linear, untouched (no triton import, no check)."""
    from innerloop.ops.ttt import dispatch

    calls = []
    monkeypatch.setattr(dispatch, "cpu_fused_ttt_linear", lambda *a: calls.append(a) or "cpu")
    ts = [None if t is None else t.detach().cpu() for t in make_inputs(1, 3, 1, 16, dtype=torch.float32)]
    assert run(dispatch.auto_ttt_linear, ts, 0) == "cpu" and len(calls) == 1


def test_unavailable_reasons(monkeypatch):
    from innerloop.ops.ttt.dispatch import triton_linear_unavailable

    assert "CUDA devices" in triton_linear_unavailable("cpu")
    monkeypatch.setenv("INNERLOOP_NO_KERNEL", "1")
    assert "INNERLOOP_NO_KERNEL" in triton_linear_unavailable("cuda")
    if not torch.cuda.is_available():
        monkeypatch.setenv("INNERLOOP_NO_KERNEL", "0")
        assert triton_linear_unavailable("cuda") == "CUDA is not available"


def test_cuda_route_uses_kernel_or_logs_fallback(monkeypatch, caplog):
    """The CUDA branch (driven here on the interpreter): the kernel where it applies, else the dual form with the
    reason logged once; a failed self-check means the dual form."""
    from innerloop.ops.ttt import dispatch

    monkeypatch.setattr(dispatch, "triton_linear_unavailable", lambda device: None)
    monkeypatch.setattr(dispatch, "_LOGGED", set())
    ts = [None if t is None else t.detach() for t in make_inputs(1, 5, 1, 16, dtype=torch.float32)]
    o, _ = run(dispatch._cuda, ts, 0)
    o_ref, _ = run(triton_ttt_linear, ts, 0)
    assert_close("kernel route", o_ref, o, atol=0.0, rtol=0.0)
    small = [None if t is None else t.detach() for t in make_inputs(1, 5, 1, 8, dtype=torch.float32)]
    with caplog.at_level("WARNING", logger=dispatch.__name__):
        o8, _ = run(dispatch._cuda, small, 0)
        run(dispatch._cuda, small, 0)
    assert_close("fallback", run(chunk_ttt_linear, small, 0)[0], o8, atol=0.0, rtol=0.0)
    assert sum("power of two" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.setattr(dispatch, "triton_linear_unavailable", lambda device: "the kernel failed its self-check")
    o_fb, _ = run(dispatch._cuda, ts, 0)
    assert_close("failed check", run(chunk_ttt_linear, ts, 0)[0], o_fb, atol=0.0, rtol=0.0)


@pytest.mark.slow
def test_self_check_catches_a_wrong_kernel(caplog):
    from innerloop.ops.ttt.dispatch import self_check

    def wrong(q, k, v, lr, tau, lnw, lnb, state, eps=1e-6):
        o, s = chunk_ttt_linear(q, k, v, lr, tau, lnw, lnb, state, eps)
        return o, TTTState(s.params, (s.grads[0] * 1.01, s.grads[1]), s.offset)

    with caplog.at_level("ERROR"):
        assert not self_check("cpu", wrong)
    assert "final grad W" in caplog.text


@pytest.mark.slow
def test_kernel_passes_the_self_check():
    """The check TTTLinear runs before trusting the kernel on a device (here: the interpreter)."""
    from innerloop.ops.ttt.dispatch import self_check

    assert self_check(DEVICE, triton_ttt_linear)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bf16-autocast", "inference_mode"])
def test_cuda_dispatch_self_check_ignores_the_callers_mode(monkeypatch, mode):
    """The CUDA dispatch checks the kernel once per process, at the first call: under the trainers' bf16 autocast
    (or torch.inference_mode) that check failed, so every later call on the GPU used the dual form. CPU stand-in:
    the interpreter plays the GPU, the CUDA-only preconditions are waived."""
    from innerloop.ops.ttt import dispatch

    monkeypatch.setattr(dispatch, "triton_unavailable", lambda device, what: None)
    monkeypatch.setattr(dispatch, "_CHECKED", {})
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16-autocast" else torch.inference_mode()
    with ctx:
        assert dispatch.triton_linear_unavailable("cpu") is None
        assert dispatch.self_check("cpu", triton_ttt_linear)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_layer_default_mode_uses_kernel():
    """TTTLinear's default mode on CUDA runs the kernel (self-check passed) and matches mode='chunk', grads too."""
    from innerloop.layers.ttt import TTTLinear
    from innerloop.ops.ttt.dispatch import triton_linear_unavailable

    assert triton_linear_unavailable("cuda") is None
    torch.manual_seed(0)
    layer = TTTLinear(768, 12, mini_batch_size=16).cuda()
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
    """TTTLinear with the kernel in its default path (as on CUDA; here the interpreter) == mode='chunk': output,
    state and the gradients of every layer parameter (the learnable W0 tiled over the batch, tau, LayerNorm, ...)."""
    from innerloop.layers.ttt import TTTLinear
    from innerloop.ops import ttt as ttt_ops

    torch.manual_seed(0)
    layer = TTTLinear(32, 2, mini_batch_size=8)
    x = torch.randn(2, 21, 32)
    res = {}
    for mode in ("auto", "chunk"):
        layer.mode = mode
        with monkeypatch.context() as m:
            m.setattr(ttt_ops, "auto_ttt_linear", triton_ttt_linear)
            y, state = layer(x[:, :13])
            y2, state = layer(x[:, 13:], state)
        params = [p for p in layer.parameters() if p.requires_grad]
        grads = torch.autograd.grad((y.square().sum() + y2.sum()), params, allow_unused=True)
        res[mode] = [y, y2, *state.ttt.params, *[g for g in grads if g is not None]]
    assert len(res["auto"]) == len(res["chunk"])
    for i, (a, b) in enumerate(zip(res["chunk"], res["auto"])):
        assert_close(f"layer [{i}]", a, b, ratio=1e-5)  # float32 both ways: ~1e-6 measured
