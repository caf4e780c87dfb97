"""`lmsleep continual bench NAME --seeds S --out DIR`: one subcommand per benchmark of this package.
A benchmark's module (and with it its world, the model and torch) is imported only when it is chosen."""
from __future__ import annotations

import argparse
import functools

from ...cli import add_lazy_subparsers
from . import MODULES, help_line, load


def _fill(name: str, command: argparse.ArgumentParser) -> None:
    from . import runner  # torch and the model: only once a benchmark is chosen

    bench = load(name)
    command.description = bench.HELP
    runner.add_common_arguments(command, f"runs/bench-{name}")
    bench.add_arguments(command)
    command.set_defaults(bench_run=bench)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    fills = {name: (help_line(name), functools.partial(_fill, name)) for name in MODULES}
    add_lazy_subparsers(parser, "bench_name", fills, metavar="NAME")


def run(args: argparse.Namespace) -> int:
    from . import runner

    runner.run(args.bench_run, args)
    return 0
