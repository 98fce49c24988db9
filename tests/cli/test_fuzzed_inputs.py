"""Mistyped or misused values found by fuzzing every flag of every subcommand: each is one line on stderr with exit
code 2 and names the problem, never a traceback or a run on a meaningless value. Every case fails before any work."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from innerloop.cli._errors import run_command
from innerloop.cli.main import build_parser, main
from innerloop.models.lm import LMConfig

LM_TINY = (
    "--steps 1 --context 8 --hidden-size 8 --num-attention-heads 2 --num-hidden-layers 1 --mixer gru "
    "--batch-size 1 --eval-batches 1 --no-progress"
)
# the smallest run of each training command (before the fix, `--out ""` trained it in the current folder)
TINY = {
    "synth train": "--task copy --mixer gru --hidden-size 4 --num-layers 1 --batch-size 2 --train-length 3 "
    "--eval-lengths 3 --steps 1 --eval-batch-size 2",
    "meta train": "--task sinusoid --shots 2 --meta-batch 1 --iterations 1 --eval-tasks 2 --eval-batch 2 "
    "--test-steps 1 --no-progress",
    "rl train": "--algo rl2 --arms 2 --episodes 2 --hidden-size 4 --steps 1 --trials 2 --minibatches 1 --eval-trials 2",
    "lm train": LM_TINY,
    "optim train": "--episodes 1 --steps 2 --unroll 2 --batch 1 --dim 2 --no-eval --no-progress",
}


def _run(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "argv",
    [
        ["lm", "train", "--lr", "nan"],
        ["lm", "train", "--rms-norm-eps", "nan"],
        ["meta", "train", "--max-seconds", "nan"],
        ["optim", "train", "--meta-clip", "nan"],
        ["synth", "train", "--clip-norm", "nan"],
        ["rl", "train", "--algo", "rl2", "--entropy-coef", "nan"],
        ["icl", "train", "--task", "linear", "--noise", "nan"],
        ["forecast", "eval", "--out", "x", "--adapt-lr", "nan"],
    ],
)
def test_nan_is_refused_by_every_float_flag(capsys, argv):
    """NaN passed every `x < 0` check: `meta train --max-seconds nan` trained with no time limit, `optim train
    --meta-clip nan` and `rl train --entropy-coef nan` ran; now argparse refuses it (only parsed here)."""
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "expected a number, got 'nan'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("field", "value"), [("initializer_range", -1.0), ("initializer_range", float("inf")),
                                              ("rms_norm_eps", -1.0), ("rms_norm_eps", float("inf"))])  # fmt: skip
def test_lm_config_refuses_a_meaningless_init_or_norm_epsilon(field, value):
    with pytest.raises(ValueError, match=field):
        LMConfig(hidden_size=16, num_attention_heads=2, **{field: value})


def test_a_negative_init_std_is_one_line(tmp_path, capsys):
    err = _run(["lm", "train", "--initializer-range", "-1", *LM_TINY.split(), "--out", str(tmp_path / "r")], capsys)
    assert "initializer_range" in err and not (tmp_path / "r").exists()


def _fake_run(path, config: dict) -> str:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["meta", "eval", "--out"], "innerloop meta train"),
        (["optim", "eval", "--out"], "innerloop optim train"),
        (["optim", "export", "--name", "x", "--out"], "innerloop optim train"),
    ],
)
def test_an_eval_of_another_commands_run_says_so(tmp_path, capsys, argv, command):
    other = _fake_run(tmp_path / "lmrun", {"model": {"hidden_size": 16}, "steps": 2, "batch_size": 2})
    err = _run([*argv, other], capsys)
    assert f"holds no run of `{command}`" in err and "batch_size" in err


def test_a_rule_that_cannot_be_exported_fails_before_training(tmp_path, capsys):
    out = tmp_path / "r"
    # before the fix it trained, then failed to export
    tiny = f"--episodes 1 --steps 2 --unroll 2 --batch 1 --dim 2 --no-eval --no-progress --out {out}".split()
    err = _run(["optim", "train", "--rule", "sgd_lr", "--export", "mine", *tiny], capsys)
    assert "--rule sgd_lr cannot be exported" in err and not out.exists()
    err = _run(["optim", "train", "--rule", "tiny", "--export", "../mine", *tiny], capsys)
    assert "bad rule name" in err and not out.exists()


def test_exporting_a_run_of_a_rule_without_a_saved_form_is_one_line(tmp_path, capsys):
    from innerloop.optim.meta_train import MetaOptConfig

    run = _fake_run(tmp_path / "r", dataclasses.asdict(MetaOptConfig(rule="sgd_lr", out=str(tmp_path / "r"))))
    err = _run(["optim", "export", "--out", run, "--name", "x", "--dir", str(tmp_path / "d")], capsys)
    assert "--rule sgd_lr cannot be exported" in err and not (tmp_path / "d").exists()


def test_a_cache_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    tiny = LM_TINY.split()
    err = _run(["lm", "train", "--cache-dir", str(tmp_path / "f"), *tiny, "--out", str(tmp_path / "r")], capsys)
    assert "cannot write the token cache" in err and "give a writable --cache-dir" in err


def test_forecast_plot_refuses_a_negative_context(capsys):
    assert "argument --context: must be >= 0, got -5" in _run(["forecast", "plot", "--out", "x", "--context", "-5"],
                                                               capsys)  # fmt: skip


def test_out_of_memory_is_one_line_and_other_runtime_errors_keep_their_traceback(capsys):
    args = argparse.Namespace(command="lm", lm_command="train")

    def oom(_):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 8000000000000 bytes")  # fmt: skip

    assert run_command(oom, args) == 2
    err = capsys.readouterr().err
    assert err.startswith("innerloop lm train: error: out of memory") and "lower the sizes" in err

    def bug(_):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_command(bug, args)


@pytest.mark.parametrize("command", sorted(TINY))
def test_an_empty_out_is_refused_not_the_current_folder(tmp_path, monkeypatch, capsys, command):
    """`--out "$DIR"` with DIR unset trained into the current folder (and resumed whatever run was there)."""
    monkeypatch.chdir(tmp_path)
    assert "--out is empty" in _run([*command.split(), *TINY[command].split(), "--out", ""], capsys)
    assert not list(tmp_path.iterdir())


def test_rl_plot_with_a_file_that_is_not_baselines_csv_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text("step,return\n1,0.5\n")
    (tmp_path / "b.csv").write_text("x,y\n1,2\n")
    err = _run(["rl", "plot", "--runs", str(run), "--baselines", str(tmp_path / "b.csv"), "--out",
                str(tmp_path / "p.png")], capsys)  # fmt: skip
    assert "has no 'baseline'/'mean' columns" in err and not (tmp_path / "p.png").exists()
    err = _run(["rl", "plot", "--runs", str(run), "--baselines", str(tmp_path), "--out", str(tmp_path / "p.png")],
               capsys)  # fmt: skip
    assert "is a folder: give the baselines.csv in it" in err


def test_lm_import_from_a_missing_folder_names_it(tmp_path, capsys):
    err = _run(["lm", "import", "--from-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "i")], capsys)
    assert "config.json not found: give --from-hf the folder written by" in err and not (tmp_path / "i").exists()


def test_rl_eval_refuses_a_maml_flag_given_as_0_for_rl2(tmp_path, capsys):
    err = _run(["rl", "eval", "--algo", "rl2", "--out", str(tmp_path), "--eval-tasks", "0"], capsys)
    assert "--eval-tasks is a setting of `rl eval --algo maml`" in err


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path):
    """A `--save`/`--file` naming a folder failed in os.replace and left `.<name>.<pid>.tmp` next to it."""
    from innerloop._io import atomic_write_text

    (tmp_path / "x").mkdir()
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "x", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def _usage_error(argv: list[str], capsys) -> str:
    """argv is refused by argparse itself (exit code 2, one line naming the flag), before any work."""
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        # a setting of another task, baseline or mode (was silently ignored)
        (["meta", "train", "--task", "sinusoid", "--data-root", "d"], "--ways and --data-root apply to the"),
        (["meta", "train", "--task", "sinusoid", "--ways", "3"], "not to --task sinusoid"),
        (["rl", "baselines", "--baselines", "greedy", "--ucb-c", "0.3"], "--ucb-c sets ucb1, which --baselines"),
        (["rl", "baselines", "--baselines", "ucb1", "--epsilon", "0.3"], "--epsilon sets epsilon_greedy"),
        (["rl", "baselines", "--env", "mdp", "--baselines", "psrl", "--ucrl2-c", "0.3"], "--ucrl2-c sets ucrl2"),
        (["forecast", "eval", "--out", "x", "--adapt-lr", "0.01"], "--adapt-lr applies to --adapt online only"),
        (["forecast", "eval", "--out", "x", "--adapt", "online", "--streams", "2"], "--streams applies to"),
        (["forecast", "eval", "--out", "x", "--adapt", "online", "--adapter-rank", "2"],
         "applies to --adapt-params adapter only"),
        # out of range
        (["lm", "train", "--adam-eps", "inf"], "adam_eps must be a finite number > 0"),
        (["lm", "train", "--beta2", "1"], "betas must lie in [0, 1)"),
        (["lm", "train", "--lr", "inf"], "need a finite lr > 0"),
        (["rl", "baselines", "--epsilon", "2"], "epsilon must lie in [0, 1]"),
    ],
)
def test_a_setting_that_would_be_ignored_or_is_out_of_range_is_one_line(tmp_path, monkeypatch, capsys, argv, says):
    monkeypatch.chdir(tmp_path)
    assert says in _run(argv, capsys)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["rl", "baselines", "--ucb-c", "-1"], "argument --ucb-c: must be a finite number >= 0"),
        (["rl", "baselines", "--env", "mdp", "--ucrl2-c", "inf"], "argument --ucrl2-c: must be a finite number >= 0"),
        (["diagnose", "gradflow", "--lr", "inf"], "argument --lr: must be a finite number > 0"),
        (["diagnose", "gradflow", "--clip-norm", "0"], "argument --clip-norm: must be a finite number > 0"),
        (["diagnose", "retention", "--out", ""], "argument --out: is empty"),
        (["rl", "baselines", "--out", ""], "argument --out: is empty"),
        (["optim", "export", "--out", "r", "--name", "x", "--dir", " "], "argument --dir: is empty"),
        (["lm", "compare", "--mixers", "gru", "gru"], "argument --mixers: 'gru' is given twice"),
        (["synth", "table", "--tasks", "copy", "copy"], "argument --tasks: 'copy' is given twice"),
        (["icl", "compare", "--shots", "5", "5"], "argument --shots: 5 is given twice"),
        (["icl", "compare", "--learners", "maml", "maml"], "argument --learners: 'maml' is given twice"),
        (["rl", "baselines", "--baselines", "ucb1", "ucb1"], "argument --baselines: 'ucb1' is given twice"),
        (["meta", "train", "--fresh", "--extend"], "argument --extend: not allowed with argument --fresh"),
        (["rl", "plot", "--runs", "r", "--out", "p.xyz"], "matplotlib cannot write '.xyz' files"),
    ],
)
def test_a_meaningless_flag_value_is_a_usage_error(capsys, argv, says):
    assert says in _usage_error(argv, capsys)


def test_a_figure_path_is_the_file_written(tmp_path, capsys):
    """`rl plot --out DIR` and `forecast plot --file NAME` (no suffix): matplotlib wrote NAME.png while the command
    printed NAME; a folder is now refused, and a name without a suffix gets .png in what is written and printed."""
    from innerloop.cli._flags import image_file

    assert image_file(str(tmp_path / "curves")) == tmp_path / "curves.png"
    assert image_file(str(tmp_path / "c.pdf")) == tmp_path / "c.pdf"
    assert "is a folder: give the image file" in _usage_error(["rl", "plot", "--runs", "r", "--out", str(tmp_path)],
                                                               capsys)  # fmt: skip
    assert "is a folder" in _usage_error(["forecast", "plot", "--out", "x", "--file", str(tmp_path)], capsys)
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text("step,return,val_return\n1,0.5,0.6\n2,0.7,\n")
    assert main(["rl", "plot", "--runs", str(run), "--out", str(tmp_path / "curves")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'curves.png'}" and (tmp_path / "curves.png").is_file()


def test_rl_baselines_keeps_the_settings_of_the_baselines_it_runs(capsys):
    assert main(["rl", "baselines", "--baselines", "ucb1", "greedy", "--ucb-c", "0", "--trials", "2",
                 "--pulls", "2"]) == 0  # fmt: skip
    assert "ucb1" in capsys.readouterr().out
