"""The config dataclasses behind the flags: early validation with clear messages, None as the only "default"
placeholder of TrainConfig, and runs written by older versions (0 / -1 / 0.0 placeholders) still load and resume."""

from __future__ import annotations

import json

import pytest
import torch

from innerloop.meta.trainer import MetaConfig
from innerloop.synth.harness import SynthConfig
from innerloop.train.config import TrainConfig

LEGACY = {"intermediate_size": 0, "ttt_base_lr": 0.0, "vocab_size": 0, "ttt_lr_warmup_steps": -1}
TINY = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, context=32, batch_size=4, steps=2,
            warmup_steps=1, eval_every=0, eval_batches=1, log_every=1, checkpoint_every=2)  # fmt: skip


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(algorithm="maml2"), "unknown algorithm 'maml2'; choose from anil, fomaml, imaml, maml, metasgd, reptile"),
        (dict(task="cifar"), "unknown task 'cifar'; choose from miniimagenet, omniglot, sinusoid"),
        (dict(meta_optimizer="rmsprop"), "unknown meta_optimizer 'rmsprop'; choose from adam, sgd"),
        (dict(vectorize="maybe"), "unknown vectorize 'maybe'"),
        (dict(shots=0), "shots must be >= 1, got 0"),
        (dict(ways=0), "ways must be >= 1"),
        (dict(steps=-1), "steps must be >= 0"),
        (dict(query_shots=-1), "query_shots, max_seconds and steps must be >= 0"),
        (dict(meta_lr=0.0), "meta_lr must be > 0"),
    ],
)
def test_meta_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        MetaConfig(**kw)


def test_meta_config_accepts_bool_vectorize():
    assert MetaConfig(vectorize=True).vectorize is True  # what Python callers may pass


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(task="sorting"), "unknown task 'sorting'; choose from .*copy"),
        (dict(mixer="lstmm"), "unknown mixer 'lstmm'; choose from .*lstm"),
        (dict(train_length=0), "train_length must be >= 1"),
        (dict(hidden_size=0), "hidden_size must be >= 1"),
        (dict(tbptt_window=-1), "tbptt_window must be >= 0"),
    ],
)
def test_synth_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        SynthConfig(**kw)


def test_synth_config_knows_the_arm_task():
    assert SynthConfig(task="arm").task == "arm"  # registered by innerloop.synth, not innerloop.data


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(intermediate_size=0), "intermediate_size must be >= 1, got 0"),
        (dict(ttt_base_lr=0.0), "ttt_base_lr must be > 0, or unset"),
        (dict(ttt_lr_warmup_steps=-1), "ttt_lr_warmup_steps must be >= 0, or unset"),
        (dict(backbone="rwkv"), "unknown backbone 'rwkv'; choose from mamba, transformer"),
        (dict(tokenizer="bpe", vocab_size=100), "needs --vocab-size > 256"),
    ],
)
def test_train_config_placeholders_are_none(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_flat(**kw)


def test_train_config_none_means_the_default():
    cfg = TrainConfig.from_flat(hidden_size=64, mixer="ttt_mlp", steps=50)
    assert cfg.model.intermediate_size == 128 and cfg.model.ttt_base_lr is None
    assert cfg.model.vocab_size == 256 and cfg.resolved_ttt_warmup() == 5
    assert TrainConfig.from_flat(tokenizer="bpe").model.vocab_size == 2048
    assert TrainConfig.from_flat(ttt_lr_warmup_steps=0, mixer="ttt_mlp").resolved_ttt_warmup() == 0


def _flat_old(cfg: TrainConfig) -> dict:
    """``cfg`` as versions before the nested model config wrote it: flat, with their placeholders."""
    model = cfg.model
    flat = {k: v for k, v in cfg.to_dict().items() if k != "model"}
    flat.update(mixer=model.mixer, backbone=model.backbone, hidden_size=model.hidden_size,
                num_hidden_layers=model.num_hidden_layers, num_attention_heads=model.num_attention_heads,
                mini_batch_size=model.mini_batch_size, mode="chunk")  # fmt: skip
    return {**flat, **LEGACY}


def test_old_config_json_placeholders_are_read_as_none():
    cfg = TrainConfig.from_flat(hidden_size=48, mixer="ttt_mlp")
    assert TrainConfig.from_dict(_flat_old(cfg)) == cfg  # nested, 0 / -1 read as "the default", mode chunk as auto
    old = {**_flat_old(cfg), "intermediate_size": 96}
    assert TrainConfig.from_dict(old).model.intermediate_size == 96  # real values stay


def test_a_run_of_an_older_version_loads_and_resumes(tmp_path):
    from innerloop.train.lm import load_run, train_lm

    cfg = TrainConfig.from_flat(**TINY, out=str(tmp_path / "run"))
    train_lm(cfg)
    # rewrite the run as an older version wrote it: placeholders 0 / -1 / 0.0 in config.json and the checkpoint
    path = tmp_path / "run" / "config.json"
    path.write_text(json.dumps({**_flat_old(cfg), "resolved": json.loads(path.read_text())["resolved"]}))
    (state_file,) = (tmp_path / "run" / "checkpoints").glob("step_*/trainer.pt")
    state = torch.load(state_file, weights_only=False)
    torch.save({**state, "config": _flat_old(cfg)}, state_file)
    (state_file.parent / "manifest.json").unlink()  # older versions wrote no checksums either
    model, loaded = load_run(tmp_path / "run")
    assert loaded == cfg and model.config.intermediate_size == 64
    assert train_lm(cfg)["steps"] == 2  # resumes (nothing left to do) instead of "a different run"
