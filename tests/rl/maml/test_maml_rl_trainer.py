"""The MAML-RL trainer on the run scaffold: exact resume after SIGKILL, refusal of another config, bad settings,
the evaluation against pretrained and random initialisations, and the ``innerloop rl maml-*`` commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _maml_rl_runs import STEPS, config, run  # noqa: E402

from innerloop.rl.maml.trainer import evaluate_run, load_policy  # noqa: E402
from innerloop.runs import ConfigMismatchError, read_log  # noqa: E402
from innerloop.testing import kill_mid_run  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_threads():
    """The runs here use one torch thread (``threads=1``); the rest of the session keeps its own count."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _logged(out: Path) -> list[tuple[str, str, str]]:
    return [(r["iteration"], r["loss"], r["return_after"]) for r in read_log(out / "log.csv")]


def test_sigkill_then_resume_is_exact(tmp_path):
    straight = tmp_path / "straight"
    run(straight)
    assert [int(s) for s, *_ in _logged(straight)] == list(range(1, STEPS + 1))
    out = tmp_path / "killed"
    child = Path(__file__).parent / "_maml_rl_child.py"
    kill_mid_run([sys.executable, str(child), str(out), "0.5"], out / "checkpoints" / "step_00000002")
    assert len(read_log(out / "log.csv")) < STEPS
    run(out)
    assert _logged(out) == _logged(straight)
    a, b = load_policy(out)[1].state_dict(), load_policy(straight)[1].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_another_config_in_the_same_directory_is_refused(tmp_path):
    run(tmp_path / "r", iterations=1)
    with pytest.raises(ConfigMismatchError, match="inner_lr"):
        run(tmp_path / "r", iterations=1, inner_lr=0.5)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("env", "ant", "choose from"), ("trajectories", 0, "trajectories"), ("inner_lr", 0.0, "inner_lr"),
    ("max_kl", -1.0, "max_kl"), ("inner_steps", -1, "inner_steps"), ("gamma", 1.5, "gamma"),
    # accepted before, then: a numpy traceback after config.json was written (seeds), a run that trains without ever
    # moving (inf max_kl, nan damping: every line-search trial is rejected), a "diverged" error blaming --max-kl
    ("seed", -1, "seed must be >= 0"), ("eval_seed", -1, "eval_seed must be >= 0"), ("seed", 2**64, "2\\*\\*64"),
    ("max_kl", float("inf"), "max_kl must be finite"), ("cg_damping", float("nan"), "cg_damping must be >= 0"),
    ("cg_damping", float("inf"), "cg_damping must be finite"), ("init_std", float("inf"), "init_std must be finite"),
    ("max_seconds", float("nan"), "max_seconds must be >= 0"),
])  # fmt: skip
def test_bad_settings_are_refused(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        config(str(tmp_path), **{field: value})
    assert not any(tmp_path.iterdir())  # refused before the run folder is written


def test_one_step_per_task_with_normalised_advantages_is_refused(tmp_path):
    """One trajectory of one step: the per-task standardisation divides by the std of one number (nan), which used
    to surface as "training diverged ... Try a lower --max-kl"."""
    with pytest.raises(ValueError, match="--no-normalize-advantages"):
        config(str(tmp_path), trajectories=1, horizon=1)
    config(str(tmp_path), trajectories=1, horizon=1, normalize_advantages=False)
    config(str(tmp_path), trajectories=1, horizon=2)


def test_evaluation_reports_every_step_for_every_policy(tmp_path):
    torch.set_num_threads(1)  # restored by _restore_threads
    run(tmp_path / "maml", iterations=1)
    run(tmp_path / "pre", iterations=1, inner_steps=0)
    m = evaluate_run(tmp_path / "maml", tmp_path / "pre")
    assert list(m["policies"]) == ["maml", "pretrained", "random"]
    for body in m["policies"].values():
        assert list(body["steps"]) == ["0", "1", "2"] and all(v["ci95"] >= 0 for v in body["steps"].values())
    assert set(m) >= {"maml_minus_pretrained", "maml_minus_random"}
    assert json.loads((tmp_path / "maml" / "metrics.json").read_text())["eval_tasks"] == 3
    again = evaluate_run(tmp_path / "maml", tmp_path / "pre")  # the same held-out tasks and noise every time
    assert again["policies"] == m["policies"]


def test_evaluation_refuses_two_runs_that_would_share_the_pretrained_row(tmp_path):
    """A run trained with inner_steps=0 is reported as "pretrained", and so is --pretrained: evaluating one such
    run against another used to drop the first from metrics.json and report the second's numbers in its place; a
    MAML run given as --pretrained was reported as "pretrained"."""
    torch.set_num_threads(1)  # restored by _restore_threads
    run(tmp_path / "pre", iterations=1, inner_steps=0)
    run(tmp_path / "pre2", iterations=1, inner_steps=0, seed=1)
    run(tmp_path / "maml", iterations=1)
    with pytest.raises(ValueError, match="is itself a pretrained run"):
        evaluate_run(tmp_path / "pre", tmp_path / "pre2")
    with pytest.raises(ValueError, match="--inner-steps 1 \\(a MAML run\\)"):
        evaluate_run(tmp_path / "maml", tmp_path / "maml")
    assert not (tmp_path / "pre" / "metrics.json").exists() and not (tmp_path / "maml" / "metrics.json").exists()
    assert list(evaluate_run(tmp_path / "pre")["policies"]) == ["pretrained", "random"]  # alone it is fine


def test_cli_train_and_eval(tmp_path, capsys):
    from innerloop.cli.main import main

    out = tmp_path / "cli"
    flags = ["--threads", "1", "--meta-batch", "2", "--trajectories", "2", "--horizon", "4", "--hidden-size", "4",
             "--iterations", "1", "--cg-iters", "2", "--eval-tasks", "2", "--eval-steps", "1", "--no-progress",
             "--out", str(out)]
    assert main(["rl", "maml-train", *flags]) == 0
    assert main(["rl", "maml-eval", "--out", str(out), "--eval-tasks", "3"]) == 0
    text = capsys.readouterr().out
    assert "maml" in text and "random" in text and (out / "metrics.json").is_file()
    assert main(["rl", "maml-eval", "--out", str(tmp_path / "nothing")]) == 2
    assert "maml-train" in capsys.readouterr().err


def test_rl_train_and_eval_take_algo_maml(tmp_path, capsys):
    """``rl train|eval --algo maml`` run the same trainer and evaluation as ``maml-train|maml-eval``; a flag of the
    other algorithm is a one-line error naming it."""
    from innerloop.cli.main import main

    out = tmp_path / "algo"
    flags = ["--threads", "1", "--meta-batch", "2", "--trajectories", "2", "--horizon", "4", "--hidden-size", "4",
             "--iterations", "1", "--cg-iters", "2", "--eval-tasks", "2", "--eval-steps", "1", "--env", "navigation2d",
             "--out", str(out)]  # fmt: skip
    assert main(["rl", "train", "--algo", "maml", *flags]) == 0
    assert "innerloop rl train --algo maml: MAML-TRPO" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["env"] == "navigation2d"
    assert main(["rl", "eval", "--algo", "maml", "--out", str(out), "--eval-tasks", "3"]) == 0
    assert json.loads((out / "metrics.json").read_text())["eval_tasks"] == 3
    capsys.readouterr()
    for argv, match in (
        (["train", "--algo", "maml", "--mixer", "gru", "--out", str(tmp_path / "x")], "--mixer is not a setting of"),
        (["train", "--algo", "rl2", "--cg-iters", "2", "--out", str(tmp_path / "x")], "--cg-iters is not a setting of"),
        (["train", "--algo", "rl2", "--env", "navigation2d", "--out", str(tmp_path / "x")], "navigation2d"),
        (["eval", "--algo", "maml", "--out", str(out), "--greedy"], "--greedy is a setting of `rl eval --algo rl2`"),
        (["eval", "--algo", "rl2", "--out", str(out), "--eval-tasks", "2"], "--eval-tasks is a setting of"),
    ):
        assert main(["rl", *argv]) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def test_keep_checkpoints_zero_keeps_every_checkpoint(tmp_path):
    from innerloop.runs.checkpoint import checkpoint_steps

    run(tmp_path / "all", keep_checkpoints=0)  # a checkpoint every 2 of 6 iterations
    assert len(checkpoint_steps(tmp_path / "all" / "checkpoints")) == 3
    run(tmp_path / "two")
    assert len(checkpoint_steps(tmp_path / "two" / "checkpoints")) == 2
