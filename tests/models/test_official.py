"""load_official_ttt: a random state dict in the authors' TTTForCausalLM layout (shapes from the spec, docs/ttt.md §3)
gives the logits of a forward written by hand from the raw state dict; bad keys, shapes and configs raise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from innerloop import load_official_ttt
from innerloop.ops.ttt import TTTState, naive_ttt_linear, naive_ttt_mlp
from innerloop.testing import assert_close

VARIANTS = [
    pytest.param(t, m, id=f"{t}-{'mamba' if m else 'transformer'}") for t in ("linear", "mlp") for m in (False, True)
]


def official_config(layer_type: str, mamba: bool, **kw) -> dict:
    return {**dict(
        vocab_size=99, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=10000.0, ttt_layer_type=layer_type,
        ttt_base_lr=1.0 if layer_type == "linear" else 0.1, mini_batch_size=4, use_gate=mamba, share_qk=mamba,
        pre_conv=mamba, conv_kernel=4,
    ), **kw}


def official_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``TTTForCausalLM.state_dict()`` for config ``c`` (docs/ttt.md §3, §12 and the authors' Block)."""
    d, nh, V, I = c["hidden_size"], c["num_attention_heads"], c["vocab_size"], c["intermediate_size"]
    hd, b, K = d // nh, c["mini_batch_size"], c["conv_kernel"]
    shapes = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,), "lm_head.weight": (V, d)}
    for i in range(c["num_hidden_layers"]):
        p, s = f"model.layers.{i}.", f"model.layers.{i}.seq_modeling_block."
        shapes.update({p + "seq_norm.weight": (d,), p + "ffn_norm.weight": (d,), p + "mlp.gate_proj.weight": (I, d),
                       p + "mlp.up_proj.weight": (I, d), p + "mlp.down_proj.weight": (d, I)})
        if c["pre_conv"]:
            shapes.update({p + "conv.norm.weight": (d,), p + "conv.conv.weight": (d, 1, K), p + "conv.conv.bias": (d,)})
        names = ["q_proj", "v_proj", "o_proj"] + ([] if c["share_qk"] else ["k_proj"])
        names += ["g_proj"] if c["use_gate"] else []
        shapes.update({s + n + ".weight": (d, d) for n in names})
        if c["share_qk"]:
            for n in ("conv_q", "conv_k"):
                shapes.update({s + n + ".weight": (d, 1, K), s + n + ".bias": (d,)})
        shapes.update({s + "learnable_token_idx": (b,), s + "learnable_ttt_lr_weight": (nh, 1, d),
                       s + "learnable_ttt_lr_bias": (nh, 1), s + "ttt_norm_weight": (nh, hd),
                       s + "ttt_norm_bias": (nh, hd), s + "post_norm.weight": (d,), s + "post_norm.bias": (d,)})
        if c["ttt_layer_type"] == "linear":
            shapes.update({s + "W1": (nh, hd, hd), s + "b1": (nh, 1, hd)})
        else:
            shapes.update({s + "W1": (nh, hd, 4 * hd), s + "b1": (nh, 1, 4 * hd), s + "W2": (nh, 4 * hd, hd),
                           s + "b2": (nh, 1, hd)})
    return shapes


def random_state_dict(c: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in official_shapes(c).items():
        if k.endswith(("norm.weight", "norm_weight")):
            sd[k] = 1 + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)
        elif k.endswith(("W1", "W2", "embed_tokens.weight")) or "conv" in k:
            sd[k] = 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)
        else:
            sd[k] = 0.15 * torch.randn(shape, generator=g, dtype=torch.float64)
    if c["tie_word_embeddings"]:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return sd


def rms(x, w, eps):
    """RMSNorm computed in float32 and cast back, as the authors' (so float64 runs share their float32 rounding)."""
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def causal_conv(x, w, bias):
    """Depthwise conv, padding K - 1 and keep the first T outputs: x ``[B, T, C]``."""
    T = x.shape[1]
    return F.conv1d(x.transpose(1, 2), w, bias, padding=w.shape[-1] - 1, groups=x.shape[-1])[..., :T].transpose(1, 2)


def rope_permuted(x, pos, theta):
    """The authors' route: reorder to [evens | odds], half-rotation RoPE, undo the reorder. x ``[B, T, H, D]``."""
    D = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, D, 2).float() / D)  # float32 tables, as the authors
    ang = torch.cat([pos[:, None].float() * inv] * 2, dim=-1)[:, None]  # [T, 1, D]
    xp = torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)
    rot = torch.cat([-xp[..., D // 2 :], xp[..., : D // 2]], dim=-1)
    y = xp * ang.cos().to(x.dtype) + rot * ang.sin().to(x.dtype)
    out = torch.empty_like(y)
    out[..., 0::2], out[..., 1::2] = y[..., : D // 2], y[..., D // 2 :]
    return out


def ttt_by_hand(c, sd, p, x):
    B, T, d = x.shape
    nh = c["num_attention_heads"]
    hd, b = d // nh, c["mini_batch_size"]
    if c["share_qk"]:
        xq = x @ sd[p + "q_proj.weight"].t()
        XQ = causal_conv(xq, sd[p + "conv_q.weight"], sd[p + "conv_q.bias"])
        XK = causal_conv(xq, sd[p + "conv_k.weight"], sd[p + "conv_k.bias"])
    else:
        XQ, XK = x @ sd[p + "q_proj.weight"].t(), x @ sd[p + "k_proj.weight"].t()
    XV = x @ sd[p + "v_proj.weight"].t()
    XQ, XK, XV = (t.reshape(B, T, nh, hd) for t in (XQ, XK, XV))
    pos = torch.arange(T) % b
    XQ, XK = rope_permuted(XQ, pos, c["rope_theta"]), rope_permuted(XK, pos, c["rope_theta"])
    z = torch.einsum("btd,hd->bth", x, sd[p + "learnable_ttt_lr_weight"][:, 0]) + sd[p + "learnable_ttt_lr_bias"][:, 0]
    lr = c["ttt_base_lr"] * torch.sigmoid(z) / hd
    tau = (1.0 / torch.arange(1, b + 1, dtype=torch.float64) + sd[p + "learnable_token_idx"]).clamp_min(0)
    if c["ttt_layer_type"] == "linear":
        op, params = naive_ttt_linear, (sd[p + "W1"], sd[p + "b1"][:, 0])
    else:
        op, params = naive_ttt_mlp, (sd[p + "W1"], sd[p + "b1"][:, 0], sd[p + "W2"], sd[p + "b2"][:, 0])
    o, _ = op(XQ, XK, XV, lr, tau, sd[p + "ttt_norm_weight"], sd[p + "ttt_norm_bias"], TTTState.from_params(params, B))
    y = F.layer_norm(o.reshape(B, T, d), (d,), sd[p + "post_norm.weight"], sd[p + "post_norm.bias"], 1e-6)
    if c["use_gate"]:
        y = F.gelu(x @ sd[p + "g_proj.weight"].t(), approximate="tanh") * y
    return y @ sd[p + "o_proj.weight"].t()


def forward_by_hand(c, sd, ids):
    eps = c["rms_norm_eps"]
    h = sd["model.embed_tokens.weight"][ids]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        if c["pre_conv"]:
            h = h + causal_conv(rms(h, sd[p + "conv.norm.weight"], eps), sd[p + "conv.conv.weight"],
                                sd[p + "conv.conv.bias"])
        h = h + ttt_by_hand(c, sd, p + "seq_modeling_block.", rms(h, sd[p + "seq_norm.weight"], eps))
        x = rms(h, sd[p + "ffn_norm.weight"], eps)
        h = h + (F.silu(x @ sd[p + "mlp.gate_proj.weight"].t()) * (x @ sd[p + "mlp.up_proj.weight"].t())) @ sd[
            p + "mlp.down_proj.weight"].t()
    return rms(h, sd["model.norm.weight"], eps) @ sd["lm_head.weight"].t()


@pytest.mark.parametrize(("layer_type", "mamba"), VARIANTS)
def test_logits_match_spec_by_hand(layer_type, mamba):
    c = official_config(layer_type, mamba)
    sd = random_state_dict(c)
    model = load_official_ttt(c, sd, dtype=torch.float64)
    ids = torch.randint(0, 99, (2, 11))  # not a multiple of the mini-batch
    ref = forward_by_hand(c, sd, ids)
    out = model(ids)
    # RMSNorm and the RoPE tables run in float32 even in a float64 model (as the authors'), so the floor is ~1e-7.
    assert_close("logits vs spec by hand", ref, out.logits, atol=1e-5, rtol=1e-5)
    assert ref.abs().max() > 1.0  # the comparison is not between tiny numbers


def test_untied_and_ignored_buffers():
    c = official_config("linear", False, tie_word_embeddings=False, max_position_embeddings=2048, use_cache=True)
    sd = random_state_dict(c)
    sd["model.layers.0.seq_modeling_block.token_idx"] = 1.0 / torch.arange(1, 5)  # non-persistent buffer, ignored
    model = load_official_ttt(c, sd, dtype=torch.float64)
    assert model.lm_head.weight is not model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, sd["lm_head.weight"])
    ids = torch.randint(0, 99, (1, 6))
    assert_close("untied logits", forward_by_hand(c, sd, ids), model(ids).logits, atol=1e-5, rtol=1e-5)


def test_key_mapping_round_trips():
    from innerloop.models.official import official_key_to_ours, ours_to_official_key

    for c in (official_config("mlp", True), official_config("linear", False)):
        for key in official_shapes(c):
            assert ours_to_official_key(official_key_to_ours(key)) == key, key


def test_tied_without_lm_head_key():
    c = official_config("mlp", True)
    sd = random_state_dict(c)
    del sd["lm_head.weight"]
    model = load_official_ttt(c, sd)
    assert model.lm_head.weight is model.embed_tokens.weight and model.lm_head.weight.dtype == torch.float32


def test_bad_state_dicts_raise():
    c = official_config("linear", True)
    sd = random_state_dict(c)
    bad = {**sd, "model.layers.0.seq_modeling_block.extra": torch.zeros(1), "model.foo": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"unknown keys \(2\).*seq_modeling_block\.extra"):
        load_official_ttt(c, bad)
    bad = {k: v for k, v in sd.items() if not k.endswith(("layers.1.seq_modeling_block.W1", "conv_k.bias"))}
    with pytest.raises(ValueError, match=r"missing keys \(3\).*model\.layers\.1\.seq_modeling_block\.W1"):
        load_official_ttt(c, bad)
    bad = {**sd, "model.layers.0.seq_modeling_block.b1": torch.zeros(4, 8)}
    with pytest.raises(ValueError, match=r"wrong shapes.*b1: got \(4, 8\), expected \(4, 1, 8\)"):
        load_official_ttt(c, bad)
    bad = {**sd, "model.layers.0.seq_modeling_block.k_proj.weight": torch.zeros(32, 32)}  # share_qk has no k_proj
    with pytest.raises(ValueError, match="unknown keys.*k_proj"):
        load_official_ttt(c, bad)
    bad = {**sd, "lm_head.weight": sd["lm_head.weight"] + 1}
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        load_official_ttt(c, bad)
    c_untied = {**c, "tie_word_embeddings": False}
    bad = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    with pytest.raises(ValueError, match="missing keys.*lm_head"):
        load_official_ttt(c_untied, bad)


@pytest.mark.parametrize(("change", "match"), [
    ({"ttt_layer_type": "rnn"}, "ttt_layer_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"hidden_size": 30}, "head_dim"),
    ({"mini_batch_size": 0}, "mini_batch_size"),
    ({"share_qk": "yes"}, "share_qk"),
    ({"ttt_layer_typ": "linear", "foo": 1}, r"unknown config keys \['foo', 'ttt_layer_typ'\]"),
])
def test_bad_configs_raise(change, match):
    c = {**official_config("linear", False), **change}
    with pytest.raises(ValueError, match=match):
        load_official_ttt(c, {})


def test_one_error_lists_every_config_problem():
    """An odd head dim is reported together with the other problems (it was checked only when there were none)."""
    c = {**official_config("linear", False), "hidden_size": 30, "hidden_act": "gelu", "foo": 1}
    with pytest.raises(ValueError, match=r"(?s)unknown config keys \['foo'\].*hidden_act.*head_dim"):
        load_official_ttt(c, {})


def test_bad_inputs_fail_before_a_model_is_built(monkeypatch):
    """With the default (1B, ~5 GB) config, an empty or wrong state dict fails at once: names and shapes are checked
    against a model on the meta device, and no real model is ever built."""
    import innerloop.models.official as official

    real, built = official.CausalLM, []

    def spy(cfg):
        built.append(torch.empty(0).device.type)  # the default device: "meta" inside `with torch.device("meta")`
        return real(cfg)

    monkeypatch.setattr(official, "CausalLM", spy)
    with pytest.raises(ValueError, match="state dict is empty"):
        load_official_ttt({}, {})
    with pytest.raises(TypeError, match="state_dict must map"):
        load_official_ttt({}, [("model.norm.weight", torch.ones(2048))])
    assert built == []
    bad = {"model.norm.weight": torch.ones(7), "model.embed_tokens.weight": 1.0}
    with pytest.raises(ValueError, match=r"(?s)missing keys \(432\).*wrong shapes \(1\): model\.norm\.weight.*"
                                         r"not tensors \(1\): model\.embed_tokens\.weight: float"):  # fmt: skip
        load_official_ttt({}, bad)
    assert built == ["meta"]
