"""CausalLM: state equivalence for both backbones and inner models, causality, loss, generate, any mixer, errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from innerloop.layers import MIXERS, register_mixer
from innerloop.models.lm import PRESETS, CausalLM, LMConfig, LMState
from innerloop.testing import assert_close

TINY = dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            mini_batch_size=4)
VARIANTS = [
    pytest.param(m, bb, id=f"{m}-{bb}") for m in ("ttt_linear", "ttt_mlp") for bb in ("transformer", "mamba")
]


class CumMean(nn.Module):
    """A toy causal mixer (running mean of a projection) with a (sum, count) state: proves the LM is mixer-agnostic."""

    modes = ("auto",)
    config_options = ("rope_theta",)

    def __init__(self, hidden_size: int, num_heads: int, rope_theta: float = 1e4, mode: str = "auto") -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.proj = nn.Linear(hidden_size, hidden_size)

    def init_state(self, batch_size, device=None, dtype=None):
        return (torch.zeros(batch_size, self.proj.out_features, device=device, dtype=dtype), 0)

    def forward(self, x, state=None):
        total, n = state if state is not None else self.init_state(x.shape[0], x.device, x.dtype)
        csum = total[:, None] + self.proj(x).cumsum(1)
        counts = n + torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)
        return csum / counts[:, None], (csum[:, -1], n + x.shape[1])


if "test_cummean" not in MIXERS:
    register_mixer("test_cummean")(CumMean)


def make_model(mixer: str, backbone: str, **kw) -> CausalLM:
    model = CausalLM(LMConfig(**{**TINY, **kw}, mixer=mixer, backbone=backbone)).double()
    with torch.no_grad():  # perturb zero/one-initialised parameters so every one matters
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name or "learnable" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def run_in_chunks(model: CausalLM, ids: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, LMState]:
    logits, state, start = [], None, 0
    for n in sizes:
        out = model(ids[:, start : start + n], state)
        logits.append(out.logits)
        state, start = out.state, start + n
    assert start == ids.shape[1]
    return torch.cat(logits, 1), state


@pytest.mark.parametrize(("mixer", "backbone"), VARIANTS)
def test_state_equivalence(mixer, backbone):
    model = make_model(mixer, backbone)
    ids = torch.randint(0, 99, (2, 14))
    full = model(ids)
    steps, s_steps = run_in_chunks(model, ids, [5] + [1] * 9)  # prefix + token-by-token
    chunks, s_chunks = run_in_chunks(model, ids, [3, 5, 1, 5])  # prefix + odd chunks across boundaries
    assert_close("prefix + steps", full.logits, steps)
    assert_close("odd chunks", full.logits, chunks)
    assert s_steps.position == s_chunks.position == full.state.position == 14
    for lf, ls in zip(full.state.layers, s_chunks.layers):
        for r, g in zip(lf.mixer.ttt.params + lf.mixer.ttt.grads, ls.mixer.ttt.params + ls.mixer.ttt.grads):
            assert_close("final inner state", r, g)
        if backbone == "mamba":
            assert_close("pre-conv state", lf.conv, ls.conv)


@pytest.mark.parametrize(("mixer", "backbone"), VARIANTS)
def test_causal_and_loss(mixer, backbone):
    model = make_model(mixer, backbone)
    ids = torch.randint(0, 99, (2, 10))
    ids2 = ids.clone()
    ids2[:, 6:] = (ids2[:, 6:] + 1) % 99
    a, b = model(ids, labels=ids), model(ids2)
    assert_close("prefix unaffected by future", a.logits[:, :6], b.logits[:, :6])
    assert (a.logits[:, 6:] - b.logits[:, 6:]).abs().max() > 1e-4
    ref = nn.functional.cross_entropy(a.logits[:, :-1].reshape(-1, 99), ids[:, 1:].reshape(-1))
    assert_close("loss", ref, a.loss)
    a.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_state_is_constant_size():
    model = make_model("ttt_linear", "mamba")
    numel = lambda s: sum(t.numel() for t in _tensors(s))  # noqa: E731
    s1 = model(torch.randint(0, 99, (1, 3))).state
    s2 = model(torch.randint(0, 99, (1, 37))).state
    assert numel(s1) == numel(s2)


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (tuple, list)):
        for y in x:
            yield from _tensors(y)


def test_any_registered_mixer():
    model = make_model("test_cummean", "mamba")  # share_qk/use_gate are TTT-only: not passed to this mixer
    ids = torch.randint(0, 99, (2, 9))
    steps, _ = run_in_chunks(model, ids, [4, 1, 1, 3])
    assert_close("toy mixer chunks", model(ids).logits, steps)
    assert model.generate(ids[:, :2], 4, temperature=0).shape == (2, 6)


def test_generate_matches_greedy_full_recompute():
    model = make_model("ttt_mlp", "transformer")
    prompt = torch.randint(0, 99, (2, 5))
    out = model.generate(prompt, 7, temperature=0)
    ids = prompt
    for _ in range(7):  # recompute the whole sequence each step, no state
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
    g = torch.Generator().manual_seed(3)
    s1 = model.generate(prompt, 6, temperature=0.9, top_k=20, top_p=0.8, generator=g)
    s2 = model.generate(prompt, 6, temperature=0.9, top_k=20, top_p=0.8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2) and torch.equal(s1[:, :5], prompt) and s1.shape == (2, 11)


def test_tied_and_init():
    model = CausalLM(LMConfig(**TINY))
    assert model.lm_head.weight is model.embed_tokens.weight
    untied = CausalLM(LMConfig(**TINY, tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.embed_tokens.weight
    assert abs(untied.layers[0].mlp.up_proj.weight.std().item() - 0.02) < 0.005


def test_config():
    cfg = LMConfig.from_preset("350m", backbone="mamba", mixer="ttt_mlp")
    sizes = (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads)
    assert sizes == (1024, 2736, 24, 16)
    assert cfg.pre_conv and cfg.share_qk and cfg.use_gate
    assert set(PRESETS) == {"125m", "350m", "760m", "1b"}
    assert LMConfig.from_dict(cfg.to_dict()) == cfg
    kw = LMConfig(mixer="ttt_mlp").mixer_kwargs()
    assert kw["share_qk"] is False and kw["mini_batch_size"] == 16 and kw["ttt_base_lr"] is None
    assert kw["mode"] == "auto" and kw["initializer_range"] == 0.02
    assert LMConfig(mixer="test_cummean").mixer_kwargs() == {"rope_theta": 1e4, "mode": "auto"}
    assert LMConfig(mixer="attention").mixer_kwargs() == {"rope_theta": 1e4, "mode": "auto"}
    assert LMConfig(mixer="mamba").mixer_kwargs() == {"conv_kernel": 4, "mode": "auto"}
    assert LMConfig(mixer="gru", mixer_options={"state_size": 8}).mixer_kwargs() == {"mode": "auto", "state_size": 8}
    with pytest.raises(ValueError, match="unknown LMConfig keys"):
        LMConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="unknown mixer"):
        LMConfig(mixer="nope")
    with pytest.raises(ValueError, match="backbone"):
        LMConfig(backbone="rwkv")
    with pytest.raises(ValueError, match="divisible"):
        LMConfig(hidden_size=30, num_attention_heads=4)


def test_mixer_options_and_modes_are_checked():
    """An option the mixer does not take, or a mode it does not have, is an error naming what it has."""
    with pytest.raises(ValueError, match=r"mixer_options \['d_state'\] are not options of mixer 'attention'"):
        LMConfig(mixer="attention", mixer_options={"d_state": 8})
    with pytest.raises(ValueError, match=r"mixer 'attention' has no mode 'chunk'; its modes are \('auto',\)"):
        LMConfig(mixer="attention", mode="chunk")
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        LMConfig(mode="fast")
    assert LMConfig(mixer="mamba", mixer_options={"d_state": 8}).mixer_kwargs()["d_state"] == 8
    assert LMConfig(mixer="mamba", mode="torch").mode == "torch"  # deprecated alias, accepted as given


@pytest.mark.parametrize("mixer", ["ttt_linear", "ttt_mlp", "mamba", "gru", "attention"])
def test_old_config_json_with_mode_chunk(mixer):
    """Configs saved before the unified vocabulary hold mode 'chunk', their default (the fastest path): they load as
    'auto', the same model computing the same way (for an RNN or attention, 'chunk' is not even a mode now)."""
    old = {**LMConfig(**TINY, mixer=mixer).to_dict(), "mode": "chunk"}
    cfg = LMConfig.from_dict(json.loads(json.dumps(old)))
    assert cfg.mode == "auto" and cfg.to_dict() == {**old, "mode": "auto"}
    assert CausalLM(cfg).layers[0].mixer.mode == "auto"
    for mode in ("naive", "auto"):  # every other saved value round-trips unchanged
        if mode in MIXERS[mixer].modes:
            assert LMConfig.from_dict({**old, "mode": mode}).mode == mode


def test_train_config_reads_old_mode():
    from innerloop.train.config import RESUME_FREE_KEYS, TrainConfig

    assert TrainConfig.from_dict({"mixer": "mamba", "mode": "chunk"}).model.mode == "auto"
    # an old run resumes under the new default
    assert TrainConfig.from_flat().model.mode == "auto" and "model.mode" in RESUME_FREE_KEYS
    with pytest.raises(ValueError, match="has no mode 'recurrent'"):
        TrainConfig.from_flat(mixer="mamba", mode="recurrent")


def test_errors():
    model = make_model("ttt_linear", "transformer")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        model(torch.randint(0, 99, (5,)))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.tensor([[1, 99]]))
    with pytest.raises(ValueError, match="LMState"):
        model(torch.randint(0, 99, (1, 3)), state=LMState((), 0))
    with pytest.raises(ValueError, match="labels"):
        model(torch.randint(0, 99, (1, 3)), labels=torch.randint(0, 99, (1, 4)))
    ids = torch.randint(0, 99, (2, 5))
    with pytest.raises(ValueError, match="labels must be integer token ids"):
        model(ids, labels=ids.float())
    # int32 labels as int32 input_ids (cross_entropy raised 'expected target dtype to be Long or Byte')
    assert torch.equal(model(ids.int(), labels=ids.int()).loss, model(ids, labels=ids).loss)
    other = make_model("ttt_mlp", "transformer")
    with pytest.raises(ValueError, match="does not fit"):
        model(torch.randint(0, 99, (1, 3)), state=other.init_state(1))


def test_config_values_that_give_nan_or_deep_errors_are_refused():
    """rms_norm_eps < 0 gave NaN logits; conv_kernel 0 with the pre-conv failed inside torch; TTT's rope_theta 0 gave
    NaN logits (attention already refused it)."""
    with pytest.raises(ValueError, match="rms_norm_eps must be >= 0"):
        LMConfig(**TINY, rms_norm_eps=-1.0)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        CausalLM(LMConfig(**TINY, mixer="attention", pre_conv=True, conv_kernel=0))
    with pytest.raises(ValueError, match="rope_theta must be positive"):
        CausalLM(LMConfig(**TINY, mixer="ttt_linear", rope_theta=0.0))
    # a mixer option repeating a field ran the model with b = 3 while config.mini_batch_size said 2
    with pytest.raises(ValueError, match=r"mixer_options \['mini_batch_size'\] repeat LMConfig fields"):
        LMConfig(**{**TINY, "mini_batch_size": 2}, mixer="ttt_mlp", mixer_options={"mini_batch_size": 3})


@pytest.mark.parametrize("mixer", ["attention", "mamba", "gru"])
def test_state_from_another_backbone_is_an_error(mixer):
    """A state without the pre-conv state restarted the Mamba backbone's conv from zeros mid-sequence (and one with it
    was silently ignored by the Transformer backbone)."""
    mamba, plain = make_model(mixer, "mamba"), make_model(mixer, "transformer")
    ids = torch.randint(0, 99, (2, 5))
    with pytest.raises(ValueError, match="lacks a pre-conv state but this model has pre_conv=True"):
        mamba(ids[:, :1], plain(ids).state)
    with pytest.raises(ValueError, match="has a pre-conv state but this model has pre_conv=False"):
        plain(ids[:, :1], mamba(ids).state)
    with pytest.raises(ValueError, match=r"conv state must be \[B, C, K - 1\]"):
        mamba(torch.randint(0, 99, (3, 1)), mamba(ids).state)  # another batch size: the pre-conv says so first


def test_bf16_autocast_cpu():
    model = CausalLM(LMConfig(**TINY, mixer="ttt_mlp", backbone="mamba"))
    ids = torch.randint(0, 99, (2, 13))
    ref = model(ids).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    assert out.logits.dtype == torch.float32
    assert_close("bf16 autocast logits", ref, out.logits, ratio=2e-2)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.gpu
@pytest.mark.parametrize(("mixer", "backbone"), VARIANTS)
def test_cuda_decode_and_autocast(mixer, backbone):
    model = CausalLM(LMConfig(**{**TINY, "mini_batch_size": 16}, mixer=mixer, backbone=backbone)).cuda()
    ids = torch.randint(0, 99, (2, 37), device="cuda")
    full = model(ids, labels=ids)
    full.loss.backward()
    steps, _ = run_in_chunks(model, ids, [21] + [1] * 16)
    assert_close("cuda prefix + steps", full.logits, steps, atol=1e-4, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf = model(ids).logits
    assert_close("cuda bf16 autocast", full.logits, bf, ratio=2e-2)
    g = torch.Generator("cuda").manual_seed(0)
    assert model.generate(ids[:, :4], 6, temperature=0.7, top_k=10, top_p=0.9, generator=g).shape == (2, 10)


# Weight decay as the authors train (read from their code):
# - TTT authors (test-time-training/ttt-lm-jax): ttt/train.py builds AdamW's mask with get_weight_decay_mask(
#   model_config.get_weight_decay_exclusions()); ModelConfig.get_weight_decay_exclusions() in ttt/models/model.py
#   returns () and the mask (ttt/infra/jax_utils.py) is True for every name that matches no exclusion, so every
#   parameter is decayed (weight_decay=0.1 in every scripts/{transformer,ttt_linear,ttt_mlp}/*.sh), the Transformer
#   baseline included.
# - Mamba (state-spaces/mamba): mamba_ssm/modules/mamba_simple.py sets A_log._no_weight_decay and D._no_weight_decay;
#   the trainer that reads the mark (Dao-AILab/flash-attention training/src/optim/param_grouping.py) also leaves
#   every "*bias" undecayed. The LM around our Mamba mixer (embedding, RMSNorms, SwiGLU) is the TTT authors' and
#   follows their recipe.
_LM = ["embed_tokens.weight", "layers.0.seq_norm.weight", "layers.0.ffn_norm.weight", "layers.0.mlp.gate_proj.weight",
       "layers.0.mlp.up_proj.weight", "layers.0.mlp.down_proj.weight", "norm.weight"]
_TTT = ["learnable_ttt_lr_weight", "learnable_ttt_lr_bias", "learnable_token_idx", "ttt_norm_weight", "ttt_norm_bias",
        "q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "post_norm.weight", "post_norm.bias"]
DECAYED = {
    "ttt_linear": _LM + [f"layers.0.mixer.{n}" for n in _TTT + ["W1", "b1"]],
    "ttt_mlp": _LM + [f"layers.0.mixer.{n}" for n in _TTT + ["W1", "b1", "W2", "b2"]],
    "attention": _LM + [f"layers.0.mixer.{n}.weight" for n in ("q_proj", "k_proj", "v_proj", "o_proj")],
    "mamba": _LM + [f"layers.0.mixer.{n}.weight" for n in ("in_proj", "conv.conv", "x_proj", "dt_proj", "out_proj")],
}


@pytest.mark.parametrize("mixer", sorted(DECAYED))
def test_weight_decay_matches_the_authors(mixer):
    import copy

    from innerloop.models._optim_groups import decayed_parameter_names, weight_decay_groups
    from innerloop.train.trainer import _param_groups

    model = CausalLM(LMConfig(**{**TINY, "num_hidden_layers": 1}, mixer=mixer))
    assert sorted(decayed_parameter_names(model)) == sorted(DECAYED[mixer])
    assert sorted(decayed_parameter_names(copy.deepcopy(model).double())) == sorted(DECAYED[mixer])  # marks survive
    decay, keep = _param_groups(model, 0.1)  # what the trainer hands AdamW
    assert (decay["weight_decay"], keep["weight_decay"]) == (0.1, 0.0)
    assert len(decay["params"]) == len(DECAYED[mixer]) and len(decay["params"]) + len(keep["params"]) == len(
        list(model.parameters()))
    assert [len(g["params"]) for g in weight_decay_groups(model, 0.1)] == [len(decay["params"]), len(keep["params"])]


@pytest.mark.parametrize("mixer", ["ttt_linear", "ttt_mlp"])
def test_gradient_checkpointing_with_naive_ttt_blocks(mixer, caplog, monkeypatch):
    """torch.func (the naive TTT reference's inner gradients) refuses checkpointing's saved-tensor hooks: such blocks
    ran into a deep RuntimeError; they now run unchecked (logged once) and give the same gradients."""
    from innerloop.layers import modes

    monkeypatch.setattr(modes, "_logged", set())
    torch.manual_seed(0)
    model = CausalLM(LMConfig(**{**TINY, "mini_batch_size": 4}, mixer=mixer, mode="naive")).train()
    x = torch.randint(0, 99, (2, 7))

    def grads():
        model.zero_grad()
        model(x, labels=x).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.gradient_checkpointing = True
    with caplog.at_level("WARNING"):
        checked = grads()
    for a, b in zip(plain, checked):
        assert torch.equal(a, b)
    assert "TTT blocks in mode 'naive' run without it" in caplog.text
