"""Runs: an interrupted and resumed run ends with the same parameters as an uninterrupted one; the CLI writes its
files; evaluation re-reads a run."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from innerloop.cli.main import main
from innerloop.meta.trainer import MetaConfig, train
from innerloop.runs import latest_checkpoint


def _cfg(tmp_path, name, **kw) -> MetaConfig:
    base = dict(task="sinusoid", shots=5, meta_batch=4, iterations=6, log_every=1, checkpoint_every=3,
                eval_tasks=8, eval_batch=4, test_steps=2, out=str(tmp_path / name))  # fmt: skip
    base.update(kw)
    return MetaConfig(**base)


def _final_params(cfg: MetaConfig) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(latest_checkpoint(f"{cfg.out}/checkpoints") / "model.safetensors")


def test_resume_is_exact(tmp_path):
    for algo in ("maml", "metasgd"):
        full = _cfg(tmp_path, f"full-{algo}", algorithm=algo)
        train(full, progress=False, evaluate=False)
        part = _cfg(tmp_path, f"part-{algo}", algorithm=algo, iterations=3)  # "interrupted" after a checkpoint
        train(part, progress=False, evaluate=False)
        resumed = _cfg(tmp_path, f"part-{algo}", algorithm=algo)
        train(resumed, progress=False, evaluate=False, extend=True)
        a, b = _final_params(full), _final_params(resumed)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=f"{algo} {k} differs after resume")
        with open(f"{resumed.out}/log.csv") as f:
            assert [int(r["iteration"]) for r in csv.DictReader(f)] == list(range(1, 7))
        # the test can fail: one more iteration changes the parameters
        more = _cfg(tmp_path, f"part-{algo}", algorithm=algo, iterations=7)
        train(more, progress=False, evaluate=False, extend=True)
        assert any((_final_params(more)[k] - a[k]).abs().max() > 0 for k in a)


def test_cli_train_and_eval(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["meta", "train", "--task", "sinusoid", "--algorithm", "fomaml", "--shots", "5", "--meta-batch", "3",
            "--iterations", "4", "--log-every", "2", "--eval-tasks", "6", "--eval-batch", "3", "--test-steps", "3",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    for name in ("config.json", "log.csv", "metrics.json", "checkpoints/latest"):
        assert (out / name).exists(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["algorithm"] == "fomaml" and cfg["iterations"] == 4
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["steps"]) == {"0", "1", "3"}
    assert main(["meta", "eval", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert "test mse after" in capsys.readouterr().out


def test_max_seconds_stops_and_resumes(tmp_path):
    cfg = _cfg(tmp_path, "timed", max_seconds=1e-9, iterations=50)
    train(cfg, progress=False, evaluate=False)
    assert latest_checkpoint(f"{cfg.out}/checkpoints").name == "step_00000001"


def test_metrics_of_a_run_stopped_by_its_time_budget_say_so(tmp_path):
    """metrics.json of a partly trained run (--max-seconds) could not be told from a finished run's."""
    from innerloop.meta.trainer import evaluate_run

    cfg = _cfg(tmp_path, "timed", max_seconds=1e-9, iterations=50)
    m = train(cfg, progress=False)
    assert (m["iterations"], m["stopped_early"]) == (1, True)
    assert json.loads((tmp_path / "timed" / "metrics.json").read_text())["stopped_early"] is True
    done = _cfg(tmp_path, "timed", iterations=50)
    m = train(done, progress=False)
    assert (m["iterations"], m["stopped_early"]) == (50, False)
    assert evaluate_run(done) == m  # read again from the checkpoint: the same


def test_bench_meta_smoke():
    """The benchmark's loop baseline and the core give the same meta-gradient (no timing asserted)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_meta.py"
    spec = importlib.util.spec_from_file_location("bench_meta", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from innerloop.meta import MAML
    from innerloop.models.meta_nets import omniglot_cnn

    maml = MAML(omniglot_cnn(3), lr=0.4)
    assert mod.check_same_grads(maml, mod.omniglot_batch(2, 3, 1, "cpu"), 1) < 1e-4
    row = mod.bench("tiny", maml, mod.omniglot_batch(2, 3, 1, "cpu"), 1, iters=1, rounds=1, device="cpu")
    assert row["loop_ms"] > 0 and row["vmap_ms"] > 0


def test_sinusoid_seed_that_would_train_on_the_eval_tasks_is_refused():
    """Sinusoid task i of seed s is generator seed s * 1_000_003 + i, so --seed 2000 (TEST_SEED) trained on the test
    tasks, and --seed 1999 did too after 1,000,003 training tasks (the README's 70,000 x 25)."""
    with pytest.raises(ValueError, match="fixed test tasks"):
        MetaConfig(seed=2000)
    with pytest.raises(ValueError, match="fixed test tasks"):
        MetaConfig(seed=1999, iterations=70000)
    with pytest.raises(ValueError, match="fixed validation tasks"):
        MetaConfig(seed=1000)
    MetaConfig(seed=1999, iterations=1000)
    MetaConfig(seed=2000, task="omniglot")  # test classes are disjoint from training classes


def test_inner_steps_default_per_algorithm():
    """--steps not given: Reptile 5 (with 1 step Reptile's update is the joint-training gradient), iMAML 10 (the
    implicit gradient needs the proximal problem solved), 1 for the MAML family; an explicit --steps wins."""
    from innerloop.meta.trainer import build

    assert [build(MetaConfig(algorithm=a))[0].steps for a in ("maml", "anil", "metasgd", "reptile", "imaml")] == [
        1, 1, 1, 5, 10
    ]  # fmt: skip
    assert build(MetaConfig(algorithm="reptile", steps=1))[0].steps == 1


def test_flags_that_do_not_apply_are_refused():
    with pytest.raises(ValueError, match="imaml only"):
        MetaConfig(algorithm="maml", lam=5.0)
    with pytest.raises(ValueError, match="does not apply to reptile"):
        MetaConfig(algorithm="reptile", first_order=True)
    MetaConfig(algorithm="imaml", lam=5.0, cg_steps=10)
