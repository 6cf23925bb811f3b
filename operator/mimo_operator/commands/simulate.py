"""``mimoctl simulate KIND …``: rehearsals without GPUs.

Each kind lives in its own module, ``mimo_operator/commands/simulate_<kind>.py``, exposing
``register(subparsers)`` like a top-level command; add its module name to ``SIMULATE_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["SIMULATE_MODULES", "register"]

# The kinds of simulation, in the order `mimoctl simulate --help` lists them.
SIMULATE_MODULES: tuple[str, ...] = (
    "mimo_operator.commands.simulate_engine",
    "mimo_operator.commands.simulate_autoscaling",
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate", help="rehearse without GPUs: the autoscaler against a trace, or a simulated engine"
    )
    kinds = parser.add_subparsers(dest="simulation", required=True, metavar="KIND")
    for name in SIMULATE_MODULES:
        importlib.import_module(name).register(kinds)
