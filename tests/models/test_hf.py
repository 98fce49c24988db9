"""transformers integration (innerloop.models.hf): Auto classes, generate, the Cache, save/load, init, conversions.

Tiny models on CPU; every mixer on both backbones where it is cheap. Needs the ``hf`` extra (skipped without it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    DynamicCache,
    StoppingCriteria,
    StoppingCriteriaList,
)

from innerloop.layers import MIXERS  # noqa: E402
from innerloop.models.hf import (  # noqa: E402
    InnerloopCache,
    InnerloopConfig,
    InnerloopForCausalLM,
    InnerloopModel,
    export_hf,
    load_hf_as_causal_lm,
)
from innerloop.models.lm import CausalLM, LMConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ALL = [(m, b) for m in sorted(MIXERS) for b in ("transformer", "mamba")]
# generate() is slow-ish per call (transformers' per-step machinery): these run by default, ALL with -m slow
SOME = [("ttt_linear", "transformer"), ("ttt_mlp", "mamba"), ("attention", "transformer"), ("mamba", "mamba"),
        ("lstm", "transformer")]  # fmt: skip
SLOW_REST = [pytest.param(*c, marks=pytest.mark.slow) for c in ALL if c not in SOME]


@pytest.fixture(autouse=True)
def _quiet():
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    yield


def tiny(mixer: str = "ttt_linear", backbone: str = "transformer", **kw) -> InnerloopConfig:
    sizes = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                 mini_batch_size=4)  # fmt: skip
    return InnerloopConfig(**{**sizes, **kw}, mixer=mixer, backbone=backbone)


def model(mixer: str = "ttt_linear", backbone: str = "transformer", **kw) -> InnerloopForCausalLM:
    return InnerloopForCausalLM(tiny(mixer, backbone, **kw)).eval()


def ids(b: int = 2, t: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 64, (b, t), generator=torch.Generator().manual_seed(seed))


def test_config_round_trip_and_validation():
    cfg = tiny("mamba", "mamba", mixer_options={"d_state": 8})
    back = InnerloopConfig.from_dict(cfg.to_dict())
    assert back.to_lm_config() == cfg.to_lm_config() and back.model_type == "innerloop"
    assert InnerloopConfig.from_lm_config(cfg.to_lm_config()).to_lm_config() == cfg.to_lm_config()
    with pytest.raises(ValueError, match="mixer"):
        tiny("nope")
    with pytest.raises(ValueError, match="not an innerloop one"):
        InnerloopConfig.from_dict({"model_type": "llama", "hidden_size": 32})


def test_made_from_config_as_causal_lm_with_the_same_seed():
    torch.manual_seed(3)
    hf = InnerloopForCausalLM(tiny("ttt_mlp", "mamba"))
    torch.manual_seed(3)
    ref = CausalLM(tiny("ttt_mlp", "mamba").to_lm_config())
    for (name, a), b in zip(hf.model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    x = ids()
    assert torch.equal(hf(x).logits, ref(x).logits)


@pytest.mark.parametrize(("mixer", "backbone"), ALL)
def test_save_load_identical_logits(tmp_path, mixer, backbone):
    m = model(mixer, backbone)
    m.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(back) is InnerloopForCausalLM
    x = ids(2, 7)
    assert torch.equal(back(x).logits, m(x).logits)
    if back.config.tie_word_embeddings:
        assert back.model.lm_head.weight is back.model.embed_tokens.weight


def test_untied_and_base_model(tmp_path):
    m = model("attention", tie_word_embeddings=False)
    m.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert back.model.lm_head.weight is not back.model.embed_tokens.weight
    assert torch.equal(back(ids()).logits, m(ids()).logits)
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is InnerloopModel
    h = base(ids()).last_hidden_state
    assert h.shape == (2, 5, 32) and torch.allclose(m.model.lm_head(h), m(ids()).logits)


def test_auto_classes_resolve_offline_in_a_fresh_interpreter(tmp_path):
    m = model("ttt_linear", "mamba")
    m.save_pretrained(tmp_path / "hf")
    torch.save(m(ids()).logits, tmp_path / "logits.pt")
    torch.save(m.state_dict(), tmp_path / "weights.pt")
    # weights must load bit for bit; logits only closely, because the fresh interpreter may use another thread count
    # than this one (trainers run earlier in the session call torch.set_num_threads), which changes summation order
    code = f"""
import torch, innerloop.models.hf
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
d = {str(tmp_path / "hf")!r}
assert type(AutoConfig.from_pretrained(d)).__name__ == "InnerloopConfig"
assert type(AutoModel.from_pretrained(d)).__name__ == "InnerloopModel"
m = AutoModelForCausalLM.from_pretrained(d).eval()
x = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(1))
want = torch.load({str(tmp_path / "weights.pt")!r})
got = m.state_dict()
assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
torch.testing.assert_close(m(x).logits, torch.load({str(tmp_path / "logits.pt")!r}), rtol=1e-5, atol=1e-6)
print("ok")
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr


@pytest.mark.parametrize(("mixer", "backbone"), ALL)
def test_cache_prompt_then_tokens_then_chunk_equals_full_forward(mixer, backbone):
    m = model(mixer, backbone)
    x = ids(2, 14)
    full = m(x, use_cache=False).logits
    out = m(x[:, :5], use_cache=True)
    cache, parts = out.cache if hasattr(out, "cache") else out.past_key_values, [out.logits]
    assert isinstance(cache, InnerloopCache) and cache.get_seq_length() == 5 and cache.batch_size == 2
    for t in range(5, 8):
        o = m(x[:, t : t + 1], cache=cache)
        parts.append(o.logits)
    parts.append(m(x[:, 8:], cache=cache).logits)
    assert cache.get_seq_length() == 14
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("mixer", "backbone"), SOME + SLOW_REST)
def test_greedy_generate_equals_innerloop_generate(mixer, backbone):
    m = model(mixer, backbone)
    x = ids()
    ours = m.to_causal_lm().generate(x, 10, temperature=0)
    assert torch.equal(m.generate(x, max_new_tokens=10, do_sample=False), ours)


@pytest.mark.parametrize(("mixer", "backbone"), [("ttt_linear", "transformer"), ("lstm", "mamba"),
                                                 pytest.param("ttt_mlp", "mamba", marks=pytest.mark.slow),
                                                 pytest.param("attention", "mamba", marks=pytest.mark.slow)])
def test_sampling_equals_innerloop_generate_with_the_same_seed(mixer, backbone):
    # transformers samples from torch's global generator, innerloop from the one it is given: seeding both alike
    # (torch.manual_seed(s) / torch.Generator().manual_seed(s)) draws the same tokens.
    m, x = model(mixer, backbone), ids()
    lm = m.to_causal_lm()
    for kw in (dict(temperature=0.8, top_k=10), dict(temperature=1.0, top_p=0.7)):
        torch.manual_seed(7)
        theirs = m.generate(x, max_new_tokens=12, do_sample=True, **{"top_k": 0, **kw})
        ours = lm.generate(x, 12, generator=torch.Generator().manual_seed(7), **kw)
        assert torch.equal(theirs, ours), kw


@pytest.mark.parametrize("mixer", ["ttt_linear", "gru", pytest.param("attention", marks=pytest.mark.slow),
                                   pytest.param("mamba", marks=pytest.mark.slow)])
def test_beam_search_reorders_states(mixer):
    m, x = model(mixer, "mamba"), ids()
    with_cache = m.generate(x, max_new_tokens=6, num_beams=3, do_sample=False, num_return_sequences=2)
    no_cache = m.generate(x, max_new_tokens=6, num_beams=3, do_sample=False, num_return_sequences=2, use_cache=False)
    assert with_cache.shape == (4, 11) and torch.equal(with_cache, no_cache)


def test_repetition_penalty_and_stopping_criteria():
    m, x = model("ttt_linear"), ids(1, 5)
    out = m.generate(x, max_new_tokens=8, do_sample=False, repetition_penalty=1.5)
    # by hand: innerloop's model and state, transformers' penalty rule on every token seen so far
    lm, seq = m.to_causal_lm(), x
    o = lm(x)
    for _ in range(8):
        logits = o.logits[:, -1].clone()
        seen = logits.gather(1, seq)
        logits.scatter_(1, seq, torch.where(seen < 0, seen * 1.5, seen / 1.5))
        nxt = logits.argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
        o = lm(nxt, o.state)
    assert torch.equal(out, seq)

    class StopAt(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 9, dtype=torch.bool)

    stopped = m.generate(x, max_new_tokens=20, do_sample=False, stopping_criteria=StoppingCriteriaList([StopAt()]))
    assert stopped.shape == (1, 9)
    greedy = m.generate(x, max_new_tokens=6, do_sample=False)
    eos = int(greedy[0, 7])
    assert m.generate(x, max_new_tokens=20, do_sample=False, eos_token_id=eos)[0, -1] == eos


def test_unsupported_strategies_and_inputs_are_refused():
    m, x = model("ttt_linear"), ids()
    with pytest.raises(ValueError, match="assisted generation is not supported"):
        m.generate(x, max_new_tokens=3, assistant_model=model("ttt_linear"))
    with pytest.raises(ValueError, match="assisted generation is not supported"):
        m.generate(x, max_new_tokens=3, prompt_lookup_num_tokens=2)
    for mask in ([[1, 1, 1, 1, 0], [1] * 5], [[1, 0, 1, 1, 1], [1] * 5], [[0] * 5, [1] * 5]):
        with pytest.raises(NotImplementedError, match="padding"):  # right padding, a hole, an empty row
            m.generate(x, attention_mask=torch.tensor(mask), max_new_tokens=3)
    with pytest.raises(TypeError, match="InnerloopCache"):
        m(x, cache=DynamicCache())
    with pytest.raises(NotImplementedError, match="roll the state back"):
        out = m(x, use_cache=True)
        (out.cache if hasattr(out, "cache") else out.past_key_values).crop(2)


def test_init_weights_as_innerloop_and_loaded_weights_kept(tmp_path):
    m = model("ttt_linear", "mamba", num_hidden_layers=1)
    m.save_pretrained(tmp_path)
    # a checkpoint without one TTT inner weight and Mamba-free: refused, or filled in as innerloop does
    sd = load_file(tmp_path / "model.safetensors")
    missing = "model.layers.0.mixer.W1"
    del sd[missing]
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks 1 weights.*mixer\.W1.*allow_missing_weights"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    back = InnerloopForCausalLM.from_pretrained(tmp_path, allow_missing_weights=True)
    for name, t in back.state_dict().items():
        if name != missing and name in sd:
            assert torch.equal(t, sd[name]), f"{name} was changed by the init"
    w = back.model.layers[0].mixer.W1
    assert not torch.equal(w, m.model.layers[0].mixer.W1) and 0.01 < w.std() < 0.03  # N(0, 0.02), as innerloop
    ttt = back.model.layers[0].mixer
    assert torch.equal(ttt.token_idx, 1.0 / torch.arange(1, 5))  # the non-persistent buffer is rebuilt


def test_init_weights_from_scratch_matches_innerloop_init():
    m = model("ttt_mlp", "transformer", num_hidden_layers=1)
    for module in m.modules():  # forget the CausalLM init: transformers' initialize_weights does it all again
        module._is_hf_initialized = False
        for p in module.parameters(recurse=False):
            p.data.fill_(7.0)
    m.initialize_weights()
    ttt = m.model.layers[0].mixer
    assert 0.01 < ttt.W1.std() < 0.03 and 0.01 < ttt.W2.std() < 0.03 and 0.01 < ttt.q_proj.weight.std() < 0.03
    assert (ttt.b1 == 0).all() and (ttt.b2 == 0).all() and (ttt.learnable_ttt_lr_bias == 0).all()
    assert (ttt.learnable_token_idx == 0).all() and (ttt.ttt_norm_weight == 1).all() and (ttt.ttt_norm_bias == 0).all()
    assert 0.01 < ttt.learnable_ttt_lr_weight.std() < 0.03 and (m.model.norm.weight == 1).all()
    mamba = model("mamba", "mamba", num_hidden_layers=1)
    for module in mamba.modules():
        module._is_hf_initialized = False
        for p in module.parameters(recurse=False):
            p.data.fill_(7.0)
    mamba.initialize_weights()
    mix = mamba.model.layers[0].mixer
    assert torch.equal(mix.A_log, torch.log(torch.arange(1, mix.d_state + 1.0)).repeat(mix.d_inner, 1))
    assert (mix.D == 1).all() and 0.01 < mix.in_proj.weight.std() < 0.03


def test_other_model_type_and_missing_weights_file(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    with pytest.raises(ValueError, match="not an innerloop one"):
        InnerloopForCausalLM.from_pretrained(tmp_path / "llama")
    tiny().save_pretrained(tmp_path / "noweights")
    with pytest.raises(OSError, match="model.safetensors"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "noweights")


def test_a_run_directory_is_not_taken_for_a_transformers_model(tmp_path):
    """`innerloop lm import --from-hf <a run directory>` ended in a deep `AttributeError: module 'torch' has no
    attribute 'auto'`: the run's config.json (no model_type, a nested "model") was read as a model config."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": {"hidden_size": 16}, "steps": 2, "dtype": "auto"}))
    with pytest.raises(ValueError, match="innerloop lm export --run RUN --to-hf DIR"):
        InnerloopForCausalLM.from_pretrained(run)


def test_gradient_checkpointing_same_gradients_and_off_by_default():
    cfg = LMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   mini_batch_size=4, backbone="mamba")  # fmt: skip
    lm = CausalLM(cfg).train()
    assert lm.gradient_checkpointing is False
    x = ids(2, 12)
    grads = []
    for on in (False, True):
        lm.zero_grad()
        lm.gradient_checkpointing = on
        lm(x, labels=x).loss.backward()
        grads.append([p.grad.clone() for p in lm.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    hf = model("ttt_linear").train()
    enable = getattr(hf, "activation_checkpointing_enable", hf.gradient_checkpointing_enable)  # 5.24 renamed it
    enable()
    assert hf.model.gradient_checkpointing
    out = hf(x, labels=x)
    out.loss.backward()
    assert hf.model.embed_tokens.weight.grad is not None
    getattr(hf, "activation_checkpointing_disable", hf.gradient_checkpointing_disable)()
    assert not hf.model.gradient_checkpointing


@pytest.mark.parametrize("tie", [True, False])
def test_export_official_ttt(tmp_path, tie):
    from innerloop.models.official import load_official_ttt
    from tests.models.test_official import official_config, random_state_dict

    c = official_config("linear", mamba=True, tie_word_embeddings=tie)
    lm = load_official_ttt(c, random_state_dict(c))
    export_hf(lm, tmp_path)
    back, cfg = load_hf_as_causal_lm(tmp_path)
    x = torch.randint(0, c["vocab_size"], (1, 9))
    assert torch.equal(back(x).logits, lm(x).logits) and cfg.tie_word_embeddings == tie


def test_cli_export_import_round_trip(tmp_path, capsys):
    from innerloop.cli.main import main
    from innerloop.train.lm import load_run

    run, hf, back = tmp_path / "run", tmp_path / "hf", tmp_path / "back"
    assert main(["lm", "train", "--steps", "2", "--out", str(run), "--hidden-size", "32", "--num-attention-heads",
                 "2", "--num-hidden-layers", "1", "--context", "16", "--batch-size", "2", "--eval-batches", "1",
                 "--warmup-steps", "1", "--no-progress", "--mixer", "attention"]) == 0  # fmt: skip
    assert main(["lm", "export", "--run", str(run), "--to-hf", str(hf)]) == 0
    assert AutoConfig.from_pretrained(hf).innerloop_run["steps"] == 2
    assert main(["lm", "import", "--from-hf", str(hf), "--out", str(back)]) == 0
    (a, cfg_a), (b, cfg_b) = load_run(run), load_run(back)
    x = torch.randint(0, 256, (1, 10))
    assert torch.equal(a(x).logits, b(x).logits) and cfg_b.model == cfg_a.model
    assert main(["lm", "import", "--from-hf", str(hf), "--out", str(back)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_core_imports_without_transformers():
    code = """
import sys
sys.modules["transformers"] = None  # as if it were not installed
import innerloop, innerloop.models, innerloop.cli.main, innerloop.train.lm
try:
    import innerloop.models.hf
except ImportError as e:
    assert "innerloop[hf]" in str(e), e
    print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.slow
def test_trainer_loss_goes_down_with_and_without_gradient_checkpointing(tmp_path):
    from transformers import Trainer, TrainingArguments

    data = torch.tensor(list((ROOT.parent / "shared/data/text/tinyshakespeare.txt").read_bytes()[:8192])
                        if (ROOT.parent / "shared/data/text/tinyshakespeare.txt").is_file()
                        else list(b"To be, or not to be, that is the question. " * 200))  # fmt: skip
    T = 32

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return len(data) // T

        def __getitem__(self, i):
            x = data[i * T : (i + 1) * T]
            return {"input_ids": x, "labels": x}

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    losses = {}
    for gc in (False, True):
        torch.manual_seed(0)
        m = InnerloopForCausalLM(InnerloopConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=1, num_attention_heads=4, mini_batch_size=8))
        args = TrainingArguments(output_dir=str(tmp_path / str(gc)), max_steps=12, per_device_train_batch_size=4,
                                 learning_rate=3e-3, warmup_steps=1, logging_steps=1, save_strategy="no",
                                 report_to=[], use_cpu=True, disable_tqdm=True, seed=0, **{checkpointing: gc})
        trainer = Trainer(model=m, args=args, train_dataset=Windows())
        trainer.train()
        assert m.model.gradient_checkpointing is gc
        losses[gc] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        assert len(losses[gc]) == 12 and sum(losses[gc][-3:]) < sum(losses[gc][:3]) - 0.3, losses[gc]
    # checkpointing recomputes the same forward: the same losses, step for step
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_generate_continues_from_the_returned_cache():
    m, x = model("ttt_linear"), ids(1, 5)
    first = m.generate(x, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    cache = first.cache if hasattr(first, "cache") else first.past_key_values
    assert isinstance(cache, InnerloopCache) and cache.get_seq_length() == 8  # the last token is not fed yet
    kw = {"cache" if hasattr(first, "cache") else "past_key_values": cache}
    more = m.generate(first.sequences, max_new_tokens=4, do_sample=False, **kw)
    assert torch.equal(more, m.generate(x, max_new_tokens=8, do_sample=False))


@pytest.mark.parametrize(("mixer", "backbone"), ALL)
def test_right_padding_is_exact_and_left_padding_refused_for_every_mixer(mixer, backbone):
    # right padding (a padding collator's batch): each row's real logits and its loss are the row's alone; a padded
    # forward returns no cache (it would have read the pads)
    m = model(mixer, backbone, mini_batch_size=4)
    x, lengths = ids(3, 11), [11, 6, 3]  # remainders and one-token-past-a-mini-batch rows
    mask = (torch.arange(11) < torch.tensor(lengths)[:, None]).long()
    labels = x.masked_fill(mask == 0, -100)
    out = m(x, attention_mask=mask, labels=labels)
    assert (out.cache if hasattr(out, "cache") else out.past_key_values) is None
    total, count = 0.0, 0
    for r, n in enumerate(lengths):
        alone = m(x[r : r + 1, :n], labels=x[r : r + 1, :n])
        torch.testing.assert_close(out.logits[r, :n], alone.logits[0])
        total, count = total + alone.loss * (n - 1), count + n - 1
    torch.testing.assert_close(out.loss, total / count)
    # the AutoModel too
    base = InnerloopModel(tiny(mixer, backbone, mini_batch_size=4))
    base.model.load_state_dict(m.model.state_dict())
    torch.testing.assert_close(base(x, attention_mask=mask).last_hidden_state[1, :6], base(x[1:2, :6])[0][0])
    # a padded forward cannot hand out a state; left padding in forward and right padding in generate are refused
    with pytest.raises(ValueError, match="use_cache=True with a right-padded batch"):
        m(x, attention_mask=mask, use_cache=True)
    with pytest.raises(NotImplementedError, match="only right padding is supported"):
        m(x, attention_mask=mask.flip(1))
    with pytest.raises(NotImplementedError, match="generate.. with padding takes left-padded prompts only"):
        m.generate(x, attention_mask=mask, max_new_tokens=2, do_sample=False)


def _left_padded(lengths: list[int], t: int, pad: int = 0, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    mask = (torch.arange(t) >= t - torch.tensor(lengths)[:, None]).long()
    return ids(len(lengths), t, seed).clamp(1, 62).masked_fill(mask == 0, pad), mask  # 63: a pad id of the tests


@pytest.mark.parametrize(("mixer", "backbone"), SOME)
def test_generate_on_a_left_padded_batch_gives_each_row_its_own_tokens(mixer, backbone):
    # each row continues its real tokens exactly as generating it alone (remainders and rows past a mini-batch), laid
    # out as transformers lays out a batch: the pads, the prompt, the new tokens, pad_token_id after an early stop
    m, (x, mask), lengths = model(mixer, backbone, mini_batch_size=4), _left_padded([9, 6, 1], 9), [9, 6, 1]
    alone = [m.generate(x[r : r + 1, 9 - n :], max_new_tokens=6, do_sample=False)[0] for r, n in enumerate(lengths)]
    eos = int(alone[1][6])  # row 1 stops after its first new token (and any row that makes it too)
    out = m.generate(x, attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=63)
    assert out.shape[0] == 3 and torch.equal(out[:, :9], x)
    for r, n in enumerate(lengths):
        want = m.generate(x[r : r + 1, 9 - n :], max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=63)
        got = out[r, 9 - n :]
        assert torch.equal(got[: want.shape[1]], want[0]) and bool((got[want.shape[1] :] == 63).all())
    assert out.shape[1] > 10 and torch.equal(out[1, 9:], torch.tensor([eos] + [63] * (out.shape[1] - 10)))
    # max_length counts the padded prompt (as transformers): every row gets max_length - 9 new tokens
    out = m.generate(x, attention_mask=mask, max_length=12, do_sample=False)
    assert out.shape == (3, 12) and all(torch.equal(out[r, 9 - n :], a[: n + 3]) for r, (n, a) in
                                        enumerate(zip(lengths, alone)))  # fmt: skip
    # beam search with several returned sequences: each row's group as that row's own beam search
    out = m.generate(x, attention_mask=mask, max_new_tokens=3, num_beams=3, num_return_sequences=2, do_sample=False)
    for r, n in enumerate(lengths):
        want = m.generate(x[r : r + 1, 9 - n :], max_new_tokens=3, num_beams=3, num_return_sequences=2,
                          do_sample=False)  # fmt: skip
        assert torch.equal(out[2 * r : 2 * r + 2, 9 - n :], want)


def test_generate_on_a_left_padding_tokenizers_batch():
    # the usual transformers call: tokenizer(texts, padding=True) with padding_side="left", then generate(**batch)
    texts = ["to be or not to be", "that is the question", "to"]
    m, tok = model("ttt_linear", vocab_size=16), _word_tokenizer("left")
    batch = tok(texts, padding=True, return_tensors="pt")
    out = m.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    width = batch["input_ids"].shape[1]
    for r, text in enumerate(texts):
        one = tok(text, return_tensors="pt")["input_ids"]
        n = one.shape[1]
        assert torch.equal(out[r, width - n :], m.generate(one, max_new_tokens=4, do_sample=False)[0])
    # transformers' text-generation pipeline batches with the tokenizer's left padding: the texts of one at a time
    from transformers import pipeline

    pipe = pipeline("text-generation", model=m, tokenizer=tok, device="cpu")
    batched = pipe(texts, batch_size=3, max_new_tokens=4, do_sample=False)
    assert batched == [pipe(t, max_new_tokens=4, do_sample=False) for t in texts]
    # per-step outputs of the whole batch, a streamer and a cache cannot be assembled from row-by-row generations
    with pytest.raises(NotImplementedError, match="return_dict_in_generate is not supported with padding"):
        m.generate(**batch, max_new_tokens=2, return_dict_in_generate=True)
    state = m(batch["input_ids"][:, -1:], use_cache=True)
    with pytest.raises(NotImplementedError, match="cannot continue a cache"):
        m.generate(**batch, max_new_tokens=2, cache=state.cache if hasattr(state, "cache") else state.past_key_values)


def test_padding_after_a_cache_or_of_another_shape_is_refused():
    m, x = model("ttt_linear"), ids(2, 6)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    state = m(x, use_cache=True)
    cache = state.cache if hasattr(state, "cache") else state.past_key_values
    with pytest.raises(NotImplementedError, match="and a cache"):
        m(x[:, :2], attention_mask=torch.cat([torch.ones(2, 6, dtype=torch.long), mask[:, 3:5]], 1), cache=cache)
    with pytest.raises(NotImplementedError, match=r"attention_mask \(2, 7\) for input_ids \(2, 6\)"):
        m(x, attention_mask=torch.cat([mask, torch.zeros(2, 1, dtype=torch.long)], 1))
    with pytest.raises(NotImplementedError, match="only right padding"):
        m(x, attention_mask=torch.tensor([[1, 0, 1, 1, 0, 0], [1] * 6]))  # a hole
    with pytest.raises(NotImplementedError, match="only right padding"):
        m(x, attention_mask=torch.tensor([[1, 1, 1, 1, 2, 0], [1] * 6]))  # not 0/1


WORDS = ("to", "be", "or", "not", "that", "is", "the", "question")


def _word_tokenizer(padding_side: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   padding_side=padding_side)  # fmt: skip


def test_trainer_with_transformers_padding_collator(tmp_path):
    # DataCollatorForLanguageModeling pads on the right and sets labels -100 there: the Trainer's loss is the
    # token-weighted mean of each text's own loss; a left-padding tokenizer gets the fix in the error
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    texts = ["to be or not to be that is the question", "that is the question", "to be"]
    m = model("ttt_linear", vocab_size=16)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    tok = _word_tokenizer("right")
    batch = DataCollatorForLanguageModeling(tok, mlm=False)([tok(t) for t in texts])
    assert not batch["attention_mask"].bool().all()
    loss = Trainer(model=m, args=args).compute_loss(m, dict(batch))
    singles = [m(x, labels=x) for x in (torch.tensor([tok(t)["input_ids"]]) for t in texts)]
    weights = [len(t.split()) - 1 for t in texts]
    torch.testing.assert_close(loss, sum(s.loss * w for s, w in zip(singles, weights)) / sum(weights))
    tok = _word_tokenizer("left")
    batch = DataCollatorForLanguageModeling(tok, mlm=False)([tok(t) for t in texts])
    with pytest.raises(NotImplementedError, match="padding_side = 'right'"):
        Trainer(model=m, args=args).compute_loss(m, dict(batch))


@pytest.mark.parametrize("backbone", ["transformer", "mamba"])
def test_output_hidden_states_and_return_dict_as_transformers(backbone):
    m, x = model("ttt_linear", backbone, num_hidden_layers=3), ids(2, 6)
    out = m(x, output_hidden_states=True)
    lm = m.to_causal_lm()
    # as transformers' models: the embeddings, each block's output but the last, the final normed states
    want, h = [lm.embed_tokens(x)], lm.embed_tokens(x)
    for block in lm.layers:
        h, _ = block(h)
        want.append(h)
    want[-1] = lm.norm(h)
    assert len(out.hidden_states) == 4
    for got, ref in zip(out.hidden_states, want):
        torch.testing.assert_close(got, ref)
    torch.testing.assert_close(out.logits, lm(x).logits)
    assert m(x).hidden_states is None
    base = InnerloopModel(m.config, lm)
    torch.testing.assert_close(base(x, output_hidden_states=True).hidden_states[-1], base(x).last_hidden_state)
    gen = m.generate(x, max_new_tokens=2, do_sample=False, return_dict_in_generate=True, output_hidden_states=True)
    assert all(step is not None and len(step) == 4 for step in gen.hidden_states)
    # return_dict=False gives a plain tuple (loss first when labels are given), as transformers' models do
    tup = m(x, labels=x, return_dict=False)
    assert type(tup) is tuple and torch.equal(tup[1], m(x, labels=x).logits) and tup[0] == m(x, labels=x).loss
    assert type(base(x, return_dict=False)) is tuple


def test_resize_token_embeddings_keeps_the_lm_config(tmp_path):
    m = model("ttt_linear")
    m.resize_token_embeddings(70)
    assert m.config.vocab_size == m.to_causal_lm().config.vocab_size == 70
    new = torch.tensor([[65, 69, 3]])
    assert m(new).logits.shape == (1, 3, 70)  # the new ids are accepted
    m.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(back(new).logits, m(new).logits)
    m.resize_token_embeddings(60)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 60\)"):  # not an IndexError deep inside
        m(torch.tensor([[62, 1]]))


def test_trainer_label_smoothing_is_a_next_token_loss(tmp_path):
    import torch.nn.functional as F
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, Trainer, TrainingArguments

    m, x = model("ttt_linear"), ids(2, 9)
    args = TrainingArguments(output_dir=str(tmp_path), label_smoothing_factor=0.1, report_to=[], use_cpu=True)
    loss = Trainer(model=m, args=args).compute_loss(m, {"input_ids": x, "labels": x.clone()})
    logits = m(x).logits
    want = F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten(), label_smoothing=0.1)
    torch.testing.assert_close(loss, want)
    # the Auto mappings still list (and import) every registered model
    assert InnerloopForCausalLM in MODEL_FOR_CAUSAL_LM_MAPPING.values()
    assert len(MODEL_FOR_CAUSAL_LM_MAPPING.items()) == len(MODEL_FOR_CAUSAL_LM_MAPPING.keys())


@pytest.mark.parametrize("mixer", ["ttt_linear", "mamba"])
def test_a_model_in_mode_chunk_can_be_wrapped_and_exported(mixer, tmp_path):
    """LMConfig(mode='chunk') is valid, but InnerloopConfig read it as a saved legacy config ('chunk' -> 'auto'), so
    from_causal_lm and export_hf refused the model: "the CausalLM's config ... differs from the InnerloopConfig's"."""
    torch.manual_seed(0)
    lm = CausalLM(LMConfig(**{**tiny().to_lm_config().to_dict(), "mixer": mixer, "mode": "chunk"})).eval()
    hf = InnerloopForCausalLM.from_causal_lm(lm).eval()
    assert hf.config.mode == "chunk" and hf.config.to_lm_config() == lm.config
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, lm(ids).logits)
        back, cfg = load_hf_as_causal_lm(export_hf(lm, tmp_path / "hf"))
        assert cfg.mode == "auto"  # a saved 'chunk' is read as the old default (innerloop.layers.modes)
        torch.testing.assert_close(back.eval()(ids).logits, lm(ids).logits, rtol=1e-5, atol=1e-6)


def test_packed_sequences_and_other_position_ids_are_refused():
    """DataCollatorWithFlattening packs sequences into one row and marks the joins by position_ids restarting at 0
    (or cu_seq_lens_*): the model ignored them, so each recurrent state ran on from one sequence into the next and the
    Trainer's loss was silently that of one long sequence. Positions the model uses are accepted."""
    from transformers import DataCollatorWithFlattening

    m = model("gru")
    feats = [{"input_ids": [3, 4, 5, 6, 7]}, {"input_ids": [9, 10, 11]}]
    with pytest.raises(NotImplementedError, match="packed sequences.*DataCollatorWithFlattening"):
        m(**DataCollatorWithFlattening()(feats))
    flash = DataCollatorWithFlattening(return_position_ids=False, return_flash_attn_kwargs=True)(feats)
    with pytest.raises(NotImplementedError, match="cu_seq_lens_q"):
        m(**flash)
    x = ids(2, 6)
    with pytest.raises(NotImplementedError, match="positions 0..5"):
        m(x, position_ids=torch.arange(6)[None] + 3)
    with pytest.raises(NotImplementedError, match="position_ids"):
        InnerloopModel(m.config, m.to_causal_lm())(x, position_ids=torch.zeros(2, 6, dtype=torch.long))
    # the positions the model uses: accepted, same logits (with a cache: continuing it; on right pads: any)
    full = m(x, use_cache=False).logits
    assert torch.equal(m(x, position_ids=torch.arange(6)[None]).logits, full)
    out = m(x[:, :4], position_ids=torch.arange(4).expand(2, 4), use_cache=True)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    with pytest.raises(NotImplementedError, match="continue the cache .4 tokens"):
        m(x[:, 4:], cache=cache, position_ids=torch.arange(2)[None])
    tail = m(x[:, 4:], cache=cache, position_ids=torch.tensor([[4, 5]]), cache_position=torch.tensor([4, 5]))
    torch.testing.assert_close(torch.cat([out.logits, tail.logits], 1), full, rtol=1e-4, atol=1e-5)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    pos = (mask.cumsum(1) - 1).masked_fill(mask == 0, 1)  # as transformers builds them from a mask
    assert torch.equal(m(x, attention_mask=mask, position_ids=pos).logits, m(x, attention_mask=mask).logits)


@pytest.mark.parametrize(("mixer", "backbone"), [("ttt_linear", "transformer"), ("lstm", "mamba"),
                                                 ("attention", "transformer")])  # fmt: skip
def test_generate_from_a_cache_with_beams_or_several_return_sequences(mixer, backbone):
    """generate(cache=..., num_beams=3) repeats the prompt rows but not the given cache: it failed deep inside the
    mixer ("state does not fit this TTTLinear (batch 6)"). The cache's rows are now repeated alike."""
    import copy

    m, x = model(mixer, backbone), ids()
    first = m.generate(x, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    cache = first.cache if hasattr(first, "cache") else first.past_key_values
    key = "cache" if hasattr(first, "cache") else "past_key_values"
    beams = dict(num_beams=3, do_sample=False, num_return_sequences=2)
    samples = dict(do_sample=True, num_return_sequences=2)
    for kw in (beams, samples):
        torch.manual_seed(1)
        cont = m.generate(first.sequences, max_new_tokens=3, **kw, **{key: copy.deepcopy(cache)})
        torch.manual_seed(1)
        assert torch.equal(cont, m.generate(first.sequences, max_new_tokens=3, **kw)), kw
    with pytest.raises(ValueError, match="a cache of 2 sequences for input_ids of 4 rows"):
        m.generate(torch.cat([first.sequences, first.sequences.flip(0)]), max_new_tokens=2, **{key: cache})
