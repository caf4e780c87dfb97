"""`lmsleep continual …`: the continual learner's commands (a family: each subcommand is a module exporting
HELP, add_arguments and run, as the top-level commands are)."""
from __future__ import annotations

import argparse

from . import bases_cli, demo
from .bench import cli as bench

COMMANDS = {"demo": demo, "bench": bench, "base": bases_cli}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="continual_command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        command = sub.add_parser(name, help=module.HELP, description=module.__doc__.splitlines()[0])
        module.add_arguments(command)
        command.set_defaults(continual_run=module.run)


def run(args: argparse.Namespace) -> int:
    return args.continual_run(args)
