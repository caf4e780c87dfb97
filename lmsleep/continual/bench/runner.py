"""The runner every paper-2 benchmark shares (issue 13): seeds, the time estimate said up front, one
progress bar, per-seed result files that survive a crash, mean ± std over seeds, a plot and a report.

A benchmark is a module exporting

    NAME, HELP                      its name on the command line and one line of help (a string literal:
                                    the command line reads it without importing the module)
    add_arguments(parser)           its own flags (sizes, systems); the runner adds --seeds, --out, --threads
    estimate(args) -> seconds       how long one seed takes on 2 cores, its bases cached (said before it starts)
    units(args) -> int              progress units per seed (the benchmark calls tick() once per unit)
    run_seed(args, seed, tick) -> dict   one seed: {"systems": {system: {metric: number}}, ...anything else}
    PRIMARY                         the metric the plot shows by default
    plot(summary, path)             optional: its own figure (default: a bar per system of PRIMARY)
    notes(summary, per_seed) -> str optional: markdown placed under the table (what was measured, verdicts)
    base_configs(args) -> {name: TrainConfig}   optional, with bases(args): the pretrained bases a run
                                    loads. The uncached ones are first-time work: their training time
                                    (continual.base.training_seconds) is part of the estimate, and
                                    bases(args) trains them, with progress, before the seeds start

Before any work: the flags are checked, and a missing optional dependency is said (the plot needs
matplotlib, the `plot` extra): the run then goes on without the plot, so the results are never lost to it.

Summary: mean ± std over seeds, std the sample standard deviation (n − 1; lmsleep.report.describe, the
summary both papers' reports use).

Files in OUT: seed-<s>.json per seed (with the seconds it took) (written atomically when the seed ends; a rerun skips seeds already
done with the same arguments), results.json (arguments, per-seed results, summary), <NAME>.png, report.md.
"""
from __future__ import annotations

import argparse
import json
import math
import importlib
import shlex
import sys
import time
from pathlib import Path

from ...io import write_text
from ...report import describe
from .. import base as base_cache

PLOT_EXTRA = "pip install 'lmsleep[plot]'"


def int_list(flag: str, text: str, low: int = 0) -> list[int]:
    """A comma-separated list of distinct integers ≥ low for `flag`, or a clear error naming it."""
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < low or len(set(values)) != len(values):
        raise ValueError(f"{flag} needs at least one integer, each ≥ {low} and none repeated, got {text!r}")
    return values


def seed_list(text: str) -> list[int]:
    """--seeds: a count ("3" = seeds 0, 1, 2) or a comma-separated list ("0,4,7")."""
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError(f"--seeds needs at least one seed, got {text!r}")
            return list(range(count))
        return int_list("--seeds", text)
    except ValueError as error:
        message = str(error) if str(error).startswith("--seeds") else f"--seeds must be a count or a list, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def add_common_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument("--seeds", type=seed_list, default=seed_list("3"),
                        help="how many seeds (0..S-1) or a list like 0,3,5 (default 3)")
    parser.add_argument("--out", default=default_out, help=f"output directory (default {default_out})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--cache-dir", default=None, help="where pretrained bases are cached (default ~/.cache/lmsleep)")


def identity(args: argparse.Namespace) -> dict:
    """The arguments that determine a seed's results (not where they go, not how many seeds)."""
    skip = {"seeds", "out", "threads", "bench_run", "continual_run", "continual_command", "command", "func",
            "bench_name", "cache_dir"}
    return {k: v for k, v in sorted(vars(args).items()) if k not in skip and not callable(v)}


def aggregate(per_seed: list[dict]) -> dict:
    """{system: {metric: {"mean", "std", "n", "values"}}} over seeds (describe: std the sample std, 0 for one
    seed); values that are not finite numbers (null, NaN) are left out, so n can be below the seed count."""
    systems: dict[str, dict[str, list[float]]] = {}
    for result in per_seed:
        for system, metrics in result["systems"].items():
            for metric, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):  # null: none
                    systems.setdefault(system, {}).setdefault(metric, []).append(float(value))
    return {system: {metric: describe(values) for metric, values in metrics.items()}
            for system, metrics in systems.items()}


def cell(stat: dict | None, percent: bool, seeds: int | None = None) -> str:
    """mean ± std (×100 when percent); ± — for one value; (n=k) when fewer seeds than run gave a finite value."""
    if stat is None:
        return "—"
    scale = 100 if percent else 1
    spread = f"{stat['std'] * scale:.1f}" if stat["n"] > 1 else "—"
    count = f" (n={stat['n']})" if seeds is not None and stat["n"] < seeds else ""
    return f"{stat['mean'] * scale:.1f} ± {spread}{count}"


def table(summary: dict, metrics: list[str], percent: set[str] = frozenset(), seeds: int | None = None) -> str:
    """A markdown table: one row per system, one column per metric, mean ± std (percent metrics ×100)."""
    lines = ["| system | " + " | ".join(metrics) + " |", "| --- |" + " --- |" * len(metrics)]
    for system, stats in summary.items():
        lines.append(f"| {system} | " + " | ".join(cell(stats.get(m), m in percent, seeds) for m in metrics) + " |")
    return "\n".join(lines)


def finite(value):
    """JSON has no NaN: non-finite numbers are written as null (recursively)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value) -> str:
    return json.dumps(finite(value), indent=1, allow_nan=False) + "\n"


def bar_plot(summary: dict, metrics: str | list[str], path: Path, title: str) -> None:
    """One panel per metric, one bar per system: the mean with its std over seeds as an error bar, seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    systems = [s for s in summary if any(m in summary[s] for m in metrics)]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(5.0, 0.75 * len(systems) + 2), 2.6 * len(metrics) + 1),
                             sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        shown = [i for i, s in enumerate(systems) if metric in summary[s]]
        ax.bar(shown, [summary[systems[i]][metric]["mean"] for i in shown],
               yerr=[summary[systems[i]][metric]["std"] for i in shown], capsize=3, color="#9ecae1", edgecolor="#3182bd")
        for i in shown:
            values = summary[systems[i]][metric]["values"]
            ax.scatter([i] * len(values), values, s=10, color="#08519c", zorder=3)
        ax.set_ylabel(metric)
    axes[-1, 0].set_xticks(range(len(systems)), systems, rotation=30, ha="right")
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cpu_name() -> str:
    """The CPU a result was computed on (speed and even results differ between machines): /proc/cpuinfo's
    model name with the core count, else what the platform says."""
    import os
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "cpu model", "hardware")):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def code_version() -> str:
    """Which code computed a result: the git commit of the checkout lmsleep runs from (with "+changes" when its
    files differ from it), else the package version."""
    import subprocess

    from ... import __version__

    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "lmsleep"], capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return __version__
    if commit.returncode != 0:
        return __version__
    return commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def missing_plot_dependency() -> str | None:
    """None when the plot can be drawn; else a one-line warning naming the extra that brings it."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        return (f"warning: matplotlib is not installed, so this run writes its results and report but no plot "
                f"({PLOT_EXTRA} to have it)")
    return None


def first_time(bench, args: argparse.Namespace) -> dict[str, float]:
    """{base name: estimated training seconds} of the pretrained bases this run loads that are not cached
    yet (the benchmark's base_configs; none when it does not say)."""
    configs = bench.base_configs(args) if hasattr(bench, "base_configs") else {}
    return {name: base_cache.training_seconds(cfg) for name, cfg in configs.items()
            if not base_cache.cached(cfg, args.cache_dir)}


def run(bench, args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Run `bench` for every seed of args.seeds (skipping seeds whose file in args.out matches these
    arguments), then write results.json, the plot and report.md. Returns the results. Said before the work
    starts: the estimate (first-time bases included) and a missing plot dependency (the run then skips the
    plot); uncached bases are trained first, with their own progress bar."""
    import torch
    from tqdm import tqdm

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    bench.units(args)  # checks the benchmark's flags before anything is written
    no_plot = missing_plot_dependency()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ident = identity(args)
    done, todo, seconds, codes, cpus = {}, [], {}, {}, {}
    code, cpu = code_version(), cpu_name()
    for seed in args.seeds:
        path = out / f"seed-{seed}.json"
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except json.JSONDecodeError:
                saved = None  # torn by a crash: run it again
            if saved is not None and saved.get("arguments") == ident:
                done[seed], seconds[seed] = saved["result"], saved.get("seconds", float("nan"))
                codes[seed], cpus[seed] = saved.get("code", "unknown"), saved.get("cpu", "unknown")
                if codes[seed] != code:
                    print(f"note: seed {seed} in {path} was computed by code {codes[seed]}, this is {code}; it is "
                          "reused (delete the file to recompute it)")
                continue
        todo.append(seed)
    each = bench.estimate(args)
    pending = first_time(bench, args) if todo else {}
    setup = sum(pending.values())
    first = (f", plus {_duration(setup)} the first time to train the {', '.join(pending)} base" if pending else "")
    print(f"lmsleep continual bench {bench.NAME}: {len(args.seeds)} seed(s), {len(done)} already in {out}; "
          f"about {_duration(setup + each * len(todo))} for the remaining {len(todo)} on 2 cores ({_duration(each)} "
          f"per seed{first})", flush=True)
    if no_plot:
        print(no_plot, file=sys.stderr, flush=True)
    if pending:
        print(f"first time: training the {', '.join(pending)} base (cached for later runs)", flush=True)
        bench.bases(args)
    started = time.perf_counter()
    with tqdm(total=bench.units(args) * len(todo), desc=f"bench {bench.NAME}", unit="step", dynamic_ncols=True) as bar:
        for seed in todo:
            began = time.perf_counter()
            result = bench.run_seed(args, seed, lambda n=1: bar.update(n))
            seconds[seed], codes[seed], cpus[seed] = round(time.perf_counter() - began, 1), code, cpu
            write_text(out / f"seed-{seed}.json", dumps(
                {"arguments": ident, "seed": seed, "seconds": seconds[seed], "code": code, "cpu": cpu,
                 "result": result}))
            done[seed] = result
    per_seed = [done[s] for s in args.seeds]
    summary = aggregate(per_seed)
    command = "lmsleep continual bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[3:]))
    results = {"benchmark": bench.NAME, "command": command, "arguments": ident, "seeds": list(args.seeds),
               "per_seed": per_seed, "summary": summary, "seconds_per_seed": [seconds[s] for s in args.seeds],
               "code_per_seed": [codes[s] for s in args.seeds], "cpu_per_seed": [cpus[s] for s in args.seeds],
               "wall_s": round(time.perf_counter() - started, 1)}
    write_text(out / "results.json", dumps(results))
    plot_path = out / f"{bench.NAME}.png"
    if no_plot:
        figure = f"No plot: matplotlib is not installed ({PLOT_EXTRA})."
    else:
        if hasattr(bench, "plot"):
            bench.plot(summary, plot_path, per_seed)
        else:
            bar_plot(summary, bench.PRIMARY, plot_path, f"{bench.NAME}: {bench.PRIMARY} (mean ± std over seeds)")
        figure = f"![{bench.NAME}]({plot_path.name})"
    metrics = getattr(bench, "COLUMNS", None) or sorted({m for stats in summary.values() for m in stats})
    report = [f"# Benchmark `{bench.NAME}`", "", bench.HELP, "", f"    {command}", "",
              f"Seeds: {', '.join(map(str, args.seeds))}. Mean ± sample std (n − 1) over seeds; percentages ×100.", "",
              table(summary, metrics, set(getattr(bench, "PERCENT", ())), len(args.seeds)), "", figure, ""]
    if hasattr(bench, "notes"):
        report += [bench.notes(summary, per_seed), ""]
    write_text(out / "report.md", "\n".join(report))
    print(f"results: {out / 'results.json'}, " + ("" if no_plot else f"plot: {plot_path}, ") + f"report: {out / 'report.md'}")
    return results


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
