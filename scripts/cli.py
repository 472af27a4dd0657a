"""``medflower``: the project's command line (``simulate``, ``evaluate``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from scripts import audit, evaluate, simulate
from scripts.benchmarks import core as benchmark
from scripts.deploy import cli as deploy

# Subcommand name -> (registers its arguments, runs it). Other modules add theirs.
COMMANDS: dict[
    str,
    tuple[
        Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]
    ],
] = {
    "simulate": (simulate.add_arguments, simulate.run),
    "evaluate": (evaluate.add_arguments, evaluate.run),
    "deploy": (deploy.add_arguments, deploy.run),
    "benchmark": (benchmark.add_arguments, benchmark.run),
    "audit": (audit.add_arguments, audit.run),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medflower", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name))
    args = parser.parse_args(argv)
    return COMMANDS[args.command][1](args)


if __name__ == "__main__":
    sys.exit(main())
