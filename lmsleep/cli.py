"""The `lmsleep` command line. Each subcommand is a module exporting add_arguments(parser) and run(args) ->
exit code; this file lists them with their one line of help, and imports a module only when its subcommand
is chosen (so `lmsleep --help` and `lmsleep data …` start at once). A family of subcommands (`continual`)
lists its own the same way."""
from __future__ import annotations

import argparse
import functools
import importlib
import sys
from typing import Callable, NamedTuple


class Command(NamedTuple):
    module: str  # exports add_arguments(parser) and run(args); its docstring's first line describes it
    help: str


SUBCOMMANDS = {
    "demo": Command("lmsleep.demo", "train a tiny sleep model for about a minute, then stream through it"),
    "data": Command("lmsleep.tasks.data_cli", "print a task's generated examples as JSON lines"),
    "train": Command("lmsleep.train_cli", "train a model on a task (Muon + AdamW, checkpoints, --resume, torchrun)"),
    "sweep": Command("lmsleep.sweep_cli",
                     "run a grid of training jobs, then write the report (default: the built-in Rule 110 N=1 vs N=4)"),
    "report": Command("lmsleep.report_cli", "plots and a Markdown report from a sweep directory"),
    "continual": Command("lmsleep.continual.cli", "the continual learner of paper 2 (memory levels, knowledge "
                         "seeding, dreaming): `continual demo`, `continual bench NAME`"),
    "hf-export": Command("lmsleep.hf_cli",
                         "convert a trained model (run or model directory) to Hugging Face transformers' format"),
}


class LazyParser(argparse.ArgumentParser):
    """A subcommand's parser filled in only when that subcommand is chosen: `fill(parser)` (which imports the
    subcommand's module and adds its arguments) runs before it first parses, which is also when its --help
    prints. argparse hands the rest of the command line to the chosen subparser's parse_known_args."""

    def __init__(self, *args, fill: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._fill = fill

    def parse_known_args(self, args=None, namespace=None):
        if self._fill is not None:
            fill, self._fill = self._fill, None
            fill(self)
        return super().parse_known_args(args, namespace)


def add_lazy_subparsers(parser: argparse.ArgumentParser, dest: str, fills: dict[str, tuple[str, Callable]],
                        metavar: str | None = None) -> None:
    """Subcommands `fills`: name -> (one line of help, fill(parser)), each filled only when chosen."""
    sub = parser.add_subparsers(dest=dest, required=True, metavar=metavar, parser_class=LazyParser)
    for name, (line, fill) in fills.items():
        sub.add_parser(name, help=line, fill=fill)


def _fill_from_module(module: str, run_dest: str, parser: argparse.ArgumentParser) -> None:
    command = importlib.import_module(module)
    parser.description = command.__doc__.splitlines()[0]
    command.add_arguments(parser)
    parser.set_defaults(**{run_dest: command.run})


def add_commands(parser: argparse.ArgumentParser, dest: str, commands: dict[str, Command], run_dest: str,
                 metavar: str | None = None) -> None:
    """Subcommands from modules (`commands`: name -> Command); the chosen one's run lands in args.<run_dest>."""
    fills = {name: (command.help, functools.partial(_fill_from_module, command.module, run_dest))
             for name, command in commands.items()}
    add_lazy_subparsers(parser, dest, fills, metavar)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmsleep", description="Sleep phases for language models.")
    add_commands(parser, "command", SUBCOMMANDS, "run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (ValueError, FileNotFoundError, TypeError) as error:
        print(f"lmsleep {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
