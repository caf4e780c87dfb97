"""`lmsleep continual bench efficiency`: compute time against accuracy on the knowledge benchmark (the paper:
"to reach Sleep's accuracy SFT needs 3.6–4.8× the wall-clock time").

For each test passage, every system is run at growing budgets and timed in CPU seconds of this process (one
thread: the work itself, whatever else the machine runs; evaluation excluded):

    finetune, finetune+restatements   1, 2, 4, …, --max-steps Adam steps on one model (the curve is read off
                                      along the way; restatements are sampled once, and their time counted)
    sleep (2 levels)                  a full sleep (seeding, then its dreams into the new expert) for each
                                      seeding budget in --sleep-steps, each run from the base

The target is the full sleep's accuracy at --target-steps seeding steps (the knowledge benchmark's 40; none when
the base already answers as well). Reported: seconds_to_target (the first budget whose accuracy reaches the
target; a passage whose system never does counts in `reached` as 0), accuracy_at_sleep_time and
forgetting_at_sleep_time (each system at the largest budget that took no longer than the sleep; the base when
none did), final_accuracy (at the largest budget) and cpu_s (the sleep's, or the whole curve's). Learning rates are
the knowledge benchmark's (tuned per seed on its validation passages under its forgetting budget).
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import replace

from ... import validate
from ..baselines import sft
from . import knowledge, knowledge_systems as ks, runner

NAME = "efficiency"
HELP = ("compute time to reach Sleep's accuracy on the knowledge benchmark, and the accuracy each system reaches in "
        "the sleep's time (default: about 6 minutes)")
PRIMARY = "accuracy_at_sleep_time"
COLUMNS = ["seconds_to_target", "reached", "accuracy_at_sleep_time", "forgetting_at_sleep_time", "final_accuracy",
           "cpu_s"]
PERCENT = ("reached", "accuracy_at_sleep_time", "forgetting_at_sleep_time", "final_accuracy")
SYSTEMS = ("finetune", "finetune+restatements")
SLEEP = "sleep (2 levels)"
TARGET_STEPS = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=1, help="test passages per seed (default 1)")
    parser.add_argument("--max-steps", type=int, default=256, help="largest fine-tuning budget (default 256 steps)")
    parser.add_argument("--sleep-steps", default="5,10,20,40", help="seeding budgets of the sleep (default 5,10,20,40)")
    parser.add_argument("--target-steps", type=int, default=TARGET_STEPS,
                        help=f"seeding steps of the sleep whose accuracy is the target (default {TARGET_STEPS}, the "
                             "knowledge benchmark's)")
    parser.add_argument("--forgetting-budget", type=float, default=0.10, help="as in the knowledge benchmark")
    parser.add_argument("--generator-passages", type=int, default=knowledge.GENERATOR_PASSAGES,
                        help="as in the knowledge benchmark")
    parser.add_argument("--base-steps", type=int, default=knowledge.BASE_STEPS, help="pretraining steps of the base")


def base_configs(args) -> dict:
    """The base a run loads (the runner trains it first, with progress, when it is not cached)."""
    from ..base import base_config

    return {"facts, 2 levels": base_config(knowledge.WORLD, {**knowledge.MODEL, "memory_levels": 2}, args.base_steps)}


def bases(args) -> dict:
    """The base (trained once, with progress, then loaded from the cache): {name: report}."""
    from .knowledge_setup import base_model

    return {"facts, 2 levels": base_model(2, args, progress=True)[1]}


def _sleep_steps(args) -> list[int]:
    return sorted(runner.int_list("--sleep-steps", args.sleep_steps, low=1))


def _check(args) -> None:
    for name in ("trials", "max_steps", "target_steps", "base_steps", "generator_passages"):
        validate.positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    validate.number("--forgetting-budget", args.forgetting_budget, 0, 1)
    _sleep_steps(args)


def units(args) -> int:
    _check(args)
    return 1 + args.trials * (len(SYSTEMS) + 1)


def estimate(args) -> float:
    """Seconds per seed (bases cached): the knowledge benchmark's tuning, then the curves."""
    _check(args)
    sleep = sum(_sleep_steps(args) + [args.target_steps]) * 0.3 + 4 * (len(_sleep_steps(args)) + 1)
    finetune = args.max_steps * (0.01 + 0.03)
    return 20 + knowledge.VALIDATION_PASSAGES * (len(knowledge.GRID) * 4 + 12) + args.trials * (sleep + finetune)


def _budgets(max_steps: int) -> list[int]:
    budgets, steps = [], 1
    while steps < max_steps:
        budgets.append(steps)
        steps *= 2
    return budgets + [max_steps]


def finetune_curve(system: str, base, raw, lr: float, budget: ks.Budget, seed: int, max_steps: int,
                   probe: dict) -> list[tuple]:
    """(steps, CPU seconds, accuracy, reading) at each budget, read off one fine-tuning run of max_steps (the
    time of making its rows, e.g. sampling restatements, included; evaluations excluded)."""
    model = copy.deepcopy(base)
    started = time.process_time()
    data = ks.DATA[system](model, raw, budget, seed)
    budgets, curve, clock = set(_budgets(max_steps)), [], {"spent": time.process_time() - started}
    clock["since"] = time.process_time()

    def on_step(step, model_):
        if step in budgets:
            clock["spent"] += time.process_time() - clock["since"]
            curve.append((step, clock["spent"], ks.accuracy(model_, raw), ks.reading(model_, probe)))
            clock["since"] = time.process_time()

    sft(model, data, steps=max_steps, lr=lr, seed=seed, on_step=on_step)
    return curve


def sleep_curve(base, raw, budget: ks.Budget, seed: int, generator, steps_list: list[int], probe: dict) -> list[tuple]:
    """(seeding steps, CPU seconds, accuracy, reading) of a full sleep from the base at each seeding budget."""
    curve = []
    for steps in steps_list:
        model = copy.deepcopy(base)
        started = time.process_time()
        ks.sleep(model, raw, replace(budget, steps=steps), seed, generator)
        curve.append((steps, time.process_time() - started, ks.accuracy(model, raw), ks.reading(model, probe)))
    return curve


def run_seed(args, seed: int, tick) -> dict:
    _check(args)
    kargs = argparse.Namespace(**{**vars(args), "steps": args.target_steps, "passages": 1, "ablations": 0})
    ready = knowledge.prepare(kargs, seed, levels=(2,))
    base, generator, probe, lrs = ready["bases"][2], ready["generators"][2], ready["probe"], ready["lrs"]
    reading_base = ready["reading"][2]
    tick()
    rows: dict[str, list[dict]] = {}
    curves: dict[str, list] = {}
    for t in range(args.trials):
        raw = knowledge.world(knowledge.TEST + knowledge.MAX_PER_SEED * seed + t)
        base_acc = ks.accuracy(base, raw)
        sleep_points = sleep_curve(base, raw, ready["budget"], seed * 101 + t, generator,
                                   sorted(set(_sleep_steps(args)) | {args.target_steps}), probe)
        target_point = next(p for p in sleep_points if p[0] == args.target_steps)
        sleep_seconds = target_point[1]
        # a target the base already meets says nothing about speed
        target = target_point[2] if target_point[2] > base_acc else math.nan
        tick()
        all_curves = {SLEEP: sleep_points}
        for system in SYSTEMS:
            all_curves[system] = finetune_curve(system, base, raw, lrs[system], ready["budget"], seed * 101 + t,
                                                args.max_steps, probe)
            tick()
        for system, curve in all_curves.items():
            reached = [seconds for _, seconds, acc, _ in curve if acc >= target]
            within = [(acc, reading) for _, seconds, acc, reading in curve if seconds <= sleep_seconds]
            at_time = within[-1] if within else (base_acc, reading_base)  # no step fits: the base itself
            if system == SLEEP:
                at_time = target_point[2:]
            rows.setdefault(system, []).append({
                "seconds_to_target": reached[0] if reached else math.nan,
                "reached": float(bool(reached)) if not math.isnan(target) else math.nan,
                "accuracy_at_sleep_time": at_time[0], "forgetting_at_sleep_time": reading_base - at_time[1],
                "final_accuracy": curve[-1][2], "cpu_s": sleep_seconds if system == SLEEP else curve[-1][1]})
            curves.setdefault(system, []).append(curve)
    return {"systems": {name: knowledge.mean_rows(values) for name, values in rows.items()}, "curves": curves,
            "learning_rates": lrs, "target_steps": args.target_steps}


def plot(summary: dict, path, per_seed: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colors = {SLEEP: "#d62728", "finetune": "#1f77b4", "finetune+restatements": "#2ca02c"}
    for system, color in colors.items():
        first = True
        for result in per_seed:
            for curve in result["curves"].get(system, []):
                xs, ys = [p[1] for p in curve], [p[2] for p in curve]
                ax.plot(xs, ys, marker="o", ms=3, color=color, alpha=0.6, label=system if first else None)
                first = False
    ax.set_xscale("log")
    ax.set_xlabel("CPU time (s, one thread)")
    ax.set_ylabel("closed-book accuracy on the passage")
    ax.set_title("efficiency: accuracy against CPU time (one line per seed × passage)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def notes(summary: dict, per_seed: list[dict]) -> str:
    lrs = "; ".join(f"{name}: " + ", ".join(f"{r['learning_rates'][name]:g}" for r in per_seed)
                    for name in (*SYSTEMS, "sleep"))
    return (f"Target: the full sleep's accuracy at {per_seed[0].get('target_steps', TARGET_STEPS)} seeding steps, per passage. Learning rates (per seed, "
            f"tuned as in the knowledge benchmark): {lrs}. seconds_to_target averages the passages that reached it; "
            "`reached` is the share that did.")
