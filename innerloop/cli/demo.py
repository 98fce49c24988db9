"""``innerloop demo``: the main job (placeholder until the TTT layers land)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="short end-to-end demo of the TTT layers")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("innerloop demo: the TTT demo lands with the TTT layers.")
    return 0
