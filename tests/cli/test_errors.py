"""One error style for every subcommand: bad input is one line on stderr and exit code 2, no traceback; Ctrl-C is
exit code 130; a real bug keeps its traceback. Every case fails before any work (milliseconds)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from innerloop.cli._errors import run_command
from innerloop.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["meta", "train", "--algorithm", "nope"], "argument --algorithm: invalid choice: 'nope'"),
        (["meta", "train", "--task", "nope"], "argument --task: invalid choice: 'nope'"),
        (["meta", "train", "--shots", "0"], "shots must be >= 1, got 0"),
        (["meta", "train", "--ways", "0"], "ways must be >= 1, got 0"),
        (["meta", "train", "--inner-lr", "0"], "inner_lr must be > 0"),
        (["meta", "train", "--algorithm", "fomaml", "--no-first-order"], "contradicts --algorithm fomaml"),
        (["meta", "train", "--task", "miniimagenet", "--data-root", "/does/not/exist"], "--data-root DIR"),
        (["meta", "eval", "--out", "/no/run"], "config.json not found"),
        (["diagnose", "retention", "--hidden-sizes", "0"], "argument --hidden-sizes: must be >= 1, got 0"),
        (["diagnose", "gradflow", "--length", "0"], "argument --length: must be >= 2, got 0"),
        (["diagnose", "ttt-inner", "--mixers", "lstm"], "invalid choice: 'lstm'"),
        (["synth", "train", "--task", "nope"], "argument --task: invalid choice: 'nope'"),
        (["synth", "train", "--train-length", "0"], "train_length must be >= 1, got 0"),
        (["synth", "table", "--mixers", "lstmm"], "invalid choice: 'lstmm'"),
        (["lm", "train", "--mixer", "nope"], "argument --mixer: invalid choice: 'nope'"),
        (["demo", "--steps", "0"], "argument --steps: must be >= 1, got 0"),
        (["lm", "train", "--intermediate-size", "0"], "intermediate_size must be >= 1, got 0"),
        (["lm", "eval", "--run", "/no/run", "--length", "-1"], "argument --length: must be >= 0"),
        (["lm"], "the following arguments are required: COMMAND"),
        (["demo", "--threads", "x"], "argument --threads: expected an integer, got 'x'"),
        (["demo", "--threads", "-2"], "argument --threads: must be >= 0, got -2"),  # was silently ignored
        (["diagnose", "retention", "--n-train", "1"], "argument --n-train: must be >= 2, got 1"),  # was NaN features
        (["synth", "train", "--task-option", "vocab_size=abc"], "option vocab_size must be an integer, got 'abc'"),
        (["synth", "train", "--task", "mqar", "--train-length", "20"], "eval length 40: task 'mqar': vocab_size 64"),
        # a device torch does not know was a RuntimeError traceback from torch.device
        (["meta", "train", "--device", "gpu"], "unknown device 'gpu'; use --device cpu, cuda or cuda:N"),
        (["lm", "train", "--device", "gpu"], "unknown device 'gpu'"),
        (["optim", "train", "--device", "mps"], "unknown device 'mps'"),
        (["rl", "train", "--algo", "rl2", "--device", "gpu"], "unknown device 'gpu'"),
        (["demo", "--device", "gpu"], "unknown device 'gpu'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)  # nothing may be written, but if it were, it lands here
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    prog = " ".join(["innerloop", *(a for a in argv[:2] if not a.startswith("-"))])
    assert err.startswith(f"{prog}: error: ")
    assert not list(tmp_path.iterdir()), "bad input must fail before any work"


def test_missing_data_names_the_flag_and_where_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("INNERLOOP_DATA", raising=False)
    assert main(["meta", "train", "--task", "omniglot", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--data-root DIR" in err and "$INNERLOOP_DATA" in err and "images_background.zip" in err
    assert "brendenlake/omniglot" in err and not (tmp_path / "r").exists()


def _args(func):
    return argparse.Namespace(command="lm", lm_command="train", func=func)


def test_an_output_folder_that_is_a_file_says_so(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    argv = ["diagnose", "retention", "--hidden-sizes", "4", "--steps", "1", "--out", str(tmp_path / "f")]
    assert main(argv) == 2
    assert "is a file where a folder is needed: give another --out" in capsys.readouterr().err


def test_interrupt_is_exit_code_130(capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    assert run_command(interrupted, _args(interrupted)) == 130
    assert capsys.readouterr().err == "innerloop lm train: interrupted\n"


def test_a_diverged_run_is_one_line(capsys):
    from innerloop.train import TrainingDivergedError

    def diverged(args):
        raise TrainingDivergedError("diverged at step 5: loss is nan")

    assert run_command(diverged, _args(diverged)) == 2
    assert capsys.readouterr().err == "innerloop lm train: error: diverged at step 5: loss is nan\n"


def test_a_real_bug_keeps_its_traceback():
    def buggy(args):
        raise KeyError("not a user error")

    with pytest.raises(KeyError):
        run_command(buggy, _args(buggy))


def test_traceback_on_request(monkeypatch):
    def bad(args):
        raise ValueError("bad value")

    monkeypatch.setenv("INNERLOOP_TRACEBACK", "1")
    with pytest.raises(ValueError, match="bad value"):
        run_command(bad, _args(bad))


def test_missing_optional_package_names_the_extra(capsys):
    def needs_pil(args):
        raise ModuleNotFoundError("No module named 'PIL'", name="PIL")

    assert run_command(needs_pil, _args(needs_pil)) == 2
    assert "pip install 'innerloop[vision]'" in capsys.readouterr().err


def test_subprocess_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "innerloop", "meta", "train", "--algorithm", "nope"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("innerloop meta train: error: argument --algorithm: invalid choice: 'nope'")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_a_folder_that_is_not_omniglot_says_what_is_expected(tmp_path):
    from innerloop.data.fewshot.benchmarks import get_tasksets

    with pytest.raises(FileNotFoundError, match="is not an Omniglot root") as e:
        get_tasksets("omniglot", root=tmp_path)
    for part in ("images_background", "characterNN/*.png", "brendenlake/omniglot", "--data-root DIR", "root=",
                 "$INNERLOOP_DATA/omniglot"):  # fmt: skip
        assert part in str(e.value), part


def test_data_root_comes_from_the_environment(tmp_path, monkeypatch):
    from innerloop.data.fewshot.benchmarks import data_root

    (tmp_path / "omniglot").mkdir()
    monkeypatch.setenv("INNERLOOP_DATA", str(tmp_path))
    assert data_root("omniglot") == tmp_path / "omniglot"
    assert data_root("omniglot", tmp_path) == tmp_path  # an explicit root wins
    with pytest.raises(FileNotFoundError, match=r"miniimagenet data folder .* does not exist: give --data-root DIR"):
        data_root("miniimagenet")


def test_ctrl_c_during_training_names_the_checkpoint(capsys):
    from innerloop.cli._errors import run_command
    from innerloop.runs import RunInterrupted

    def interrupted(args):
        raise RunInterrupted("interrupted after step 4; checkpoint runs/x/checkpoints/step_00000004; run the same "
                             "command again to resume")  # fmt: skip

    assert run_command(interrupted, _args(interrupted)) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "step_00000004" in err and "again to resume" in err


def test_run_flags_fresh_and_extend(tmp_path, capsys):
    """A second meta run with another algorithm into the same folder is refused (one line, exit 2); --fresh starts
    over keeping the old run; --extend trains it further."""
    from innerloop.cli.main import main

    out = tmp_path / "run"
    base = ["meta", "train", "--task", "sinusoid", "--shots", "2", "--meta-batch", "2", "--iterations", "2",
            "--eval-tasks", "2", "--eval-batch", "2", "--test-steps", "1", "--out", str(out), "--no-progress"]
    assert main([*base, "--algorithm", "maml"]) == 0
    capsys.readouterr()
    assert main([*base, "--algorithm", "reptile"]) == 2
    resuming, err = capsys.readouterr().err.splitlines()  # what is taken from the run, then the one-line error
    assert resuming == f"resuming {out}: settings not given here are taken from its config.json"
    assert "algorithm: checkpoint 'maml' vs now 'reptile'" in err and "--fresh" in err
    assert main([*base, "--algorithm", "reptile", "--fresh"]) == 0
    assert len(list(tmp_path.glob("run.previous-*"))) == 1
    more = [a if a != "2" or i != base.index("--iterations") + 1 else "3" for i, a in enumerate(base)]
    assert main([*more, "--algorithm", "reptile"]) == 2
    assert "--extend" in capsys.readouterr().err
    assert main([*more, "--algorithm", "reptile", "--extend"]) == 0


def test_an_out_that_is_a_file_says_so(tmp_path, capsys):
    """``--out`` naming a file (or a path under one) was ``[Errno 17] File exists`` / ``[Errno 20] Not a directory``."""
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["synth", "train", "--steps", "1", "--out", str(afile)]) == 2
    assert f"cannot use {afile} as the run folder: {afile} is a file, not a folder" in capsys.readouterr().err
    assert main(["meta", "train", "--iterations", "1", "--out", str(afile / "run")]) == 2
    assert f"{afile} is a file, not a folder; give --out a folder" in capsys.readouterr().err


def test_meta_eval_refuses_training_only_flags(tmp_path, capsys):
    """``meta eval --iterations 5`` (or --meta-lr, --seed, ...) was accepted and silently ignored."""
    assert main(["meta", "eval", "--out", str(tmp_path), "--iterations", "5"]) == 2
    assert "innerloop meta eval: error: unrecognized arguments: --iterations 5" in capsys.readouterr().err
    assert main(["meta", "eval", "--out", str(tmp_path), "--eval-tasks", "5"]) == 2  # an eval flag: the run is missing
    assert "config.json not found" in capsys.readouterr().err


def test_meta_on_cpu_0_trains_and_evaluates(tmp_path, capsys):
    """``--device cpu:0`` trained, then crashed in evaluation (safetensors refuses the name); ``auto`` crashed."""
    for device in ("cpu:0", "auto"):
        out = tmp_path / device.replace(":", "")
        argv = ["meta", "train", "--device", device, "--iterations", "2", "--meta-batch", "2", "--eval-tasks", "2",
                "--eval-batch", "2", "--test-steps", "1", "--no-progress", "--out", str(out)]  # fmt: skip
        assert main(argv) == 0, capsys.readouterr().err
        assert "test mse after  1 steps" in capsys.readouterr().out
