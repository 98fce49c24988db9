"""`innerloop rl plot`: RL² learning curves against the baselines; clear errors for folders that are not RL² runs."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

from innerloop.cli.main import main  # noqa: E402
from innerloop.rl.plots import plot_rl2_curves  # noqa: E402


def _run(tmp_path, name="gru-run"):
    run = tmp_path / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"mixer": "gru"}))
    (run / "log.csv").write_text("step,return,val_return\n10,5.0,\n20,6.0,6.1\n30,6.5,6.4\n")
    return run


def test_plot_writes_a_png_with_baselines(tmp_path):
    run = _run(tmp_path)
    base = tmp_path / "baselines.csv"
    base.write_text("env,baseline,mean,ci95,trials\nbandit,random,5.0,0.1,100\nbandit,ucb1,6.7,0.1,100\n")
    out = plot_rl2_curves([run], tmp_path / "curves.png", base)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["rl", "plot", "--runs", str(run), "--baselines", str(base), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 0


def test_plot_refuses_a_folder_without_a_log(tmp_path):
    with pytest.raises(FileNotFoundError, match="innerloop rl train --algo rl2"):
        plot_rl2_curves([tmp_path], tmp_path / "x.png")
    (tmp_path / "log.csv").write_text("iteration,loss\n1,0.5\n")
    with pytest.raises(ValueError, match="not the log of an RL² run"):
        plot_rl2_curves([tmp_path], tmp_path / "x.png")


def _rl2_run(tmp_path, name, **settings):
    run = _run(tmp_path, name)
    cfg = {"env": "bandit", "arms": 5, "episodes": 10, "states": 10, "actions": 5, "horizon": 10, "mixer": "gru"}
    (run / "config.json").write_text(json.dumps({**cfg, **settings}))
    return run


def test_plot_refuses_baselines_of_other_trials(tmp_path):
    """A baseline played on other trials (arms, episodes, env, MDP sizes) than the run's is no baseline of it: its
    line beside the run's curve would be a silently wrong comparison."""
    base = tmp_path / "baselines.csv"
    base.write_text("env,arms,episodes,baseline,mean,ci95,std,trials\nbandit,5,10,ucb1,6.7,0.1,1.0,100\n")
    plot_rl2_curves([_rl2_run(tmp_path, "same")], tmp_path / "ok.png", base)  # the run's own settings: drawn
    for name, settings in (("arms", {"arms": 3}), ("pulls", {"episodes": 100}), ("mdp", {"env": "mdp"})):
        with pytest.raises(ValueError, match="other trials"):
            plot_rl2_curves([_rl2_run(tmp_path, name, **settings)], tmp_path / "x.png", base)
    mdp = tmp_path / "mdp.csv"  # `rl baselines --env mdp` plays S=10 A=5 H=10 only
    mdp.write_text("env,arms,episodes,baseline,mean,ci95,std,trials\nmdp,,10,psrl,30.0,0.5,3.0,100\n")
    plot_rl2_curves([_rl2_run(tmp_path, "mdp-same", env="mdp")], tmp_path / "ok2.png", mdp)
    with pytest.raises(ValueError, match="states 10"):
        plot_rl2_curves([_rl2_run(tmp_path, "mdp-small", env="mdp", states=4)], tmp_path / "x.png", mdp)
    assert not (tmp_path / "x.png").exists()
