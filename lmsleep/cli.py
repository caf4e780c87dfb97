"""The `lmsleep` command line. Each subcommand lives in its own module; this file only wires them."""
from __future__ import annotations

import argparse
import sys


def _demo(sub) -> None:
    from . import demo

    parser = sub.add_parser("demo", help="train a tiny sleep model for about a minute, then stream through it")
    demo.add_arguments(parser)
    parser.set_defaults(run=demo.run)


def _data(sub) -> None:
    from .tasks import data_cli

    parser = sub.add_parser("data", help="print generated task examples (rule110, depo, math) as JSON lines")
    data_cli.add_arguments(parser)
    parser.set_defaults(run=data_cli.run)


def _train(sub) -> None:
    from . import train_cli

    parser = sub.add_parser("train", help="train a model on a task (Muon + AdamW, checkpoints, --resume, torchrun)")
    train_cli.add_arguments(parser)
    parser.set_defaults(run=train_cli.run)


SUBCOMMANDS = [_demo, _data, _train]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmsleep", description="Sleep phases for language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in SUBCOMMANDS:
        register(sub)
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
