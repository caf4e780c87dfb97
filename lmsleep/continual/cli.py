"""`lmsleep continual …`: the continual learner's commands.
A family: each subcommand is a module exporting add_arguments and run, listed here with its line of help and
imported only when chosen, as the top-level commands are (lmsleep.cli)."""
from __future__ import annotations

import argparse

from ..cli import Command, add_commands

COMMANDS = {
    "demo": Command("lmsleep.continual.demo",
                    "read a passage about a new person, sleep, answer closed-book (about 2 minutes on 2 cores)"),
    "bench": Command("lmsleep.continual.bench.cli", "the paper-2 benchmarks (knowledge, sequential, puzzles, "
                     "efficiency, levels): results JSON, a plot, a report"),
    "base": Command("lmsleep.continual.bases_cli", "build or load a world's pretrained base (facts, languages, "
                    "puzzles) into the cache; print its gate numbers"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_commands(parser, "continual_command", COMMANDS, "continual_run", metavar="COMMAND")


def run(args: argparse.Namespace) -> int:
    return args.continual_run(args)
