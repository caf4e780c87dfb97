"""The `lmsleep` command line. Each subcommand is a module exporting HELP, add_arguments(parser) and
run(args) -> exit code; this file only lists them (a family of subcommands adds its own subparsers)."""
from __future__ import annotations

import argparse
import sys

from . import demo, hf_cli, report_cli, sweep_cli, train_cli
from .continual import cli as continual_cli
from .tasks import data_cli

SUBCOMMANDS = {
    "demo": demo,
    "data": data_cli,
    "train": train_cli,
    "sweep": sweep_cli,
    "report": report_cli,
    "continual": continual_cli,
    "hf-export": hf_cli,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmsleep", description="Sleep phases for language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=module.HELP, description=module.__doc__.splitlines()[0])
        module.add_arguments(command)
        command.set_defaults(run=module.run)
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
