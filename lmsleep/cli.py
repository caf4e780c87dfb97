"""The `lmsleep` command line. Each subcommand lives in its own module; this file only wires them."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


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


def _sweep(sub) -> None:
    parser = sub.add_parser(
        "sweep", help="run a grid of training jobs, then write the report (default: the built-in Rule 110 N=1 vs N=4)"
    )
    parser.add_argument("config", nargs="?", help="sweep JSON file (default: the built-in quick sweep)")
    parser.add_argument("--out", help="sweep directory (default runs/<sweep name>)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each (default 2)")
    parser.add_argument("--estimate", action="store_true", help="only print the time estimate")
    parser.set_defaults(run=_run_sweep)


def _run_sweep(args) -> int:
    from .report import summarise, load_runs, metric_name, write_report
    from .sweep import load_sweep, run_sweep

    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
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


def _report(sub) -> None:
    parser = sub.add_parser("report", help="plots and a Markdown report from a sweep directory")
    parser.add_argument("directory", help="runs/<sweep> (runs as children) or results/<sweep> (runs under runs/)")
    parser.add_argument("--title")
    parser.add_argument("--out", help="copy each run's metrics and config into OUT/runs/ and write the report "
                        "there, so that it regenerates from OUT alone (e.g. --out results/<sweep>)")
    parser.set_defaults(run=lambda args: print(write_report_path(args)) or 0)


def write_report_path(args) -> str:
    from .report import keep_runs, write_report

    directory = keep_runs(args.directory, args.out) if args.out else args.directory
    return str(write_report(directory, args.title))


SUBCOMMANDS = [_demo, _data, _train, _sweep, _report]


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
