"""``mimoctl``: the command line for people. Each subcommand lives in its own module.

A command module exposes ``register(subparsers)``: it adds its parser and sets ``func`` (a function of
the parsed arguments returning the exit code) with ``set_defaults(func=...)``. To add a command, write
``mimo_operator/commands/<name>.py`` and add its module name to ``COMMAND_MODULES`` below.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

# The subcommands, in the order `mimoctl --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "mimo_operator.commands.plan",
    "mimo_operator.commands.cluster",
    "mimo_operator.commands.demo",
    "mimo_operator.commands.simulate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimoctl", description="Plan, rehearse and run MiMo-V2.5 deployments served by SGLang."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
