"""TTT-Linear / TTT-MLP ops: the chunked (dual form) and recurrent (primal form) paths against the naive reference."""

from __future__ import annotations

import pytest
import torch

from innerloop.ops.ttt import (
    TTTState,
    chunk_ttt_linear,
    chunk_ttt_mlp,
    naive_ttt_linear,
    naive_ttt_mlp,
    recurrent_ttt_linear,
    recurrent_ttt_mlp,
)
from innerloop.testing import assert_close, err_ratio

OPS = {
    ("chunk", "linear"): chunk_ttt_linear,
    ("chunk", "mlp"): chunk_ttt_mlp,
    ("recurrent", "linear"): recurrent_ttt_linear,
    ("recurrent", "mlp"): recurrent_ttt_mlp,
    ("naive", "linear"): naive_ttt_linear,
    ("naive", "mlp"): naive_ttt_mlp,
}
INPUT_NAMES = ["q", "k", "v", "lr", "tau", "ln_weight", "ln_bias"]
TOL = {torch.float64: {"atol": 1e-9, "rtol": 1e-7}, torch.float32: {"atol": 2e-4, "rtol": 2e-4}}


def make_inputs(B, T, H, D, model, ln=True, offset=0, dtype=torch.float64, bsz=16, lr_scale=0.3):
    """Random op inputs (all leaves requiring grad) and a state at in-mini-batch position ``offset``."""
    q, k, v = (torch.randn(B, T, H, D, dtype=dtype) for _ in range(3))
    lr = lr_scale * torch.rand(B, T, H, dtype=dtype)
    tau = 1 / torch.arange(1, bsz + 1, dtype=dtype) + 0.05 * torch.randn(bsz, dtype=dtype)
    lnw, lnb = (1 + 0.2 * torch.randn(H, D, dtype=dtype), 0.2 * torch.randn(H, D, dtype=dtype)) if ln else (None, None)
    F = 4 * D if model == "mlp" else D
    shapes = [(D, F), (F,)] + ([(F, D), (D,)] if model == "mlp" else [])
    params = [0.3 * torch.randn(B, H, *s, dtype=dtype) for s in shapes]
    grads = [(0.1 if offset else 0.0) * torch.randn(B, H, *s, dtype=dtype) for s in shapes]
    tensors = [q, k, v, lr, tau, lnw, lnb, *params, *grads]
    for t in tensors:
        if t is not None:
            t.requires_grad_(True)
    return tensors, offset


def call(op, tensors, offset):
    n = (len(tensors) - 7) // 2
    state = TTTState(tuple(tensors[7 : 7 + n]), tuple(tensors[7 + n :]), offset)
    return op(*tensors[:7], state)


def outputs_and_grads(op, tensors, offset, seed=1):
    """Output, final state, and the gradients of a fixed random projection of both wrt every input tensor."""
    o, s = call(op, tensors, offset)
    gen = torch.Generator().manual_seed(seed)
    outs = [o, *s.params, *s.grads]
    loss = sum((x * torch.randn(x.shape, generator=gen, dtype=x.dtype)).sum() for x in outs)
    leaves = [t for t in tensors if t is not None]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return outs, s.offset, [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]


def _names(model, ln):
    p = ["W", "b"] if model == "linear" else ["W1", "b1", "W2", "b2"]
    inputs = [n for n in INPUT_NAMES if ln or not n.startswith("ln")]
    return ["o", *[f"final {x}" for x in p], *[f"final grad {x}" for x in p]], \
        [f"d{x}" for x in inputs + [f"{x}0" for x in p] + [f"acc_{x}0" for x in p]]


CASES = [  # T, offset, ln, dtype
    pytest.param(1, 0, True, torch.float64, id="T1-off0-ln-fp64"),
    pytest.param(1, 15, True, torch.float64, id="T1-off15-ln-fp64"),
    pytest.param(15, 0, False, torch.float64, id="T15-off0-noln-fp64"),
    pytest.param(17, 5, True, torch.float64, id="T17-off5-ln-fp64"),
    pytest.param(63, 0, True, torch.float64, id="T63-off0-ln-fp64"),
    pytest.param(100, 11, False, torch.float64, id="T100-off11-noln-fp64"),
    pytest.param(100, 0, True, torch.float32, id="T100-off0-ln-fp32"),
    pytest.param(63, 9, True, torch.float32, id="T63-off9-ln-fp32"),
]


@pytest.mark.parametrize("model", ["linear", "mlp"])
@pytest.mark.parametrize("path", ["chunk", "recurrent"])
@pytest.mark.parametrize(("T", "offset", "ln", "dtype"), CASES)
def test_vs_naive(path, model, T, offset, ln, dtype):
    tensors, off = make_inputs(2, T, 3, 8, model, ln, offset, dtype, lr_scale=0.3 if model == "linear" else 0.1)
    ref, ref_off, ref_grads = outputs_and_grads(OPS["naive", model], tensors, off)
    got, got_off, got_grads = outputs_and_grads(OPS[path, model], tensors, off)
    assert got_off == ref_off == (offset + T) % 16
    out_names, grad_names = _names(model, ln)
    for name, r, x in zip(out_names + grad_names, ref + ref_grads, got + got_grads):
        assert_close(f"{path}-{model} {name}", r, x, **TOL[dtype])


@pytest.mark.parametrize("model", ["linear", "mlp"])
@pytest.mark.parametrize("ln", [True, False], ids=["ln", "noln"])
def test_chunk_gradcheck(model, ln):
    """Hand-written backward of the scan, leading/trailing segments: tiny float64 shapes, b=4, 2 full mini-batches."""
    tensors, off = make_inputs(1, 11, 2, 3, model, ln, offset=1, bsz=4)
    leaves = [t for t in tensors if t is not None]
    op = OPS["chunk", model]

    def fn(*xs):
        it = iter(xs)
        full = [None if t is None else next(it) for t in tensors]
        o, s = call(op, full, off)
        return (o, *s.params, *s.grads)

    assert torch.autograd.gradcheck(fn, leaves, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("model", ["linear", "mlp"])
@pytest.mark.parametrize("path", ["chunk", "recurrent"])
@pytest.mark.parametrize("mode", ["autocast", "bf16-inputs"])
def test_bf16(mode, path, model):
    """Low precision runs (fp32 recurrence inside), has no NaN in outputs or grads, and stays close to fp64."""
    tensors, off = make_inputs(2, 100 if path == "chunk" else 40, 2, 16, model, dtype=torch.float32, lr_scale=0.05)
    ref, _ = call(OPS["naive", model], [None if t is None else t.double() for t in tensors], off)
    if mode == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            o, s = call(OPS[path, model], tensors, off)
            o.float().sum().backward()
        leaves = tensors[:5]
    else:
        low = [t.detach().bfloat16().requires_grad_() for t in tensors[:5]] + tensors[5:]
        o, s = call(OPS[path, model], low, off)
        o.float().sum().backward()
        leaves = low[:5]
    assert o.dtype == torch.bfloat16 and s.params[0].dtype == torch.float32
    assert all(not torch.isnan(t.grad).any() for t in leaves)
    assert_close(f"{mode} {path}-{model} o", ref, o.double(), ratio=2e-2)


def _run_pieces(model, tensors, offset, sizes, kinds):
    """Run the op over consecutive pieces of the sequence (``kinds``: 'chunk' or 'recurrent'), carrying the state."""
    q, k, v, lr, tau, lnw, lnb = tensors[:7]
    n = (len(tensors) - 7) // 2
    state = TTTState(tuple(tensors[7 : 7 + n]), tuple(tensors[7 + n :]), offset)
    outs, s = [], 0
    for size, kind in zip(sizes, kinds):
        sl = slice(s, s + size)
        o, state = OPS[kind, model](q[:, sl], k[:, sl], v[:, sl], lr[:, sl], tau, lnw, lnb, state)
        outs.append(o)
        s += size
    assert s == q.shape[1]
    return torch.cat(outs, dim=1), state


SPLITS = [
    pytest.param([37] + [1] * 13, ["chunk"] + ["recurrent"] * 13, id="prefix37+13-steps"),
    pytest.param([5, 1, 13, 20, 2, 9], ["chunk", "recurrent", "chunk", "chunk", "recurrent", "chunk"], id="odd-mixed"),
    pytest.param([3, 33, 14], ["recurrent", "chunk", "chunk"], id="recurrent-then-chunks"),
]


@pytest.mark.parametrize("model", ["linear", "mlp"])
@pytest.mark.parametrize(("sizes", "kinds"), SPLITS)
def test_state_equivalence(model, sizes, kinds):
    with torch.no_grad():
        tensors, off = make_inputs(2, 50, 2, 8, model, offset=4)
        whole, s_whole = call(OPS["chunk", model], tensors, off)
        pieces, s_pieces = _run_pieces(model, tensors, off, sizes, kinds)
    assert s_pieces.offset == s_whole.offset
    assert_close("o", whole, pieces)
    for i, (a, b) in enumerate(zip(s_whole.params + s_whole.grads, s_pieces.params + s_pieces.grads)):
        assert_close(f"state[{i}]", a, b)


@pytest.mark.parametrize("model", ["linear", "mlp"])
@pytest.mark.parametrize("path", ["chunk", "recurrent"])
def test_causality(path, model):
    with torch.no_grad():
        tensors, off = make_inputs(1, 40, 2, 8, model, offset=3)
        o, _ = call(OPS[path, model], tensors, off)
        t = 21
        changed = [x.clone() for x in tensors[:4]]
        for x in changed:
            x[:, t:] += torch.randn_like(x[:, t:])
        o2, _ = call(OPS[path, model], changed + tensors[4:], off)
    torch.testing.assert_close(o2[:, :t], o[:, :t], rtol=0, atol=0)
    assert (o2[:, t] - o[:, t]).abs().max() > 1e-3


@pytest.mark.parametrize("path", ["chunk", "recurrent", "naive"])
def test_theorem1_linear_attention(path):
    """Linear inner model, no LN, batch GD over the whole sequence (b = T, tau = 1, every gradient at W0 = 0, b0 = 0),
    lr = 1 (the paper's eta = 1/2 on an un-halved loss): TTT equals causal unnormalised linear attention with the
    features [x, 1] (the inner bias is the constant feature): o_i = sum_{j<=i} (q_i . k_j + 1) v_j."""
    B, T, H, D = 2, 24, 3, 8
    q, k, v = (torch.randn(B, T, H, D, dtype=torch.float64) for _ in range(3))
    state = TTTState.from_params((torch.zeros(H, D, D, dtype=torch.float64), torch.zeros(H, D, dtype=torch.float64)), B)
    lr, tau = torch.ones(B, T, H, dtype=torch.float64), torch.ones(T, dtype=torch.float64)
    o, _ = OPS[path, "linear"](q, k, v, lr, tau, None, None, state)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) + 1  # [B, H, T, T]
    ref = torch.einsum("bhij,bjhd->bihd", torch.tril(scores), v)
    assert_close(f"{path} vs linear attention", ref, o)


def _bad(model):
    tensors, _ = make_inputs(2, 5, 3, 4, model)
    return [t.detach() if t is not None else None for t in tensors]


def _state(ts, offset=0):
    n = (len(ts) - 7) // 2
    return TTTState(tuple(ts[7 : 7 + n]), tuple(ts[7 + n :]), offset)


BAD = [  # (id, mutate(ts) -> (args, state), error, message fragment)
    ("rank", lambda ts: ([ts[0][0]] + ts[1:7], _state(ts)), ValueError, "q must be"),
    ("k-shape", lambda ts: ([ts[0], ts[1][:, :4]] + ts[2:7], _state(ts)), ValueError, "k has shape"),
    ("int-q", lambda ts: ([ts[0].long(), ts[1].long(), ts[2].long()] + ts[3:7], _state(ts)), TypeError, "floating"),
    ("lr-shape", lambda ts: (ts[:3] + [ts[3][..., 0]] + ts[4:7], _state(ts)), ValueError, "lr must be"),
    ("tau-2d", lambda ts: (ts[:4] + [ts[4][None]] + ts[5:7], _state(ts)), ValueError, "tau must be"),
    ("ln-one", lambda ts: (ts[:5] + [ts[5], None], _state(ts)), ValueError, "ln_weight and ln_bias"),
    ("ln-shape", lambda ts: (ts[:5] + [ts[5][:, :2], ts[6]], _state(ts)), ValueError, "ln_weight must be"),
    ("offset", lambda ts: (ts[:7], _state(ts, 16)), ValueError, "offset"),
    ("offset-neg", lambda ts: (ts[:7], _state(ts, -1)), ValueError, "offset"),
    ("offset-bool", lambda ts: (ts[:7], _state(ts, True)), ValueError, "offset"),  # chunk took True as 1
    ("head-dim", lambda ts: ([x[..., :3] for x in ts[:3]] + ts[3:5] + [x[:, :3] for x in ts[5:7]], _state(ts)),
     ValueError, "head_dim"),
    ("batch", lambda ts: ([x[:1] for x in ts[:4]] + ts[4:7], _state(ts)), ValueError, "state tensors"),
]


@pytest.mark.parametrize("model", ["linear", "mlp"])
@pytest.mark.parametrize("path", ["chunk", "recurrent", "naive"])
@pytest.mark.parametrize(("mutate", "err", "msg"), [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_bad_inputs(path, model, mutate, err, msg):
    args, state = mutate(_bad(model))
    with pytest.raises(err, match=msg):
        OPS[path, model](*args, state)


@pytest.mark.parametrize("path", ["chunk", "recurrent"])
def test_state_of_other_model(path):
    lin, mlp = _bad("linear"), _bad("mlp")
    with pytest.raises(ValueError, match="TTT-MLP"):
        OPS[path, "mlp"](*mlp[:7], _state(lin))
    with pytest.raises(ValueError, match="TTT-Linear"):
        OPS[path, "linear"](*lin[:7], _state(mlp))


def test_err_ratio_helper_sanity():
    x = torch.randn(100)
    assert err_ratio(x, x) == 0.0


def _scan_mlp_autograd(ws, xcat, tgt, lr, tau, lnw, lnb, eps):
    """Reference for ``full_scan_mlp``: the dual form of each full mini-batch, differentiated by autograd."""
    from innerloop.ops.ttt._common import gelu, loss_grad

    w1a, w2a = ws
    b = xcat.shape[2] // 2
    out = []
    for i in range(xcat.shape[0]):
        xka, xqa, t, lri = xcat[i, :, :b], xcat[i, :, b:], tgt[i], lr[i]
        eta = tau[:, None] * lri[:, None, :]  # [N, b, b]
        z1 = xka @ w1a
        x2a = torch.cat([gelu(z1), torch.ones_like(z1[..., :1])], -1)
        z2 = x2a @ w2a
        g2 = loss_grad(z2, torch.zeros_like(t), t, lnw, lnb, eps)  # (xk, xv) = (0, t): target t either way
        g1 = torch.func.vjp(gelu, z1)[1](g2 @ w2a[:, :-1].mT)[0]
        xbar2a = torch.cat([gelu(xqa @ w1a - (torch.tril(xqa @ xka.mT) * eta) @ g1), torch.ones_like(z1[..., :1])], -1)
        out.append(xbar2a @ w2a - (torch.tril(xbar2a @ x2a.mT) * eta) @ g2)
        lrl = (tau[-1] * lri).unsqueeze(-1)
        w1a = w1a - (lrl * xka).mT @ g1
        w2a = w2a - (lrl * x2a).mT @ g2
    return torch.stack(out), [w1a, w2a]


@pytest.mark.parametrize("group", [16, 2], ids=["one-group", "groups-of-2"])
@pytest.mark.parametrize("ln", [True, False], ids=["ln", "noln"])
def test_scan_mlp_vs_autograd(ln, group, monkeypatch):
    """The hand-written TTT-MLP scan backward equals autograd through the per-mini-batch dual form (float64, 5 full
    mini-batches of 4, every input and both ends of the state), including when the final state gets no gradient,
    with the backward's batched recompute in one group or in groups of 2 mini-batches (carrying the state grads)."""
    from innerloop.ops.ttt import _scan_mlp
    from innerloop.ops.ttt._scan_mlp import full_scan_mlp

    monkeypatch.setattr(_scan_mlp, "_GROUP", group)

    torch.manual_seed(3)
    n, N, b, D, dt = 5, 3, 4, 5, torch.float64
    F = 4 * D
    xcat = torch.cat([torch.randn(n, N, 2 * b, D, dtype=dt), torch.ones(n, N, 2 * b, 1, dtype=dt)], -1)
    tgt, lr = torch.randn(n, N, b, D, dtype=dt), 0.2 * torch.rand(n, N, b, dtype=dt)
    tau = 1 / torch.arange(1, b + 1, dtype=dt) + 0.05 * torch.randn(b, dtype=dt)
    ws = [0.4 * torch.randn(N, D + 1, F, dtype=dt), 0.4 * torch.randn(N, F + 1, D, dtype=dt)]
    lnw, lnb = (1 + 0.2 * torch.randn(N, 1, D, dtype=dt), 0.2 * torch.randn(N, 1, D, dtype=dt)) if ln else (None, None)
    leaves = [t for t in (*ws, xcat, tgt, lr, tau, lnw, lnb) if t is not None]
    for t in leaves:
        t.requires_grad_(True)
    for with_state in (True, False):
        res = []
        for fn in (_scan_mlp_autograd, full_scan_mlp):
            zbar, (w1n, w2n) = fn(ws, xcat, tgt, lr, tau, lnw, lnb, 1e-6)
            gen = torch.Generator().manual_seed(7)
            outs = [zbar, w1n, w2n] if with_state else [zbar]
            loss = sum((x * torch.randn(x.shape, generator=gen, dtype=dt)).sum() for x in outs)
            res.append([zbar, w1n, w2n, *torch.autograd.grad(loss, leaves)])
        names = ["zbar", "w1n", "w2n"] + [f"d{i}" for i in range(len(leaves))]
        for name, r, x in zip(names, *res):
            assert_close(f"scan-mlp {name} (state grad {with_state})", r, x, **TOL[dt])


def test_gelu_second_derivative():
    from innerloop.ops.ttt._scan_mlp import _gelu, _gelu_dd

    x = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(_gelu(x).sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    assert_close("gelu''", d2, _gelu_dd(x.detach()), **TOL[torch.float64])


@pytest.mark.parametrize("model", ["linear", "mlp"])
def test_chunk_refuses_double_backward(model):
    """The dual form's scans have hand-written backwards that build no graph: a gradient taken with create_graph=True
    and differentiated again missed terms silently (TTT-Linear, one full mini-batch: the meta-gradient of W0 through
    dL/dlr was off by 167%). It must raise, naming the path that is twice differentiable; the recurrent path is."""
    B, T, H, D, bsz = 1, 4, 1, 4, 4  # exactly one full mini-batch: the silent case
    ts, offset = make_inputs(B, T, H, D, model, bsz=bsz)
    w = torch.randn(B, T, H, D, dtype=torch.float64)

    def meta_grad(op):
        o, _ = call(op, ts, offset)
        (g_lr,) = torch.autograd.grad((o * w).sum(), ts[3], create_graph=True)
        return torch.autograd.grad(g_lr.pow(2).sum(), ts[7])[0]

    with pytest.raises(RuntimeError, match=f"chunk_ttt_{model} is once differentiable.*recurrent_ttt_{model}"):
        meta_grad(OPS[("chunk", model)])
    ref = meta_grad(OPS[("naive", model)])
    assert_close("recurrent second derivative", ref, meta_grad(OPS[("recurrent", model)]), **TOL[torch.float64])


def test_mlp_gradients_with_saturated_gelu():
    """Hidden pre-activations ~1e10 (GELU saturated, ``gelu'' = 0``): the float32 chunk backward's gradients equal the
    float64 token loop's (``gelu''``'s cubic factor used to overflow float32 there: ``0 * inf`` = NaN in dk, dW1)."""
    torch.manual_seed(0)
    tensors, off = make_inputs(1, 20, 1, 16, "mlp")
    with torch.no_grad():
        tensors[7].mul_(1e10)  # W1: |XK W1| ~ 1e10

    def run(op, ts):
        o, s = call(op, ts, off)
        outs = [o, *s.params]
        gen = torch.Generator().manual_seed(1)
        loss = sum((x.double() * torch.randn(x.shape, generator=gen, dtype=torch.float64)).sum() for x in outs)
        return outs + list(torch.autograd.grad(loss, ts[:11]))

    ref = run(naive_ttt_mlp, tensors)
    got = run(chunk_ttt_mlp, [t.detach().float().requires_grad_() for t in tensors])
    names = ["o", "W1", "b1", "W2", "b2", *(f"d{n}" for n in INPUT_NAMES), "dW1", "db1", "dW2", "db2"]
    for name, r, x in zip(names, ref, got):
        assert torch.isfinite(x).all(), name
        assert err_ratio(r, x) < 1e-5, name
