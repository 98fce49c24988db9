"""``innerloop`` command line: each subcommand lives in its own module with ``register(subparsers)``.

The module's ``register`` adds its parser and sets ``func`` (called with the parsed args, returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib

# subcommand -> module defining ``register(subparsers)``; imported only when the CLI starts.
COMMANDS = {
    "demo": "innerloop.cli.demo",
    "lm": "innerloop.cli.lm",
    "meta": "innerloop.cli.meta",
    "synth": "innerloop.cli.synth",
    "diagnose": "innerloop.cli.diagnose",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="innerloop", description="Learning to learn in PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
