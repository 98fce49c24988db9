"""``innerloop`` command line: each subcommand lives in its own module with ``register(subparsers)``.

The module's ``register`` adds its parser (a group of subcommands uses ``dest="<command>_command"``) and sets
``func`` (called with the parsed args, returns an exit code). :func:`main` runs it through the one error handler
of :mod:`innerloop.cli._errors`: bad input is one line on stderr and exit code 2, Ctrl-C exit code 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from innerloop.cli._errors import Parser, run_command

# subcommand -> module defining ``register(subparsers)``; imported only when the CLI starts.
COMMANDS = {
    "demo": "innerloop.cli.demo",
    "lm": "innerloop.cli.lm",
    "meta": "innerloop.cli.meta",
    "optim": "innerloop.cli.optim",
    "synth": "innerloop.cli.synth",
    "diagnose": "innerloop.cli.diagnose",
    "forecast": "innerloop.cli.forecast",
    "rl": "innerloop.cli.rl",
    "icl": "innerloop.cli.icl",
}

EPILOG = """\
Run `innerloop <command> --help` for a command's subcommands and flags.
Bad input is reported on one line with exit code 2; set INNERLOOP_TRACEBACK=1 to see the traceback as well.
Data: Omniglot and mini-ImageNet are read from --data-root DIR or $INNERLOOP_DATA/<name> (see README, "Data")."""


def build_parser() -> argparse.ArgumentParser:
    """The ``innerloop`` parser with every subcommand registered."""
    parser = Parser(prog="innerloop", description="Learning to learn in PyTorch.", epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run the subcommand; returns the exit code (0, 2 or 130)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported by the subcommand that was given them, which names itself and its --help
            leaf = leaf_parser(parser, sys.argv[1:] if argv is None else argv)
            leaf.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # --help (0) or a usage error (2, already printed)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    return run_command(args.func, args)


def leaf_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser that handles ``argv``: subcommand names followed down the tree (also used by the tests that
    check the README's and the results' command lines)."""
    for token in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if token.startswith("-") or not subs or token not in subs[0].choices:
            break
        parser = subs[0].choices[token]
    return parser


if __name__ == "__main__":  # python -m innerloop.cli.main works like python -m innerloop
    raise SystemExit(main())
