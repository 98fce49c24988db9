"""scripts/rl2_bandit_regret.py (the per-pull regret table of RESULTS.md): the agent and the baselines play the same
tasks, regrets are the expected ones (non-negative, zero on the best arm), and a baseline's regret accounts for its
measured total reward."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _rl2_runs import run  # noqa: E402

from innerloop.rl.evaluate import run_bandit_trials  # noqa: E402


@pytest.fixture(scope="module")
def regret(load_script):
    return load_script("rl2_bandit_regret")


def test_agent_and_baselines_play_the_same_tasks(tmp_path, regret, capsys):
    run(tmp_path / "r", steps=2)  # bandit k = 3, n = 4
    reg, probs, cfg = regret.agent_regret(str(tmp_path / "r"), None, trials=3000, seed=5)
    assert reg.shape == (3000, cfg.episodes) and probs.shape == (3000, cfg.arms) and (reg >= 0).all()
    base = regret.baseline_regret("ucb1", cfg, 3000, 5, probs)
    assert base.shape == reg.shape and (base >= 0).all() and (base == 0).any()
    # expected total = T * best - regret; the measured totals of the same strategy on the same tasks agree with it
    expected = cfg.episodes * probs.max(1).values.numpy() - base.sum(1)
    measured = run_bandit_trials("ucb1", cfg.arms, cfg.episodes, 3000, 5)
    se = measured.std() / np.sqrt(3000)
    assert abs(expected.mean() - measured.mean()) < 4 * se
    sys.argv = ["rl2_bandit_regret.py", str(tmp_path / "r"), "--trials", "50", "--baselines", "greedy"]
    regret.main()
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("pulls") and "agent" in out and "greedy" in out
