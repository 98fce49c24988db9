"""One error style for every subcommand: ``innerloop <cmd> <sub>: error: <problem and the fix>``, exit code 2.

Both kinds of bad input end the same way: a flag argparse rejects (:class:`Parser`) and an error the library raises
for a value it rejects (:data:`innerloop.errors.USER_ERRORS`, handled by :func:`run_command`; also a diverged
training run, whose message names the checkpoint to resume from, and a run whose every checkpoint is damaged). Any
other exception is a bug and keeps its traceback; ``INNERLOOP_TRACEBACK=1`` shows the traceback of the handled ones too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from innerloop.errors import USER_ERRORS

__all__ = ["EXIT_INTERRUPTED", "EXIT_USAGE", "Parser", "run_command"]

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130  # 130 = 128 + SIGINT, what shells report for Ctrl-C

# optional dependency (module name) -> the extra that installs it, for "No module named ..." errors
_EXTRAS = {"PIL": "vision", "matplotlib": "plot", "tokenizers": "bpe", "tqdm": "train", "safetensors": "train",
           "tensorboard": "tb", "triton": "triton", "transformers": "hf"}  # fmt: skip


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose usage errors are one line (no usage block): ``<prog>: error: <message>``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def one_line(e: BaseException) -> str:
    """The exception's message on one line, with a hint for a missing optional package."""
    text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename:  # mkdir of an output folder, say
        text += f"; {e.filename} (or a folder above it) is a file where a folder is needed: give another --out"
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in _EXTRAS:
        text += f"; install it with pip install 'innerloop[{_EXTRAS[e.name.split('.')[0]]}]'"
    return text


def command_name(args: argparse.Namespace) -> str:
    """``"innerloop meta train"``: the command and, where it has them, its subcommand (``dest="<cmd>_command"``)."""
    sub = getattr(args, f"{args.command}_command", None)
    return " ".join(["innerloop", args.command, *([sub] if sub else [])])


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Call ``func(args)``; the library's clear errors become one line on stderr and exit code 2.

    ``KeyboardInterrupt`` prints ``interrupted`` and returns 130 (trainers checkpoint before re-raising it).
    """
    # RuntimeErrors whose message says what to do: a diverged run (which checkpoint is kept) and a damaged checkpoint
    from innerloop.runs import CorruptCheckpointError, TrainingDivergedError

    try:
        return int(func(args) or 0)
    except KeyboardInterrupt as e:  # a trainer's RunInterrupted says which checkpoint it saved
        detail = f": {one_line(e)}" if str(e) else ""
        print(f"{command_name(args)}: interrupted{detail}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (*USER_ERRORS, TrainingDivergedError, CorruptCheckpointError) as e:
        if os.environ.get("INNERLOOP_TRACEBACK"):
            raise
        print(f"{command_name(args)}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as e:  # sizes too large for the machine (--batch-size 1e9): the sizes are the fix, not the code
        if os.environ.get("INNERLOOP_TRACEBACK") or not is_out_of_memory(e):
            raise
        print(f"{command_name(args)}: error: out of memory ({one_line(e)[:200]}); lower the sizes given (batch, "
              "width, layers, length, instances)", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is torch failing to allocate a tensor: CUDA's ``OutOfMemoryError``, the CPU allocator's
    ``RuntimeError`` (``can't allocate memory``) or a size whose byte count overflows."""
    import torch

    text = str(e)
    return (
        isinstance(e, torch.OutOfMemoryError)
        or "can't allocate memory" in text
        or "Storage size calculation overflowed" in text
    )
