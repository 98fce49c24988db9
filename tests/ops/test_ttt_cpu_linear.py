"""cpu_fused_ttt_linear (fused CPU inference kernel) against chunk_ttt_linear: outputs and final states."""

from __future__ import annotations

import pytest
import torch

from innerloop.ops.ttt import TTTState, chunk_ttt_linear, cpu_fused_ttt_linear, cpu_ttt_linear_available
from innerloop.testing import assert_close

pytestmark = pytest.mark.skipif(not cpu_ttt_linear_available(8), reason="no C compiler: fused kernel not built")


def make(B, T, H, D, ln=True, offset=0, dtype=torch.float64, bsz=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    q, k, v = r(B, T, H, D), r(B, T, H, D), r(B, T, H, D)
    lr = 0.3 * torch.rand(B, T, H, generator=g, dtype=dtype)
    tau = 1 / torch.arange(1, bsz + 1, dtype=dtype) + 0.05 * r(bsz)
    lnw, lnb = (1 + 0.2 * r(H, D), 0.2 * r(H, D)) if ln else (None, None)
    params = (0.3 * r(B, H, D, D), 0.3 * r(B, H, D))
    grads = tuple((0.1 if offset else 0.0) * torch.randn_like(p) for p in params)
    return [q, k, v, lr, tau, lnw, lnb], TTTState(params, grads, offset)


def compare(args, state, tol):
    o_ref, s_ref = chunk_ttt_linear(*args, state)
    o, s = cpu_fused_ttt_linear(*args, state)
    assert_close("o", o_ref, o, **tol)
    for name, a, b in zip(("W", "b", "grad W", "grad b"), s_ref.params + s_ref.grads, s.params + s.grads):
        assert_close(name, a, b, **tol)
    assert s.offset == s_ref.offset
    return o, s


FP64 = dict(atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(("B", "T", "H", "D", "ln", "offset", "bsz"), [
    pytest.param(2, 64, 3, 8, True, 0, 16, id="full-mini-batches"),
    pytest.param(2, 70, 2, 16, True, 5, 16, id="offset5-remainder"),
    pytest.param(1, 33, 2, 64, False, 0, 16, id="D64-noLN-remainder"),
    pytest.param(3, 9, 2, 8, True, 0, 4, id="bsz4-T9"),
    pytest.param(1, 7, 1, 8, True, 3, 16, id="inside-one-mini-batch"),
    pytest.param(2, 1, 2, 8, True, 15, 16, id="T1-commits"),
])
def test_matches_chunk_fp64(B, T, H, D, ln, offset, bsz):
    args, state = make(B, T, H, D, ln=ln, offset=offset, bsz=bsz)
    compare(args, state, FP64)


def test_matches_chunk_fp32():
    args, state = make(2, 100, 4, 64, offset=3, dtype=torch.float32)
    compare(args, state, dict(atol=2e-5, rtol=1e-4))


def test_state_equivalence():
    """Whole sequence == odd pieces with the state carried (the kernel runs inside each piece)."""
    args, state = make(2, 75, 2, 8)
    o, s = cpu_fused_ttt_linear(*args, state)
    outs, st, t = [], state, 0
    for n in (5, 32, 1, 37):
        piece = [x[:, t : t + n] for x in args[:4]] + args[4:]
        o_k, st = cpu_fused_ttt_linear(*piece, st)
        outs.append(o_k)
        t += n
    assert_close("o", o, torch.cat(outs, 1), **FP64)
    assert_close("W", s.params[0], st.params[0], **FP64)


def test_gradients_use_the_chunk_path():
    """With grad enabled and inputs requiring grad the result is chunk_ttt_linear's, gradients included."""
    args, state = make(1, 40, 2, 8)
    args[0].requires_grad_()
    o, _ = cpu_fused_ttt_linear(*args, state)
    o_ref, _ = chunk_ttt_linear(*args, state)
    assert o.grad_fn is not None
    (g,) = torch.autograd.grad(o.sum(), args[0])
    (g_ref,) = torch.autograd.grad(o_ref.sum(), args[0])
    assert_close("dq", g_ref, g, **FP64)
    with torch.no_grad():
        o_ng, _ = cpu_fused_ttt_linear(*args, state)
    assert_close("no-grad kernel", o_ref.detach(), o_ng, **FP64)


@pytest.mark.parametrize("index", [1, 2, 3, 6], ids=["k", "v", "lr", "ln_bias"])
def test_any_operand_needing_a_gradient_uses_the_chunk_path(index):
    """Not just q: a gradient wanted for any operand (k, v, lr, LayerNorm) must reach it, as through chunk."""
    args, state = make(1, 40, 2, 8)
    args[index].requires_grad_()
    o, _ = cpu_fused_ttt_linear(*args, state)
    o_ref, _ = chunk_ttt_linear(*args, state)
    assert o.grad_fn is not None
    (g,) = torch.autograd.grad(o.sum(), args[index])
    (g_ref,) = torch.autograd.grad(o_ref.sum(), args[index])
    assert_close("grad", g_ref, g, **FP64)


def test_mixed_dtypes_give_the_chunk_result():
    """The kernel reads every operand as q's dtype: a float32 tau with float64 q must not reach it."""
    args, state = make(2, 48, 2, 8)
    args[4] = args[4].float()
    compare(args, state, FP64)


def test_layer_uses_kernel_at_inference(monkeypatch):
    """TTTLinear's default mode ('auto') calls the fused op; eval output equals the training-mode (chunk) output."""
    from innerloop.layers import TTTLinear
    from innerloop.ops.ttt import cpu_linear

    layer = TTTLinear(32, 4, mini_batch_size=8).double()
    x = torch.randn(2, 37, 32, dtype=torch.float64)
    y_train, s_train = layer(x)
    calls = []
    real = cpu_linear._library
    monkeypatch.setattr(cpu_linear, "_library", lambda *a: calls.append(a) or real(*a))
    with torch.no_grad():
        y_inf, s_inf = layer(x)
    assert calls, "the kernel was not used under no_grad"
    assert_close("y", y_train.detach(), y_inf, **FP64)


def test_bad_inputs_are_checked():
    args, state = make(1, 8, 2, 8)
    args[1] = args[1][..., :4]
    with pytest.raises(ValueError, match="k"):
        cpu_fused_ttt_linear(*args, state)


def test_forward_ad_never_reaches_the_kernel():
    """The kernel makes no graph: under forward-mode AD it would drop the tangent (None) silently; it must go to the
    dual form (which raises for forward AD) or give the true tangent, never None."""
    import torch.autograd.forward_ad as fwAD

    from innerloop.ops.ttt import auto_ttt_linear, recurrent_ttt_linear
    from innerloop.ops.ttt.cpu_linear import kernel_unavailable

    args, state = make(1, 32, 2, 8)
    tangent = torch.randn_like(args[0])
    with fwAD.dual_level():
        dual = fwAD.make_dual(args[0], tangent)
        assert "forward-mode AD" in kernel_unavailable([dual])
        o_ref, _ = recurrent_ttt_linear(dual, *args[1:], state)
        want = fwAD.unpack_dual(o_ref).tangent
        for fn in (cpu_fused_ttt_linear, auto_ttt_linear):
            try:
                o, _ = fn(dual, *args[1:], state)
            except NotImplementedError:  # the dual form's autograd.Function has no jvp: a clear refusal is fine
                continue
            got = fwAD.unpack_dual(o).tangent
            assert got is not None, f"{fn.__name__} dropped the forward-mode tangent"
            assert_close("tangent", want, got, **FP64)


def test_functorch_transforms_never_reach_the_kernel():
    """vmap/jvp wrap tensors without storage: the kernel must not be tried on them (no 'data pointer' error)."""
    from innerloop.ops.ttt.cpu_linear import kernel_unavailable

    args, state = make(1, 32, 2, 8)
    seen = []
    torch.func.vmap(lambda q: seen.append(kernel_unavailable([q])) or q)(torch.stack([args[0]] * 2))
    assert seen and "torch.func" in seen[0]
    with pytest.raises(RuntimeError) as chunk_err:
        torch.func.vmap(lambda q: chunk_ttt_linear(q, *args[1:], state)[0])(torch.stack([args[0]] * 2))
    with pytest.raises(RuntimeError) as fused_err:
        torch.func.vmap(lambda q: cpu_fused_ttt_linear(q, *args[1:], state)[0])(torch.stack([args[0]] * 2))
    assert str(fused_err.value) == str(chunk_err.value)


def test_self_check_failure_keeps_the_kernel_off(monkeypatch, caplog):
    """A kernel that computes something else (a miscompile) is caught once, logged, and never used."""
    from innerloop.ops.ttt import cpu_linear

    monkeypatch.setattr(cpu_linear, "_CHECKED", {})
    real = cpu_linear._run_kernel
    monkeypatch.setattr(cpu_linear, "_run_kernel", lambda *a: tuple(1.001 * x for x in real(*a)))
    args, state = make(2, 32, 2, 8)
    with caplog.at_level("ERROR"):
        reason = cpu_linear.kernel_unavailable([args[0]])
    assert reason is not None and "self-check" in reason and "self-check" in caplog.text
    compare(args, state, FP64)  # the dual form's result, exactly
    monkeypatch.setattr(cpu_linear, "_CHECKED", {})
    monkeypatch.setattr(cpu_linear, "_run_kernel", real)
    assert cpu_linear.kernel_unavailable([args[0]]) is None


@pytest.mark.parametrize("which", ["state", "lr", "ln_weight"])
def test_mixed_dtypes_are_refused_by_name(which):
    """An operand in another dtype than q (a float64 state with float32 q, say) is a TypeError naming it, not a
    matmul's 'expected scalar type' deep inside the scan, on every path."""
    from innerloop.ops.ttt import naive_ttt_linear, recurrent_ttt_linear

    args, state = make(1, 20, 2, 8, dtype=torch.float32)
    if which == "state":
        state = TTTState(tuple(p.double() for p in state.params), tuple(g.double() for g in state.grads), 0)
    else:
        i = {"lr": 3, "ln_weight": 5}[which]
        args[i] = args[i].double()
    for fn in (naive_ttt_linear, recurrent_ttt_linear, chunk_ttt_linear, cpu_fused_ttt_linear):
        with pytest.raises(TypeError, match=which):
            fn(*args, state)


def test_low_precision_state_and_other_tau_dtype_are_computed_alike():
    """What the naive path takes (tau in another float dtype; a bf16 state with float32 q), the fast paths take."""
    from innerloop.ops.ttt import naive_ttt_linear, recurrent_ttt_linear

    args, state = make(1, 20, 2, 8, dtype=torch.float32)
    args[4] = args[4].double()
    ref, _ = naive_ttt_linear(*args, state)
    for fn in (recurrent_ttt_linear, chunk_ttt_linear, cpu_fused_ttt_linear):
        assert_close(fn.__name__, ref, fn(*args, state)[0], atol=1e-4, rtol=1e-4)
    args[4] = args[4].float()
    low = TTTState(tuple(p.bfloat16() for p in state.params), tuple(g.bfloat16() for g in state.grads), 0)
    o_ref, _ = recurrent_ttt_linear(*args, low)
    for fn in (chunk_ttt_linear, cpu_fused_ttt_linear):
        o, s = fn(*args, low)
        assert o.dtype == torch.float32 and s.params[0].dtype == torch.float32
        assert_close(fn.__name__, o_ref, o, atol=1e-4, rtol=1e-4)


def test_a_state_on_another_device_is_refused_by_name():
    from innerloop.ops.ttt import recurrent_ttt_linear

    args, state = make(1, 8, 1, 4)
    meta = TTTState(tuple(p.to("meta") for p in state.params), tuple(g.to("meta") for g in state.grads), 0)
    for fn in (recurrent_ttt_linear, chunk_ttt_linear, cpu_fused_ttt_linear):
        with pytest.raises(ValueError, match=r"state.params\[0\] is on meta"):
            fn(*args, meta)
