"""The ICL trainer on the run scaffold: a SIGKILLed run resumes to exactly the numbers of an uninterrupted one,
for an in-context learner (its support shuffling draws from the checkpointed RNG) and a gradient learner."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _runs import STEPS, config, run  # noqa: E402

from innerloop.icl import build_learner, evaluate, train  # noqa: E402
from innerloop.runs import ConfigMismatchError, load_latest_weights, read_log  # noqa: E402
from innerloop.testing import kill_mid_run


def _logged(out: Path) -> list[tuple[str, str]]:
    return [(r["step"], r["loss"]) for r in read_log(out / "log.csv")]


def _weights(learner: str, out: Path) -> dict[str, torch.Tensor]:
    cfg = config(learner, str(out))
    model = build_learner(learner, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads)
    load_latest_weights(out / "checkpoints", model)
    return model.state_dict()


@pytest.mark.parametrize("learner", ["gru", "maml"])
def test_sigkill_then_resume_is_exact(learner, tmp_path):
    straight = tmp_path / "straight"
    run(learner, straight)
    assert [int(s) for s, _ in _logged(straight)] == list(range(1, STEPS + 1))
    out = tmp_path / "killed"
    child = Path(__file__).parent / "_child.py"
    argv = [sys.executable, str(child), learner, str(out), "0.4", str(torch.get_num_threads())]
    kill_mid_run(argv, out / "checkpoints" / "step_00000002")  # later steps are lost
    assert len(read_log(out / "log.csv")) < STEPS
    run(learner, out)
    assert _logged(out) == _logged(straight)
    a, b = _weights(learner, out), _weights(learner, straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_another_config_in_the_same_directory_is_refused(tmp_path):
    run("gru", tmp_path / "r")
    with pytest.raises(ConfigMismatchError):
        run("gru", tmp_path / "r", lr=0.5)


def test_train_evaluates_in_and_out_of_distribution(tmp_path):
    m = train(config("maml", str(tmp_path / "m"), steps=2))
    assert m["kind"] == "gradient" and m["train_tasks"] == 2 * 3 and m["params"] > 0
    assert m["in"]["finite"] == 4 and m["seconds_per_task"] > 0
    assert m["ood"]["mse"] > m["in"]["mse"]  # amplitudes 5-10 vs 0.1-5: an untrained learner is far worse
    assert (tmp_path / "m" / "metrics.json").is_file()
    again = evaluate(config("maml", str(tmp_path / "m"), steps=2), build_learner("maml"))
    assert set(again) >= {"in", "ood", "seconds_per_task"}



def test_a_run_saved_before_a_field_existed_still_resumes_and_counts_as_finished(tmp_path):
    """A config saved before ``freeze_encoder_steps`` existed (the field absent) reads at the value those runs trained
    with (0): the checkpoint check accepts it, and ``icl compare`` still counts the finished run as done."""
    import dataclasses
    import json

    from innerloop.icl.compare import finished_metrics
    from innerloop.icl.trainer import ADDED_FIELDS, RESUME_FREE_KEYS, upgrade_config
    from innerloop.runs import Run

    now = dataclasses.asdict(config("gru", str(tmp_path / "r")))
    old = {k: v for k, v in now.items() if k not in ADDED_FIELDS}
    with pytest.raises(ConfigMismatchError):  # without the upgrade the absent field is a difference
        Run(tmp_path, now, resume_free=RESUME_FREE_KEYS).check_config(old, tmp_path)
    Run(tmp_path, now, resume_free=RESUME_FREE_KEYS, upgrade=upgrade_config).check_config(old, tmp_path)
    assert upgrade_config({**old, "freeze_encoder_steps": 3})["freeze_encoder_steps"] == 3  # a saved value wins

    out = tmp_path / "done"
    train(config("gru", str(out), steps=2))
    path = out / "config.json"
    body = json.loads(path.read_text())
    for name in ADDED_FIELDS:
        body.pop(name)
    path.write_text(json.dumps(body))
    assert finished_metrics(config("gru", str(out), steps=2)) is not None


@pytest.mark.parametrize("task", ["sinusoid", "linear"])
def test_the_test_seed_is_refused_for_training(task):
    from innerloop.data.fewshot import TEST_SEED
    from innerloop.icl import ICLConfig

    with pytest.raises(ValueError, match="would train on the fixed test tasks"):
        ICLConfig(task=task, seed=TEST_SEED)
    with pytest.raises(ValueError, match="would train on the fixed test tasks"):  # reaches them after 1,000,003 tasks
        ICLConfig(task=task, seed=TEST_SEED - 1, steps=50_000, meta_batch=25)
    ICLConfig(task=task, seed=TEST_SEED - 1)  # 500 x 25 tasks stop far short of them
