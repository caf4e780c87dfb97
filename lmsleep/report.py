"""`lmsleep report`: turn a sweep directory into plots, a Markdown report and summary.json.

Two layouts are read:
    runs/<sweep>/<run>/           what `lmsleep sweep` writes: the runs are the folder's children
    results/<sweep>/runs/<run>/   a results folder kept in the repository: only each run's metrics.jsonl
                                  and config, so the report regenerates from the repository alone
Either way report.md, summary.json and the figures are written into the folder named on the command line.

Figures (PNG, beside report.md):
    curves.png      held-out accuracy vs training tokens, vs wall time and vs estimated FLOPs, per model/N
    difficulty.png  final accuracy per difficulty bucket (t, k or op count), per model/N
    passes.png      sleep models evaluated at N′ = 1..8 after training at N (final_eval_passes)
Every figure shows the mean over seeds and the spread: shaded bands (curves) or bars (difficulty,
passes) from the lowest to the highest seed; the legend gives each group's seed count.

Tables give mean ± std over seeds, std being the sample standard deviation (n − 1: `describe`, the one
summary both papers' reports use; paper 2's benchmark runner calls it too).
"""
from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

from .io import atomic_path, write_text
from .rundir import RunDirectory

RUNS_SUBDIR = "runs"  # results/<sweep>/runs/<run>/
METRIC = {"rule110": "exact"}  # other tasks: "answer" (several queries per example; per-answer accuracy)


def describe(values) -> dict:
    """{"mean", "std", "n", "values"} of the finite numbers `values` (e.g. one metric over seeds): the summary
    every report of both papers gives. std is the sample standard deviation (n − 1 in the denominator, as
    statistics.stdev), 0.0 for a single value."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("describe needs at least one value")
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def load_runs(sweep_dir: Path) -> list[dict]:
    runs = []
    for directory in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        run = RunDirectory(directory)
        config = run.config()
        if config is None or not run.metrics_path.exists():
            continue
        records = run.records()
        evals = [r for r in records if "eval" in r]
        if not evals:
            continue
        name = directory.name
        group = re.sub(r"-s\d+$", "", name)  # runs differing only in their seed suffix form a group
        runs.append({"name": name, "group": group, "config": config, "evals": evals,
                     "final": next((r["final_eval"] for r in records if "final_eval" in r), None),
                     "seed": config.get("seed", 0), "steps": config["steps"]})
    return runs


def metric_name(runs: list[dict]) -> str:
    tasks = {r["config"]["task"] for r in runs}
    return METRIC.get(tasks.pop(), "answer") if len(tasks) == 1 else "answer"


def _main_eval(record: dict) -> dict:
    return next(iter(record["eval"].values()))  # the first N evaluated: the model's own N


def summarise(runs: list[dict], metric: str) -> list[dict]:
    groups = defaultdict(list)
    for run in runs:
        groups[run["group"]].append(run)
    rows = []
    for group, members in sorted(groups.items()):
        finals = describe(_main_eval(r["evals"][-1])[metric] for r in members)
        last = [r["evals"][-1] for r in members]
        rows.append({
            "group": group, "seeds": len(members), "metric": metric,
            "mean": finals["mean"], "std": finals["std"], "values": finals["values"], "steps": max(r["step"] for r in last),
            "tokens": statistics.fmean(r["tokens"] for r in last),
            "wall_s": statistics.fmean(r["wall_s"] for r in last),
            "flops": statistics.fmean(r["flops"] for r in last),
            "complete": all(r["step"] == m["steps"] for r, m in zip(last, members)),
        })
    return rows


def plot(runs: list[dict], metric: str, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = defaultdict(list)
    for run in runs:
        groups[run["group"]].append(run)
    written = []

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for (group, members), color in zip(sorted(groups.items()), _colors(len(groups))):
        for ax, x_key, label in zip(axes, ("tokens", "wall_s", "flops"), ("training tokens", "wall time (s)", "estimated training FLOPs")):
            steps = sorted(set.intersection(*(set(e["step"] for e in r["evals"]) for r in members)))
            xs, mean, low, high = [], [], [], []
            for step in steps:
                points = [next(e for e in r["evals"] if e["step"] == step) for r in members]
                values = [_main_eval(p)[metric] for p in points]
                xs.append(statistics.fmean(p[x_key] for p in points))
                mean.append(statistics.fmean(values))
                low.append(min(values))
                high.append(max(values))
            ax.plot(xs, mean, color=color, label=f"{group} ({_seeds(len(members))})")
            ax.fill_between(xs, low, high, color=color, alpha=0.15)
            ax.set_xlabel(label)
            ax.set_ylabel(f"held-out {metric} accuracy")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Accuracy during training (mean over seeds, band = min..max)")
    fig.tight_layout()
    written.append(_save(fig, out / "curves.png"))

    if runs:
        per_group = {}
        for group, members in sorted(groups.items()):
            buckets = defaultdict(list)
            for r in members:
                for bucket, value in _main_eval(r["evals"][-1])["per_bucket"].items():
                    buckets[int(bucket)].append(value)
            per_group[f"{group} ({_seeds(len(members))})"] = buckets
        written.append(_spread_figure(per_group, "difficulty bucket (rule110: t, depo: k hops, math: operations)",
                                      "final per-answer accuracy", out / "difficulty.png"))

    sleepers = [r for r in runs if r["final"]]
    if sleepers:
        by_group = defaultdict(list)
        for r in sleepers:
            by_group[r["group"]].append(r)
        per_group = {}
        for group, members in sorted(by_group.items()):
            passes = defaultdict(list)
            for r in members:
                for key, result in r["final"].items():
                    passes[int(key[1:])].append(result[metric])  # keys are "N1", "N2", ...
            per_group[f"trained as {group} ({_seeds(len(members))})"] = passes
        written.append(_spread_figure(per_group, "passes N′ at evaluation", f"held-out {metric} accuracy",
                                      out / "passes.png"))
    return written


def _seeds(count: int) -> str:
    return f"{count} seed" if count == 1 else f"{count} seeds"


def _spread_figure(per_group: dict[str, dict[int, list[float]]], xlabel: str, ylabel: str, path: Path) -> str:
    """One line per group over an integer quantity (N′, a difficulty bucket): the mean over seeds at each
    value, with a bar from the lowest to the highest seed. Ticks sit at the values measured, since a
    fractional N′ or bucket does not exist. Groups are nudged apart sideways so that their bars stay
    readable where they overlap."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    step = min(0.08, 0.4 / max(len(per_group), 1))
    for index, ((label, points), color) in enumerate(zip(per_group.items(), _colors(len(per_group)))):
        xs = sorted(points)
        mean = [statistics.fmean(points[x]) for x in xs]
        below = [m - min(points[x]) for m, x in zip(mean, xs)]
        above = [max(points[x]) - m for m, x in zip(mean, xs)]
        shift = step * (index - (len(per_group) - 1) / 2)
        ax.errorbar([x + shift for x in xs], mean, yerr=[below, above], marker="o", capsize=3, color=color, label=label)
    ax.set_xticks(sorted({x for points in per_group.values() for x in points}))
    several = any(len(values) > 1 for points in per_group.values() for values in points.values())
    ax.set_title("mean over seeds; bars span min..max over seeds" if several else "one seed: no spread to show",
                 fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> str:
    """Write a figure as PNG atomically and close it; returns the file name."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path.name


def _bucket_table(runs: list[dict], buckets: list[int], key: str, title: str) -> list[str]:
    """A Markdown table of the last evaluation's per-bucket values (mean over seeds), one row per group."""
    groups = defaultdict(list)
    for r in runs:
        last = _main_eval(r["evals"][-1])
        if key in last:
            groups[r["group"]].append(last[key])
    if not groups or not buckets:
        return []
    lines = ["", title, "", "| run | " + " | ".join(str(b) for b in buckets) + " |", "| --- |" + " --- |" * len(buckets)]
    for group, per in sorted(groups.items()):
        cells = [[p[str(b)] for p in per if str(b) in p] for b in buckets]
        lines.append(f"| {group} | " + " | ".join(f"{statistics.fmean(c):.3f}" if c else "–" for c in cells) + " |")
    return lines


def _gain_table(runs: list[dict], buckets: list[int]) -> list[str]:
    """Per bucket, the accuracy of each `X-N{n}` group (n > 1) minus that of `X-N1`, paired by seed:
    mean ± sample std (describe) over the seeds both have (the gain of sleeping more, at equal training tokens)."""
    final = {(r["group"], r["seed"]): _main_eval(r["evals"][-1])["per_bucket"] for r in runs}
    rows = []
    for group in sorted({g for g, _ in final}):
        stem, _, passes = group.rpartition("-N")
        if not passes.isdigit() or int(passes) == 1 or not stem:
            continue
        seeds = sorted(seed for g, seed in final if g == group and (f"{stem}-N1", seed) in final)
        if not seeds:
            continue
        cells = []
        for b in buckets:
            gains = [final[group, s][str(b)] - final[f"{stem}-N1", s][str(b)]
                     for s in seeds if str(b) in final[group, s] and str(b) in final[f"{stem}-N1", s]]
            gain = describe(gains) if gains else None
            cells.append(f"{gain['mean']:+.3f} ± {gain['std']:.3f}" if gain else "–")
        rows.append(f"| {group} − {stem}-N1 | {len(seeds)} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["", "Gain over N = 1 per difficulty bucket (final per-answer accuracy, paired by seed, mean ± std):", "",
            "| runs | seeds | " + " | ".join(str(b) for b in buckets) + " |", "| --- | --- |" + " --- |" * len(buckets),
            *rows]


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def runs_directory(sweep_dir: Path) -> Path:
    """Where a sweep folder keeps its runs: `runs/` inside a results folder, else the folder itself."""
    nested = sweep_dir / RUNS_SUBDIR
    return nested if nested.is_dir() else sweep_dir



def keep_runs(sweep_dir: str | Path, results_dir: str | Path) -> Path:
    """Copy each run's metrics and config from a sweep's output (runs/<sweep>/<run>/) into
    results_dir/runs/<run>/, with the sweep file, so the report regenerates from results_dir alone."""
    sweep_dir, results_dir = Path(sweep_dir), Path(results_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory not found: {sweep_dir}")
    if sweep_dir.resolve() == results_dir.resolve():
        raise ValueError(f"--out must differ from the sweep directory {sweep_dir}")
    source = runs_directory(sweep_dir)
    runs = sorted(d for d in source.iterdir() if d.is_dir() and RunDirectory(d).metrics_path.is_file())
    if not runs:
        raise ValueError(f"{source} holds no run (no <run>/metrics.jsonl)")
    for run in runs:
        for name in RunDirectory.RESULT_FILES:  # metrics and config, never checkpoints or weights
            if (run / name).is_file():
                write_text(results_dir / RUNS_SUBDIR / run.name / name, (run / name).read_text())
    if (sweep_dir / "sweep.json").is_file():
        sweep = (sweep_dir / "sweep.json").read_text()
        target = results_dir / "sweep.json"
        if target.is_file() and target.read_text() != sweep:  # a folder combining sweeps keeps each file
            target = results_dir / f"sweep-{sweep_dir.name}.json"
        write_text(target, sweep)
    return results_dir


def write_report(sweep_dir: str | Path, title: str | None = None) -> Path:
    """Write report.md, summary.json and the figures into `sweep_dir` from the runs it holds (either
    layout, see the module docstring). Each file is replaced atomically, and summary.json depends only on
    the runs' files, so regenerating a committed results folder reproduces it byte for byte."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory not found: {sweep_dir}")
    runs = load_runs(runs_directory(sweep_dir))
    if not runs:
        raise ValueError(f"{sweep_dir} holds no run with evaluations yet (looked in {runs_directory(sweep_dir)})")
    metric = metric_name(runs)
    rows = summarise(runs, metric)
    figures = plot(runs, metric, sweep_dir)
    lines = [f"# {title or sweep_dir.name}", "",
             f"Held-out {metric} accuracy at the end of training (mean ± sample std over seeds; each value listed).", "",
             "| run | seeds | final accuracy | values | steps | tokens | wall (s) | est. FLOPs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        values = ", ".join(f"{v:.3f}" for v in row["values"])
        flag = "" if row["complete"] else " (unfinished)"
        lines.append(f"| {row['group']}{flag} | {row['seeds']} | {row['mean']:.3f} ± {row['std']:.3f} | {values} | "
                     f"{row['steps']} | {row['tokens']:.3g} | {row['wall_s']:.0f} | {row['flops']:.3g} |")
    buckets = sorted({int(b) for r in runs for b in _main_eval(r["evals"][-1])["per_bucket"]})
    lines += _bucket_table(runs, buckets, "per_bucket", "Final per-answer accuracy per difficulty bucket:")
    lines += _gain_table(runs, buckets)
    lines += _bucket_table(runs, buckets, "loss_per_bucket", "Final loss per difficulty bucket:")
    sleepers = [r for r in runs if r["final"]]
    if sleepers:
        passes = sorted({int(k[1:]) for r in sleepers for k in r["final"]})
        lines += ["", f"Evaluated at N′ passes after training ({metric} accuracy, mean over seeds):", "",
                  "| trained as | " + " | ".join(f"N′={n}" for n in passes) + " |", "| --- |" + " --- |" * len(passes)]
        groups = defaultdict(list)
        for r in sleepers:
            groups[r["group"]].append(r["final"])
        for group, finals in sorted(groups.items()):
            cells = [[f[f"N{n}"][metric] for f in finals if f"N{n}" in f] for n in passes]
            lines.append(f"| {group} | " + " | ".join(f"{statistics.fmean(c):.3f}" if c else "–" for c in cells) + " |")
    lines += [""] + [f"![{name}]({name})" for name in figures] + [""]
    report = sweep_dir / "report.md"
    write_text(report, "\n".join(lines))
    write_text(sweep_dir / "summary.json", json.dumps(rows, indent=2) + "\n")
    return report
