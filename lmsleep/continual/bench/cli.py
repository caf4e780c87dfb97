"""`lmsleep continual bench NAME --seeds S --out DIR`: one subcommand per benchmark of this package."""
from __future__ import annotations

import argparse

from . import MODULES, load, runner

HELP = "the paper-2 benchmarks (knowledge, sequential, puzzles, efficiency, levels): results JSON, a plot, a report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_name", required=True, metavar="NAME")
    for name in MODULES:
        bench = load(name)
        command = sub.add_parser(name, help=bench.HELP, description=bench.HELP)
        runner.add_common_arguments(command, f"runs/bench-{name}")
        bench.add_arguments(command)
        command.set_defaults(bench_run=bench)


def run(args: argparse.Namespace) -> int:
    runner.run(args.bench_run, args)
    return 0
