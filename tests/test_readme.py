"""README.md runs as written: every ```python block in a fresh interpreter, every command of a ```bash block checked.

Python blocks run in a subprocess whose working directory is a tmp dir (nothing is written into the repo), with this
checkout's ``innerloop`` first on the path. Bash lines that call innerloop (``innerloop ...``, ``python -m innerloop
...``, the ``-m innerloop ...`` part of ``torchrun``) are parsed by the CLI's own parser without running, and every
flag must be spelled out in full (argparse would accept an abbreviation). ``make`` lines must name a Makefile target;
``pip`` and ``source`` lines are not checked. A block right after ``<!-- readme-test: skip (reason) -->`` only has
its syntax checked (python) and is reported as skipped.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import innerloop

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    lang: str
    line: int  # 1-based line number of the first line of code
    code: str
    skip: str | None  # the reason given in a skip marker, or None

    @property
    def first_line(self) -> str:
        return next((s.strip() for s in self.code.splitlines() if s.strip()), "")


def readme_blocks() -> list[Block]:
    """The fenced code blocks of README.md, with the skip marker that precedes each (if any)."""
    blocks, lines = [], README.read_text().splitlines()
    i, previous = 0, ""
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            previous = lines[i] if lines[i].strip() else previous
            i += 1
            continue
        j = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert j is not None, f"README.md:{i + 1}: code block never closed"
        skip = SKIP.search(previous)
        blocks.append(Block(m.group(1), i + 2, "\n".join(lines[i + 1 : j]) + "\n", skip.group(1) if skip else None))
        i, previous = j + 1, ""
    return blocks


BLOCKS = readme_blocks()
PYTHON = [b for b in BLOCKS if b.lang == "python"]


@pytest.mark.parametrize("block", PYTHON, ids=[f"line{b.line}" for b in PYTHON])
def test_python_block(block, tmp_path):
    compile(block.code, f"README.md:{block.line}", "exec")
    if block.skip is not None:
        pytest.skip(f"README.md:{block.line} marked skip {block.skip}")
    path = os.pathsep.join([str(Path(innerloop.__file__).parent.parent), os.environ.get("PYTHONPATH", "")])
    # One thread: these blocks are small, and on a busy machine competing threads slow them down many times.
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", block.code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    if r.returncode:
        pytest.fail(f"README.md:{block.line}: the python block starting {block.first_line!r} failed "
                    f"(exit {r.returncode}):\n{r.stderr[-3000:]}", pytrace=False)  # fmt: skip


def bash_commands() -> list[tuple[int, str]]:
    """``(line, command)`` of every command in the README's bash blocks (continuation lines joined)."""
    commands = []
    for b in BLOCKS:
        if b.lang not in ("bash", "sh", "shell", "console"):
            continue
        pending, start = "", 0
        for k, raw in enumerate(b.code.splitlines()):
            if not pending:
                start = b.line + k
            pending += raw.rstrip().removesuffix("\\") + " "
            if raw.rstrip().endswith("\\"):
                continue
            if pending.strip() and not pending.strip().startswith("#"):
                commands.append((start, pending.strip()))
            pending = ""
    return commands


COMMANDS = bash_commands()


def innerloop_args(argv: list[str]) -> list[str] | None:
    """The innerloop CLI arguments of a command line, None if it does not call innerloop."""
    if argv[0] == "innerloop":
        return argv[1:]
    if argv[0] in ("python", "python3") and argv[1:3] == ["-m", "innerloop"]:
        return argv[3:]
    if argv[0] == "torchrun":
        assert "-m" in argv, "torchrun line without -m innerloop"
        k = argv.index("-m")
        assert argv[k + 1] == "innerloop", f"torchrun runs {argv[k + 1]!r}, not innerloop"
        return argv[k + 2 :]
    return None


@pytest.mark.parametrize(("line", "command"), COMMANDS, ids=[f"line{n}" for n, _ in COMMANDS])
def test_bash_command(line, command):

    argv = shlex.split(command, comments=True)
    if argv[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
        missing = [t for t in argv[1:] if not t.startswith("-") and "=" not in t and t not in targets]
        assert not missing, f"README.md:{line}: `{command}`: no Makefile target {missing}"
        return
    if argv[0] in ("pip", "source", "export"):
        return  # installs and shell settings: not checked here
    if argv[0] in ("python", "python3") and argv[1].endswith(".py"):
        assert (ROOT / argv[1]).is_file(), f"README.md:{line}: `{command}`: no file {argv[1]}"
        return
    args = innerloop_args(argv)
    assert args is not None, f"README.md:{line}: `{command}`: unknown command (teach tests/test_readme.py about it)"
    check_cli_args(args, f"README.md:{line}: `{command}`")


def check_cli_args(args: list[str], where: str) -> None:
    """Fail (naming ``where``) unless the innerloop CLI parses ``args``, every flag spelled out in full."""
    from innerloop.cli.main import build_parser, leaf_parser

    parser = build_parser()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parser.parse_args(args)
        except SystemExit as e:
            pytest.fail(f"{where} does not parse (exit {e.code}):\n{err.getvalue()}")
    known = leaf_parser(parser, args)._option_string_actions
    flags = [a.split("=")[0] for a in args if a.startswith("-") and not re.fullmatch(r"-\d.*", a)]
    unknown = [f for f in flags if f not in known]
    assert not unknown, f"{where}: flags {unknown} are not options (abbreviated or renamed?)"


def test_readme_has_blocks():
    """The parser above finds the README's examples (guards against a fence-format change hiding them all)."""
    assert len(PYTHON) >= 4 and len(COMMANDS) >= 10
