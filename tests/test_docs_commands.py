"""RESULTS.md and BENCHMARKS.md: every ``innerloop`` command they record still parses with today's CLI.

Each result there comes with the command that made it; a renamed or removed flag would leave a command that no longer
runs. Commands are found in fenced and indented blocks (continuation lines joined, leading ``VAR=value`` settings
dropped) and checked as tests/test_readme.py checks the README's (parsed without running, flags spelled in full).
Optional parts written ``[--flag ...]`` are checked as if given; a command with a placeholder (``$n``, ``RUN``,
``H``) is a template and is not checked.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.test_readme import check_cli_args, innerloop_args

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("RESULTS.md", "BENCHMARKS.md")
PREFIX = re.compile(r"^\s*(?:nice -n \d+ )?(?:env )?")  # `nice -n 19 env OMP_NUM_THREADS=1 innerloop ...`
START = re.compile(PREFIX.pattern + r"(?:[A-Z_]+=\S*\s+)*(?:innerloop|python3? -m innerloop|torchrun)\s")
PLACEHOLDER = re.compile(r"\$|^[A-Z][A-Z_0-9-]*$")  # $n, ${X}, RUN, H, CHECKPOINT


def doc_commands(doc: str) -> list[tuple[int, str]]:
    """``(line, command)`` of every innerloop command line in ``doc`` (continuations joined, comments kept)."""
    lines, out, i = (ROOT / doc).read_text().splitlines(), [], 0
    while i < len(lines):
        if START.match(lines[i]) and (lines[i].startswith("    ") or not lines[i].startswith(" ")):
            start, cmd = i + 1, ""
            while True:
                cmd += lines[i].strip().removesuffix("\\") + " "
                if not lines[i].rstrip().endswith("\\") or i + 1 == len(lines):
                    break
                i += 1
            out.append((start, cmd.strip()))
        i += 1
    return out


def _argv(command: str) -> list[str] | None:
    """The innerloop arguments, or None for a command written with placeholders."""
    argv = shlex.split(re.sub(r"\[(--[^\]]*)\]", r"\1", PREFIX.sub("", command.split("; done")[0])), comments=True)
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
        argv = argv[1:]
    args = innerloop_args(argv)
    if args is None or any(PLACEHOLDER.search(a) for a in args):
        return None
    return args


ALL = [(doc, line, cmd) for doc in DOCS for line, cmd in doc_commands(doc)]
CASES = [case for case in ALL if _argv(case[2]) is not None]  # the others are templates with placeholders


@pytest.mark.parametrize(("doc", "line", "command"), CASES, ids=[f"{d}:{n}" for d, n, _ in CASES])
def test_recorded_command_parses(doc, line, command):
    check_cli_args(_argv(command), f"{doc}:{line}: `{command}`")


def test_the_docs_have_commands():
    """Guards the extraction: RESULTS.md records many commands, most without placeholders."""
    assert len([c for d, _, c in CASES if d == "RESULTS.md"]) >= 80 and len(ALL) - len(CASES) < 40
    assert any(c.startswith("nice -n 19 env") for _, _, c in CASES)  # commands run under nice are checked too
