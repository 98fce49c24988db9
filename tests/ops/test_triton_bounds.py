"""Every Triton kernel of the ops reads and writes only its tensor arguments' memory (checked in the interpreter).

Triton's interpreter does not check addresses, so an unmasked access past a tensor's end passes the numerical tests
here and then, on a GPU, reads garbage or overwrites another tensor. ``_triton_bounds.checked_memory`` checks every
load and store of every launch against the launch's tensor arguments (moved into buffers with guard bands), and the
results must equal an unchecked run's bit for bit. Tiny odd shapes: remainders, offsets mid-mini-batch, masks at
every edge, every kernel variant (split and one-pass TTT passes, chunked and sequential scans, both passes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
if torch.cuda.is_available():
    pytest.skip("the bounds checker runs in Triton's CPU interpreter", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent))

from _triton_bounds import checked_memory  # noqa: E402

from innerloop.ops.selective_scan import triton_chunked as tc  # noqa: E402
from innerloop.ops.selective_scan.triton_chunked import triton_chunked_selective_scan  # noqa: E402
from innerloop.ops.selective_scan.triton_scan import triton_selective_scan  # noqa: E402
from innerloop.ops.ttt import TTTState, triton_linear, triton_mlp  # noqa: E402
from innerloop.testing import outputs_and_grads, selective_scan_inputs  # noqa: E402


def _rand(g, *shape, scale=1.0):
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def _ttt_inputs(mlp: bool, B, T, H, D, offset, bsz, ln, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    F = 4 * D
    a = 0.1 if offset else 0.0
    if mlp:
        params = [_rand(g, B, H, D, F, scale=D**-0.5), _rand(g, B, H, F, scale=0.3),
                  _rand(g, B, H, F, D, scale=F**-0.5), _rand(g, B, H, D, scale=0.3)]  # fmt: skip
    else:
        params = [_rand(g, B, H, D, D, scale=0.3), _rand(g, B, H, D, scale=0.3)]
    grads = [_rand(g, *p.shape, scale=a) for p in params]
    ts = [
        _rand(g, B, T, H, D),
        _rand(g, B, T, H, D),
        _rand(g, B, T, H, D),
        0.3 * torch.rand(B, T, H, generator=g, dtype=torch.float64),
        1 / torch.arange(1, bsz + 1, dtype=torch.float64) + _rand(g, bsz, scale=0.05),
        1 + _rand(g, H, D, scale=0.2) if ln else None,
        _rand(g, H, D, scale=0.2) if ln else None,
        *params,
        *grads,
    ]
    return [None if t is None else t.to(dtype).requires_grad_() for t in ts]  # fmt: skip


def _ttt_run(mlp: bool, ts, offset, grad: bool):
    """Outputs, final state and (with ``grad``) the gradients of a fixed projection wrt every input."""
    op = triton_mlp.triton_ttt_mlp if mlp else triton_linear.triton_ttt_linear
    n = 4 if mlp else 2
    with torch.set_grad_enabled(grad):
        o, s = op(*ts[:7], TTTState(tuple(ts[7 : 7 + n]), tuple(ts[7 + n :]), offset))
    outs = [o, *s.params, *s.grads]
    if not grad:
        return [x.detach() for x in outs]
    g = torch.Generator().manual_seed(1)
    loss = sum((x.double() * torch.randn(x.shape, generator=g, dtype=torch.float64)).sum() for x in outs)
    leaves = [t for t in ts if t is not None]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [x.detach() for x in outs] + [torch.zeros_like(t) if d is None else d for t, d in zip(leaves, grads)]


def _same(checked, plain, what):
    assert len(checked) == len(plain)
    for i, (a, b) in enumerate(zip(checked, plain)):
        assert torch.equal(a, b), f"{what}: result {i} differs under the bounds checker (an out-of-bounds read used)"


TTT_CASES = [  # mlp, B, T, H, offset, bsz, ln, dtype, mode
    pytest.param(False, 2, 17, 2, 5, 16, True, torch.float32, "split", id="linear-T17-off5-split"),
    pytest.param(False, 1, 15, 1, 0, 4, False, torch.bfloat16, "fused", id="linear-T15-b4-noln-bf16-fused"),
    pytest.param(False, 1, 1, 1, 15, 16, True, torch.float64, "split", id="linear-T1-off15"),
    pytest.param(True, 1, 17, 2, 3, 8, True, torch.float32, "split", id="mlp-T17-off3-b8-split"),
    pytest.param(
        True, 1, 9, 1, 0, 4, False, torch.float16, "fused", id="mlp-T9-b4-noln-fp16-fused", marks=pytest.mark.slow
    ),
    pytest.param(
        False, 2, 40, 1, 7, 20, True, torch.float32, "fused", id="linear-b20-not-pow2-fused", marks=pytest.mark.slow
    ),
    pytest.param(True, 2, 33, 1, 0, 16, True, torch.float32, "fused", id="mlp-T33-fused", marks=pytest.mark.slow),
]


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the kernels' tanh: exp -> inf gives 1, as meant
@pytest.mark.parametrize(("mlp", "B", "T", "H", "offset", "bsz", "ln", "dtype", "mode"), TTT_CASES)
def test_ttt_kernels_stay_in_bounds(monkeypatch, mlp, B, T, H, offset, bsz, ln, dtype, mode):
    module = triton_mlp if mlp else triton_linear
    monkeypatch.setattr(module, "FORWARD", mode)
    monkeypatch.setattr(module, "BACKWARD", mode)
    ts = _ttt_inputs(mlp, B, T, H, 16, offset, bsz, ln, dtype)
    launched: set[str] = set()
    for grad in (True, False):  # with a backward to come (segment weights saved) and without
        with checked_memory() as report:  # first: a kernel with an out-of-bounds access could crash an unchecked run
            checked = _ttt_run(mlp, ts, offset, grad)
        assert report.violations == [], "\n".join(report.violations)
        _same(checked, _ttt_run(mlp, ts, offset, grad), f"grad={grad}")
        launched.update(report.launches)
    prefix = "ttt_mlp_" if mlp else "ttt_linear_"
    want = {"fwd"} | ({"bwd"} if mode == "fused" else {"out", "bwd_par", "bwd_seq"})
    if T + offset <= bsz:  # one segment: the split forward has no output kernel to run
        want.discard("out")
    assert launched == {prefix + w + "_kernel" for w in want}


SCAN_CASES = [  # chunked, B, T, E, N, chunk, block_e, programs, dtype, d, h0
    pytest.param(True, 2, 17, 5, 3, 4, 4, 3, torch.float32, True, True, id="chunked-T17-c4-E5-be4-3progs"),
    pytest.param(True, 1, 15, 3, 16, 8, None, None, torch.bfloat16, False, False, id="chunked-T15-N16-bf16-noD"),
    pytest.param(False, 2, 13, 3, 6, 5, 2, None, torch.float32, True, False, id="seq-T13-c5-be2-noh0"),
    pytest.param(
        False, 1, 20, 6, 5, 16, None, None, torch.float16, False, True, id="seq-T20-c16-fp16", marks=pytest.mark.slow
    ),
]


@pytest.mark.parametrize(("chunked", "B", "T", "E", "N", "chunk", "block_e", "programs", "dtype", "d", "h0"),
                         SCAN_CASES)  # fmt: skip
def test_selective_scan_kernels_stay_in_bounds(monkeypatch, chunked, B, T, E, N, chunk, block_e, programs, dtype, d,
                                                h0):  # fmt: skip
    monkeypatch.setattr(tc, "BWD_PROGRAMS", programs)
    op = triton_chunked_selective_scan if chunked else triton_selective_scan
    ins = selective_scan_inputs(B, T, E, N, torch.float64, "cpu", with_d=d, with_h0=h0, seed=0)
    half = dtype in (torch.bfloat16, torch.float16)
    # the Mamba layer's layout for half inputs: u, B, C in the half dtype, everything else float32
    ins = [None if t is None else t.detach().to(torch.float32 if half and i not in (0, 3, 4) else dtype)
           .requires_grad_() for i, t in enumerate(ins)]  # fmt: skip
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(B, T, E, generator=g, dtype=torch.float64).to(dtype)
    dh = torch.randn(B, E, N, generator=g, dtype=torch.float64).to(torch.float32 if half else dtype)

    def run():
        return [x.detach() for x in outputs_and_grads(lambda *a: op(*a, chunk_size=chunk, block_e=block_e), ins, dy,
                                                      dh)]  # fmt: skip

    with checked_memory() as report:  # first: a kernel with an out-of-bounds access could crash an unchecked run
        checked = run()
    assert report.violations == [], "\n".join(report.violations)
    _same(checked, run(), "scan")
    kernels = ("state", "carry", "out", "grad_state", "bwd") if chunked else ("fwd", "bwd")  # several chunks each
    assert set(report.launches) == {("chunk_" if chunked else "_") + k + "_kernel" for k in kernels}


def test_the_checker_catches_an_unmasked_access():
    """The checker itself: a kernel that loads and stores a block past its tensors is caught, with the argument."""
    import triton
    import triton.language as tl

    @triton.jit
    def copy_block(x, y, n, BLOCK: tl.constexpr, MASKED: tl.constexpr):
        i = tl.arange(0, BLOCK)
        if MASKED:
            tl.store(y + i, tl.load(x + i, mask=i < n, other=0.0), mask=i < n)
        else:
            tl.store(y + i, tl.load(x + i))

    x, y = torch.arange(6.0), torch.zeros(6)
    with checked_memory() as report:
        copy_block[(1,)](x, y, 6, BLOCK=8, MASKED=True)
    assert report.launches == ["copy_block"] and report.violations == [] and torch.equal(x, y)
    y.zero_()
    with checked_memory() as report:
        copy_block[(1,)](x, y, 6, BLOCK=8, MASKED=False)
    violations = report.violations
    assert len(violations) == 2
    assert "load of 2 element(s)" in violations[0] and "'x'" in violations[0]
    assert "store of 2 element(s)" in violations[1] and "'y'" in violations[1]
    assert torch.equal(x, y)  # the in-bounds part was still copied back


def test_the_checker_catches_races_and_missing_barriers():
    """Programs writing one element, and a block read back transposed with and without a barrier."""
    import triton
    import triton.language as tl

    @triton.jit
    def every_program_stores_zero(x, y):
        tl.store(y, tl.load(x + tl.program_id(0)))  # each program its own x, all of them y[0]

    @triton.jit
    def transpose_through_global(x, tmp, y, N: tl.constexpr, BARRIER: tl.constexpr):
        i = tl.arange(0, N)
        tl.store(tmp + i[:, None] * N + i[None, :], tl.load(x + i[:, None] * N + i[None, :]))
        if BARRIER:
            tl.debug_barrier()
        tl.store(y + i[:, None] * N + i[None, :], tl.load(tmp + i[None, :] * N + i[:, None]))  # other threads' data

    x, y = torch.arange(4.0), torch.zeros(1)
    with checked_memory() as report:
        every_program_stores_zero[(4,)](x, y)
    assert report.violations == ["every_program_stores_zero: an element stored by two programs (3 accesses)"]
    x = torch.arange(16.0).reshape(4, 4)
    for barrier in (False, True):
        tmp, y = torch.zeros(4, 4), torch.zeros(4, 4)
        with checked_memory() as report:
            transpose_through_global[(1,)](x, tmp, y, N=4, BARRIER=barrier)
        assert torch.equal(y, x.T)
        want = [] if barrier else ["transpose_through_global: store then load of an element at another block position "
                                   "with no debug_barrier between (12 accesses)"]  # fmt: skip
        assert report.violations == want
