"""Static-state decoding (innerloop.models.lm.decoding): the fixed-shape step equals the eager decode for every mixer
and both backbones (logits and tokens, greedy and seeded sampling); the cache limit and bad options are clear errors;
on CUDA the graph-captured generate equals the eager one token for token (gpu-marked)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from innerloop.layers import MIXERS, register_mixer
from innerloop.layers.attention import one_query_attention
from innerloop.models.lm import CausalLM, LMConfig
from innerloop.testing import assert_close

TINY = dict(vocab_size=61, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            mini_batch_size=4)
BUILTIN = ("attention", "ttt_linear", "ttt_mlp", "mamba", "rnn", "lstm", "gru")
CASES = [pytest.param(m, bb, id=f"{m}-{bb}") for m in BUILTIN for bb in ("transformer", "mamba")]


def test_every_registered_mixer_is_covered():
    assert set(BUILTIN) == {n for n in MIXERS if not n.startswith("test_")}


def make_model(mixer: str, backbone: str = "transformer", device: str = "cpu") -> CausalLM:
    torch.manual_seed(0)
    model = CausalLM(LMConfig(**TINY, mixer=mixer, backbone=backbone)).eval()
    with torch.no_grad():  # perturb zero/one-initialised parameters so every one matters; sharper logits
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name or "learnable" in name:
                p.add_(0.2 * torch.randn_like(p))
        model.embed_tokens.weight.mul_(20.0)
    return model.to(device)


@pytest.mark.parametrize(("mixer", "backbone"), CASES)
def test_static_step_equals_eager(mixer, backbone):
    model = make_model(mixer, backbone)
    for T in (1, 5):  # one token, and an odd prompt (the steps cross a TTT mini-batch boundary: 4, 8)
        prompt = torch.randint(0, 61, (2, T))
        with torch.no_grad():
            out = model(prompt)
            static = model.static_state(out.state, T + 6)
            state = out.state
            for _ in range(6):
                tok = torch.randint(0, 61, (2, 1))
                eager = model(tok, state)
                state = eager.state
                assert_close(f"logits T={T}", eager.logits, model.static_step(tok, static), atol=1e-5, rtol=1e-5)
        assert static.length == T + 6 and int(static.position) == T + 6
        greedy = model.generate(prompt, 6, temperature=0)
        assert torch.equal(greedy, model.generate(prompt, 6, temperature=0, static_cache=True))
        assert model.decode_path == "static"
    kw = dict(temperature=1.3, top_k=20, top_p=0.95)
    sampled = model.generate(prompt, 6, generator=torch.Generator().manual_seed(T), **kw)
    again = model.generate(prompt, 6, generator=torch.Generator().manual_seed(T), static_cache=True, **kw)
    assert torch.equal(sampled, again)


@pytest.mark.parametrize("mixer", ["attention", "ttt_mlp", "lstm"])
def test_static_state_clone_is_independent(mixer):
    """The CUDA graph warms up on a clone (StaticLMState.clone): stepping it leaves the original as it was."""
    model = make_model(mixer, "mamba")
    prompt = torch.randint(0, 61, (1, 3))
    with torch.no_grad():
        static = model.static_state(model(prompt).state, 8)
        before = [t.clone() for t in _tensors(static.layers)]
        scratch = static.clone()
        model.static_step(prompt[:, :1], scratch)
        model.static_step(prompt[:, :1], scratch)
        assert static.length == 3 and int(static.position) == 3 and scratch.length == 5
        assert all(torch.equal(a, b) for a, b in zip(before, _tensors(static.layers)))
        assert not all(torch.equal(a, b) for a, b in zip(before, _tensors(scratch.layers)))


def _tensors(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (tuple, list)):
        return [t for x in tree for t in _tensors(x)]
    return []


def test_static_step_outside_no_grad():
    model = make_model("ttt_linear", "mamba")
    prompt = torch.randint(0, 61, (1, 3))
    out = model(prompt)  # grad mode on: the prefill state holds the inner parameters differentiably
    static = model.static_state(out.state, 5)
    logits = model.static_step(prompt[:, :1], static)
    assert not logits.requires_grad
    assert_close("logits", model(prompt[:, :1], out.state).logits.detach(), logits, atol=1e-5, rtol=1e-5)


def test_defaults_on_cpu_decode_eagerly():
    model = make_model("ttt_linear")
    out = model.generate(torch.randint(0, 61, (1, 3)), 4, temperature=0)
    assert out.shape == (1, 7) and model.decode_path == "eager"
    model.generate(torch.randint(0, 61, (1, 3)), 1, temperature=0, static_cache=True)  # one token: no step at all
    assert model.decode_path == "eager"


def test_iter_generate_streams_generates_tokens():
    model = make_model("ttt_mlp", "mamba")
    prompt = torch.randint(0, 61, (2, 3))
    steps = model.iter_generate(prompt, 5, generator=torch.Generator().manual_seed(0), static_cache=True)
    got = torch.cat([prompt, *steps], dim=1)
    assert torch.equal(got, model.generate(prompt, 5, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="max_length"):  # checked at the call, before any next()
        model.iter_generate(prompt, 5, static_cache=True, max_length=4)


def test_cache_limit_is_an_error_naming_max_length():
    model = make_model("attention")
    prompt = torch.randint(0, 61, (1, 3))
    with torch.no_grad():
        out = model(prompt)
        static = model.static_state(out.state, max_length=5)
        model.static_step(prompt[:, :1], static)
        model.static_step(prompt[:, :1], static)
        with pytest.raises(ValueError, match="max_length=5"):
            model.static_step(prompt[:, :1], static)
        with pytest.raises(ValueError, match="max_length >= 3"):
            model.static_state(out.state, max_length=2)
    with pytest.raises(ValueError, match="max_length >= 9"):
        model.generate(prompt, 6, static_cache=True, max_length=8)
    ok = model.generate(prompt, 6, temperature=0, static_cache=True, max_length=32)  # room to spare is fine
    assert torch.equal(ok, model.generate(prompt, 6, temperature=0))


def test_bad_options():
    model = make_model("gru")
    prompt = torch.randint(0, 61, (1, 2))
    with pytest.raises(ValueError, match="CUDA"):
        model.generate(prompt, 3, cuda_graph=True)
    with pytest.raises(ValueError, match="static_cache"):
        model.generate(prompt, 3, cuda_graph=True, static_cache=False)
    with torch.no_grad():
        static = model.static_state(model(prompt).state, 8)
        with pytest.raises(ValueError, match=r"\[B, 1\]"):
            model.static_step(prompt, static)


class RunningSum(nn.Module):
    """A mixer whose state holds a Python int: it has no static step."""

    modes = ("auto",)
    config_options = ()

    def __init__(self, hidden_size: int, num_heads: int, mode: str = "auto") -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.proj = nn.Linear(hidden_size, hidden_size)

    def init_state(self, batch_size, device=None, dtype=None):
        return (torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype), 0)

    def forward(self, x, state=None):
        total, n = state if state is not None else self.init_state(x.shape[0], x.device, x.dtype)
        csum = total[:, None] + self.proj(x).cumsum(1)
        return csum, (csum[:, -1], n + x.shape[1])


if "test_running_sum" not in MIXERS:
    register_mixer("test_running_sum")(RunningSum)


def test_mixer_without_static_step():
    model = CausalLM(LMConfig(**TINY, mixer="test_running_sum")).eval()
    prompt = torch.randint(0, 61, (1, 2))
    with pytest.raises(TypeError, match="static_decode_state"):
        model.generate(prompt, 3, static_cache=True)
    assert model.generate(prompt, 3).shape == (1, 5)  # the default decodes eagerly


@pytest.mark.parametrize("mixer", BUILTIN)
def test_static_state_of_another_model_is_an_error(mixer):
    """static_state did not check the state: one of a model with fewer layers was zipped short (static_step then ran
    only those blocks: silently wrong logits), a TTT state of another mini_batch_size decoded from a wrong offset,
    and other head counts or batch sizes failed deep in index_copy_ / broadcasting."""
    model = make_model(mixer)
    ids = torch.randint(0, 61, (2, 5))
    with torch.no_grad():
        for other, msg in ((dict(num_hidden_layers=1), "LMState with 2 layers"),
                           (dict(num_hidden_layers=3), "LMState with 2 layers")):
            torch.manual_seed(0)
            state = CausalLM(LMConfig(**{**TINY, **other}, mixer=mixer)).eval()(ids).state
            with pytest.raises(ValueError, match=msg):
                model.static_state(state, 8)
        if mixer in ("attention", "ttt_linear", "ttt_mlp"):
            other = CausalLM(LMConfig(**{**TINY, "num_attention_heads": 4}, mixer=mixer)).eval()
            with pytest.raises(ValueError, match="state"):
                model.static_state(other(ids).state, 8)
            out = model(ids)
            with pytest.raises(ValueError, match="position 5 but the LMState says 3"):
                model.static_state(out.state._replace(position=3), 8)
            static = model.static_state(model(ids[:1]).state, 8)
            with pytest.raises(ValueError, match="holds 1 rows but the step has 2"):
                model.static_step(ids[:, :1], static)
        if mixer.startswith("ttt"):
            other = CausalLM(LMConfig(**{**TINY, "mini_batch_size": 8}, mixer=mixer)).eval()
            with pytest.raises(ValueError, match="mini_batch_size"):
                model.static_state(other(ids).state, 8)
        static = model.static_state(model(ids).state, 8)
        for bad in (-1, 61):  # as forward (it said 'index out of range in self')
            with pytest.raises(ValueError, match=r"token ids must lie in \[0, 61\)"):
                model.static_step(torch.full((2, 1), bad), static)
        assert static.length == 5


def test_one_query_attention_equals_sdpa():
    q, k, v = torch.randn(2, 3, 1, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k[:, :, :5], v[:, :, :5])
    valid = torch.arange(7) < 5
    assert_close("one query", ref, one_query_attention(q, k, v, valid), atol=1e-6, rtol=1e-5)
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert_close("one query, all keys", full, one_query_attention(q, k, v), atol=1e-6, rtol=1e-5)


# ---- CUDA: the graph-captured step ----


@pytest.mark.gpu
@pytest.mark.parametrize(("mixer", "backbone"), CASES)
def test_cuda_graph_generate_equals_eager(mixer, backbone):
    model = make_model(mixer, backbone, device="cuda")
    prompt = torch.randint(0, 61, (2, 5), device="cuda")
    eager = model.generate(prompt, 20, temperature=0, cuda_graph=False)
    assert model.decode_path == "eager"
    graph = model.generate(prompt, 20, temperature=0)
    assert model.decode_path == "cuda_graph"
    assert torch.equal(eager, graph)
    kw = dict(temperature=1.0, top_k=30)
    eager = model.generate(prompt, 20, generator=torch.Generator("cuda").manual_seed(1), cuda_graph=False, **kw)
    graph = model.generate(prompt, 20, generator=torch.Generator("cuda").manual_seed(1), cuda_graph=True, **kw)
    assert model.decode_path == "cuda_graph"
    assert torch.equal(eager, graph)


@pytest.mark.gpu
@pytest.mark.parametrize("mixer", BUILTIN)
def test_cuda_graph_bf16_equals_static_steps(mixer):
    """Under bf16 autocast the replayed graph runs the static step's kernels: the same tokens as that step without
    the graph; its logits stay close to the eager decode's."""
    model = make_model(mixer, device="cuda")
    prompt = torch.randint(0, 61, (2, 5), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        graph = model.generate(prompt, 16, temperature=0, cuda_graph=True)
        assert model.decode_path == "cuda_graph"
        static = model.generate(prompt, 16, temperature=0, cuda_graph=False, static_cache=True)
        assert torch.equal(graph, static)
        with torch.no_grad():
            out = model(prompt)
            st = model.static_state(out.state, 32)
            tok = graph[:, 5:6]
            eager = model(tok, out.state).logits
            assert_close("bf16 step", eager, model.static_step(tok, st), ratio=2e-2)


@pytest.mark.gpu
def test_eager_one_query_attention_is_not_cudnn():
    """bf16 one-token attention steps on CUDA never call the cuDNN SDPA backend (it rebuilds a graph per cache
    length); the static step calls no SDPA at all."""
    model = make_model("attention", device="cuda")
    prompt = torch.randint(0, 61, (1, 7), device="cuda")
    tok = prompt[:, :1]
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        out = model(prompt)
        static = model.static_state(out.state, 16)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            state = out.state
            for _ in range(3):
                state = model(tok, state).state
        names = {e.key for e in prof.key_averages()}
        assert any("scaled_dot_product" in n for n in names), sorted(names)
        assert not [n for n in names if "cudnn" in n.lower()], sorted(names)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                model.static_step(tok, static)
        assert not [e.key for e in prof.key_averages() if "scaled_dot_product" in e.key]
