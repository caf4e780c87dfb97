"""`lmsleep report DIR`: plots and a Markdown report from a sweep directory (lmsleep.report)."""
from __future__ import annotations

import argparse

HELP = "plots and a Markdown report from a sweep directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory")
    parser.add_argument("--title")


def run(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(args.directory, args.title))
    return 0
