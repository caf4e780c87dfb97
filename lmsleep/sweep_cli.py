"""`lmsleep sweep [FILE]`: run a grid of training jobs (lmsleep.sweep), then write its report (lmsleep.report)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import validate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="sweep JSON file (default: the built-in quick sweep)")
    parser.add_argument("--out", help="sweep directory (default runs/<sweep name>)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each (default 2)")
    parser.add_argument("--estimate", action="store_true", help="only print the time estimate")


def run(args: argparse.Namespace) -> int:
    from .report import load_runs, metric_name, summarise, write_report
    from .sweep import load_sweep, run_sweep

    validate.positive_int("--jobs", args.jobs)
    sweep = load_sweep(args.config)
    out = args.out or f"runs/{sweep.get('name', 'sweep')}"
    run_sweep(sweep, out, jobs=args.jobs, estimate_only=args.estimate)
    if args.estimate:
        return 0
    report = write_report(out, sweep.get("name"))
    runs = load_runs(Path(out))
    for row in summarise(runs, metric_name(runs)):
        print(f"{row['group']:>28}: held-out {row['metric']} accuracy {row['mean']:.3f} ± {row['std']:.3f} "
              f"over {row['seeds']} seed(s), {row['tokens']:.3g} tokens, {row['wall_s']:.0f} s")
    print(f"report: {report} (plots beside it)")
    return 0
