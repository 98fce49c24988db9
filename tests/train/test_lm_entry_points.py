"""The LM workbench at its entry points: sampling, generate's arguments, config bounds, evaluation batches, --fresh with
BPE, weights-only runs, one-token labels."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from innerloop.models.lm import CausalLM, LMConfig, sample_next
from innerloop.train.config import TrainConfig


def _model() -> CausalLM:
    cfg = LMConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                   mini_batch_size=4)
    return CausalLM(cfg).eval()


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass():
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    draws = torch.stack([sample_next(logits, 1.0, top_p=0.5, generator=g) for _ in range(200)])
    assert draws.eq(0).all()  # the first token alone has mass 0.5


def test_one_token_labels_are_refused_not_nan():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        _model()(torch.zeros(2, 1, dtype=torch.long), labels=torch.zeros(2, 1, dtype=torch.long))
    assert _model()(torch.zeros(2, 1, dtype=torch.long)).logits.shape == (2, 1, 40)  # without labels: fine


@pytest.mark.parametrize("kwargs", [dict(temperature=float("nan")), dict(top_p=0.0), dict(top_k=-1),
                                    dict(max_new_tokens=-1)])
def test_generate_rejects_bad_sampling_arguments(kwargs):
    args = dict(max_new_tokens=2) | kwargs
    with pytest.raises(ValueError):
        _model().generate(torch.zeros(1, 3, dtype=torch.long), **args)


@pytest.mark.parametrize("field,value", [("warmup_steps", -1), ("weight_decay", -0.1), ("grad_clip", -1.0),
                                         ("max_seconds", -1.0), ("seed", -1)])
def test_train_config_rejects_negative_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig.from_flat(**{field: value})


def test_eval_runs_in_micro_batches(tmp_path, monkeypatch):
    from innerloop.train import lm as train_lm_module

    seen = []
    real = train_lm_module.evaluate_lm
    monkeypatch.setattr(train_lm_module, "evaluate_lm", lambda m, v, c, bs, *a, **k: seen.append(bs) or
                        real(m, v, c, bs, *a, **k))
    cfg = TrainConfig.from_flat(hidden_size=16, num_attention_heads=2, context=16, batch_size=8, grad_accum=4,
                                steps=1, eval_batches=1, device="cpu", out=str(tmp_path / "r"),
                                cache_dir=str(tmp_path / "cache"))
    train_lm_module.train_lm(cfg)
    assert seen == [2]


@pytest.mark.skipif(importlib.util.find_spec("tokenizers") is None, reason="needs the bpe extra")
def test_fresh_bpe_run_trains_its_own_tokenizer(tmp_path):
    from innerloop.data.text import load_tokenizer
    from innerloop.train.lm import train_lm

    out = tmp_path / "run"
    common = dict(tokenizer="bpe", mixer="attention", hidden_size=16, num_attention_heads=2, context=16,
                  batch_size=2, steps=1, device="cpu", out=str(out), cache_dir=str(tmp_path / "cache"))
    train_lm(TrainConfig.from_flat(vocab_size=300, **common))
    m = train_lm(TrainConfig.from_flat(vocab_size=600, **common), fresh=True)
    tok = load_tokenizer("bpe", out)  # the new run keeps its own tokenizer
    assert tok.vocab_size > 300
    assert m["params"] > 0


def test_weights_only_checkpoint_is_refused_clearly(tmp_path):
    from innerloop.runs import ConfigMismatchError, Run, TrainLoop
    from innerloop.runs.checkpoint import save_checkpoint

    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "checkpoints", 3, model, {"imported_from": "hf"})  # what `lm import` writes

    class Loop(TrainLoop):
        def train_step(self, step):
            return {"loss": 0.0}

    loop = Loop(model, Run(tmp_path, {"steps": 5}), 5)
    with pytest.raises(ConfigMismatchError, match="weights only"):
        loop.fit()


def test_a_tiny_temperature_samples_the_argmax_instead_of_failing():
    """logits / 1e-40 overflows float32 (+-inf), and softmax of that row was NaN: multinomial raised "probability
    tensor contains either inf, nan or element < 0". The limit of the distribution as T -> 0 is the argmax."""
    logits = torch.tensor([[0.3, 2.0, -1.0, 1.9], [-3.0, -0.5, -2.0, -0.7]])  # row 2 all negative: all -inf
    for t in (1e-40, 1e-300):
        for kw in ({}, dict(top_k=2), dict(top_p=0.9)):
            got = sample_next(logits, t, generator=torch.Generator().manual_seed(0), **kw)
            assert got.tolist() == [1, 1], (t, kw)
    with pytest.raises(RuntimeError, match="nan"):  # NaN logits (a diverged model) still fail, not argmax'ed
        sample_next(torch.full((1, 4), float("nan")), 1e-40)


def test_an_infinite_temperature_is_refused_not_uniform():
    """logits / inf is 0 for every token: top_k=1 (greedy at any finite temperature) kept every token."""
    with pytest.raises(ValueError, match="finite"):
        sample_next(torch.randn(1, 5), float("inf"), top_k=1)
    with pytest.raises(ValueError, match="finite"):
        _model().generate(torch.zeros(1, 3, dtype=torch.long), 2, temperature=float("inf"), top_k=1)


def test_sampling_at_ordinary_temperatures_is_unchanged():
    """Scaling after subtracting the row maximum (the overflow guard) keeps seeded draws equal to the plain formula."""
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    for t, k, p in ((1.0, None, None), (0.7, 20, 0.9), (1.3, None, 0.5), (1e-3, 5, None)):
        ref = logits / t
        if k:
            ref = ref.masked_fill(ref < torch.topk(ref, k).values[:, -1:], float("-inf"))
        if p:
            s, idx = torch.sort(ref, descending=True)
            pr = s.softmax(-1)
            ref = ref.scatter(-1, idx, s.masked_fill(pr.cumsum(-1) - pr >= p, float("-inf")))
        want = torch.multinomial(ref.softmax(-1), 1, generator=torch.Generator().manual_seed(5))[:, 0]
        assert torch.equal(sample_next(logits, t, k, p, torch.Generator().manual_seed(5)), want)
