"""torch.compile of the language model and its mixers on the CPU: the same values and gradients as eager.

The fast tests use ``backend='aot_eager'`` (AOTAutograd's tracing without inductor's code generation); the inductor
ones are ``slow`` (C++ code generation per graph).
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

from innerloop.layers import Mamba, TTTLinear
from innerloop.models.lm import CausalLM, LMConfig
from innerloop.ops.selective_scan.cpu_fused import cpu_kernel_available
from innerloop.ops.ttt.cpu_linear import cpu_ttt_linear_available


def _lm(mixer: str, backbone: str = "transformer", mode: str = "auto") -> CausalLM:
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   mixer=mixer, backbone=backbone, mini_batch_size=4, mode=mode)
    return CausalLM(cfg)


def _loss_and_grads(model: torch.nn.Module, fn, ids: torch.Tensor):
    model.zero_grad(set_to_none=True)
    out = fn(ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_same(model: CausalLM, compiled, ids: torch.Tensor, tol: float) -> None:
    ref_logits, ref_grads = _loss_and_grads(model, model, ids)
    got_logits, got_grads = _loss_and_grads(model, compiled, ids)
    torch.testing.assert_close(got_logits, ref_logits, atol=tol, rtol=tol)
    assert got_grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        torch.testing.assert_close(got_grads[name], g, atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}")


def test_attention_lm_compiles_fullgraph():
    """No graph break in the whole model (the token-id range check is an in-graph assertion under compile, not a
    Python branch on the values), and the same logits and gradients as eager."""
    dynamo.reset()
    model = _lm("attention")
    ids = torch.randint(0, 64, (2, 10))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    _assert_same(model, compiled, ids, 1e-6)
    with pytest.raises(RuntimeError, match=r"token ids must lie in \[0, 64\)"):
        compiled(torch.tensor([[1, 64]]))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 64\)"):  # eager: unchanged
        model(torch.tensor([[1, 64]]))


def test_mamba_chunk_scan_compiled_backward():
    """Mamba's pure-PyTorch chunked scan (mode='chunk', what 'auto' falls back to without a kernel) traced whole:
    its backward used to fail at run time under aot_eager (a transposed gradient into softplus_backward, whose fake
    implementation promised a contiguous result: "view size is not compatible with input tensor's size")."""
    dynamo.reset()
    torch.manual_seed(0)
    layer = Mamba(32, 4, mode="chunk", chunk_size=4)
    x = torch.randn(2, 10, 32, requires_grad=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    results = []
    for f in (layer, compiled):
        layer.zero_grad(set_to_none=True)
        y, state = f(x)
        gx, = torch.autograd.grad((y.pow(2).sum() + state.ssm.sum()), x, retain_graph=True)
        (y.pow(2).sum() + state.ssm.sum()).backward()
        results.append([y.detach(), state.ssm.detach(), gx, *(p.grad for p in layer.parameters())])
    for got, ref in zip(results[1], results[0]):
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.skipif(not (cpu_kernel_available() and cpu_ttt_linear_available(8)), reason="no C kernels here")
@pytest.mark.parametrize("make", [pytest.param(lambda: TTTLinear(32, 4, mini_batch_size=4), marks=pytest.mark.slow),
                                  lambda: Mamba(32, 4)], ids=["ttt_linear", "mamba"])  # fmt: skip
def test_cpu_kernels_run_eagerly_under_compile(make):
    """The C kernels (ctypes) run outside the graph: a few graph breaks per call, the same values as eager, in
    inference (the kernels) and with gradients."""
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(2, 10, 32)
    for grad in (False, True):
        dynamo.reset()
        xx = x.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            explained = dynamo.explain(layer)(xx)
            if not grad:  # the kernels' path (with gradients the chunked scan also runs eagerly, by segment)
                assert explained.graph_break_count <= 3, [b.reason for b in explained.break_reasons]
            y, _ = layer(xx)
            yc, _ = torch.compile(layer, backend="aot_eager")(xx)
        torch.testing.assert_close(yc, y, atol=1e-6, rtol=1e-6)
        if grad:
            torch.testing.assert_close(torch.autograd.grad(yc.sum(), xx)[0], torch.autograd.grad(y.sum(), xx)[0],
                                       atol=1e-6, rtol=1e-6)


@pytest.mark.slow  # ~20 s of compiling on 2 cores
def test_carried_state_and_varying_lengths():
    """Chunks of varying length with the state carried through the compiled model give the whole sequence's logits;
    recompiles settle (one graph per distinct call signature, then reused)."""
    dynamo.reset()
    model = _lm("attention").eval()
    ids = torch.randint(0, 64, (2, 40))
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        full = model(ids).logits
        state, outs = None, []
        for a, b in ((0, 7), (7, 12), (12, 21), (21, 24), (24, 29), (29, 40)):
            out = compiled(ids[:, a:b], state)
            state, outs = out.state, outs + [out.logits]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    assert state.position == 40


@pytest.mark.slow
@pytest.mark.parametrize("mixer,mode", [("attention", "auto"), ("ttt_linear", "auto"),
                                        ("mamba", "auto"), ("mamba", "chunk"), ("gru", "auto")])
def test_lm_inductor_matches_eager(mixer, mode):
    """The default inductor backend: logits and every parameter gradient of a training step as eager (float32)."""
    dynamo.reset()
    model = _lm(mixer, mode=mode)
    ids = torch.randint(0, 64, (2, 10))
    _assert_same(model, torch.compile(model), ids, 1e-4)
