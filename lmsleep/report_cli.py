"""`lmsleep report DIR`: plots and a Markdown report from a sweep directory (lmsleep.report)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="runs/<sweep> (runs as children) or results/<sweep> (runs under runs/)")
    parser.add_argument("--title")
    parser.add_argument("--out", help="copy each run's metrics and config into OUT/runs/ and write the report "
                        "there, so that it regenerates from OUT alone (e.g. --out results/<sweep>)")


def run(args: argparse.Namespace) -> int:
    from .report import keep_runs, write_report

    directory = keep_runs(args.directory, args.out) if args.out else args.directory
    print(write_report(directory, args.title))
    return 0
