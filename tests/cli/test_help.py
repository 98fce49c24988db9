"""``--help`` explains: every flag of every subcommand has a help text, fixed sets are choices, defaults are real."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from innerloop.cli._flags import add_dataclass_flags, dataclass_values, field_comments
from innerloop.cli.main import build_parser, main
from innerloop.layers import MIXERS
from innerloop.meta.trainer import MetaConfig
from innerloop.synth.harness import SynthConfig
from innerloop.train.config import TrainConfig


def _commands(parser: argparse.ArgumentParser, prog: str = "innerloop"):
    """``(prog, parser)`` of every leaf subcommand, and the help of every subcommand on the way."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"{prog} {name}: subcommand without help"
                yield from _commands(sub, f"{prog} {name}")
            return
    yield prog, parser


LEAVES = dict(_commands(build_parser()))


def test_every_subcommand_is_reached():
    assert {"innerloop lm train", "innerloop meta eval", "innerloop synth table", "innerloop diagnose ttt-inner",
            "innerloop demo"} <= set(LEAVES)  # fmt: skip


@pytest.mark.parametrize("prog", sorted(LEAVES))
def test_every_flag_has_a_help_text(prog):
    parser = LEAVES[prog]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), f"{prog} {action.option_strings}: no help"
        assert not action.help.startswith("default:"), f"{prog} {action.option_strings}: only a default"
    parser.format_help()  # every help string survives argparse's %-formatting


@pytest.mark.parametrize(
    ("prog", "flag", "choices"),
    [
        ("innerloop lm train", "--mixer", sorted(MIXERS)),
        ("innerloop lm train", "--tokenizer", ["bpe", "bytes"]),
        ("innerloop lm train", "--backbone", ["mamba", "transformer"]),
        ("innerloop lm train", "--dtype", ["auto", "bf16", "fp32"]),
        ("innerloop lm compare", "--mixers", sorted(MIXERS)),
        ("innerloop meta train", "--algorithm", ["anil", "fomaml", "imaml", "maml", "metasgd", "reptile"]),
        ("innerloop meta train", "--task", ["miniimagenet", "omniglot", "sinusoid"]),
        ("innerloop meta train", "--meta-optimizer", ["adam", "sgd"]),
        ("innerloop meta eval", "--vectorize", ["auto", "false", "true"]),
        ("innerloop synth train", "--mixer", sorted(MIXERS)),
        ("innerloop synth train", "--task", sorted(SynthConfig.CHOICES["task"])),
        ("innerloop diagnose gradflow", "--mixers", sorted(MIXERS)),
    ],
)
def test_fixed_sets_are_choices_listed_in_the_help(prog, flag, choices):
    action = next(a for a in LEAVES[prog]._actions if flag in a.option_strings)
    assert list(action.choices) == choices
    assert "one of: " + ", ".join(choices) in action.help or "any of: " + ", ".join(choices) in action.help


def test_device_help_lists_the_devices():
    for prog in ("innerloop lm train", "innerloop lm eval", "innerloop meta train"):
        action = next(a for a in LEAVES[prog]._actions if "--device" in a.option_strings)
        assert "cpu" in action.help and "cuda:N" in action.help, prog


@pytest.mark.parametrize("cls", [TrainConfig, MetaConfig, SynthConfig])
def test_every_config_field_is_documented_by_its_comment(cls):
    comments = field_comments(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not comments.get(f.name)]
    assert not missing, f"{cls.__name__}: fields without a trailing # comment: {missing}"


def test_help_shows_the_real_defaults(capsys):
    assert main(["lm", "train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "default: runs/lm/<mixer>-<time>" in text and "runs/lm/default" not in text
    assert "SwiGLU MLP width; default: 2 * hidden_size" in text  # None is explained, not shown
    assert "default: None" not in text and "10%" in text
    assert main(["meta", "train", "--help"]) == 0
    assert "default: runs/meta/default" in " ".join(capsys.readouterr().out.split())


def test_unset_flags_keep_the_dataclass_defaults():
    @dataclasses.dataclass
    class Cfg:
        n: int = 3  # a count
        rate: float | None = None  # a rate; default: derived
        names: list[int] = dataclasses.field(default_factory=list)  # lengths
        flag: bool = False  # a switch

    p = argparse.ArgumentParser()
    add_dataclass_flags(p, Cfg)
    assert Cfg(**dataclass_values(p.parse_args([]), Cfg)) == Cfg()
    args = p.parse_args(["--rate", "0.5", "--names", "1", "2", "--flag"])
    assert Cfg(**dataclass_values(args, Cfg)) == Cfg(3, 0.5, [1, 2], True)
    helps = {a.dest: a.help for a in p._actions}
    assert helps["n"] == "a count; default: 3" and helps["rate"] == "a rate; default: derived"
    assert helps["flag"] == "a switch; default: off"
