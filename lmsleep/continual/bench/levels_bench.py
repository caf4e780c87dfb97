"""Benchmark `levels` (issue 13; spec: sleep-continual.md, "More consolidation levels help; raising the lowest
frequency hurts"): Sleep on the `sequential` task (same world, base, data and Sleep system) as the number
of memory levels (1..4) and the slowest level's period vary.

Periods (wake steps; `--wake` per language): level 1 is due once per language, each slower level half as
often (sequential_systems.periods_for); `--slowest` lists the factors the slowest level's period is multiplied by
(×1: the default schedule, ×2: the slowest level updates half as often). Every configuration uses the
same seeding learning rate (`--lr`, no tuning: the comparison is between schedules, not learning rates), so
sequential's --systems, --grid, --validation and --fisher-rows are not offered here.
"""
from __future__ import annotations

import argparse

from ... import validate
from . import sequential
from .sequential_report import peaks
from .sequential_systems import GRIDS, Sleep, periods_for
from .sequential_world import base

NAME = "levels"
HELP = "Sleep on the sequential languages task as the number of memory levels and the slowest period vary"
PRIMARY = "ACC"
COLUMNS = ["ACC", "forgetting", "BWT", "last", "sleep_steps", "wall_s"]
PERCENT = ("ACC", "forgetting", "BWT", "last")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sequential.add_world_arguments(parser)
    # A shorter sequence than sequential's default: 8 configurations, about 12 minutes per seed (estimate).
    parser.set_defaults(languages=3, steps=30)
    parser.add_argument("--levels", default="1,2,3,4", help="memory level counts to try (default 1,2,3,4)")
    parser.add_argument("--slowest", default="1,2", help="factors of the slowest level's period (default 1,2)")
    parser.add_argument("--lr", type=float, default=GRIDS["sleep"][0],
                        help=f"seeding learning rate of every configuration (default {GRIDS['sleep'][0]})")


def _ints(flag: str, text: str, low: int, high: int) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be a comma-separated list of integers, got {text!r}")
    if not values:
        raise ValueError(f"{flag} needs at least one value")
    for value in values:
        validate.integer(flag, value, low, high)
    return values


def configurations(args) -> list[tuple[str, int, list[int]]]:
    """(name, levels, periods) per configuration; one level has no slower level, so ×f only rescales it."""
    sequential.check_world(args)
    validate.positive_number("--lr", args.lr)
    out = []
    for levels in _ints("--levels", args.levels, 1, 4):
        for factor in _ints("--slowest", args.slowest, 1, 8):
            out.append((f"L{levels} slowest×{factor}", levels, periods_for(levels, args.wake, factor)))
    return out


def estimate(args) -> float:
    """Seconds per seed on 2 cores, one thread, once the base is cached (the base is sequential's: the runner
    adds its training the first time either runs)."""
    return sum(sequential.sequence_seconds(f"sleep-{levels}", args, args.languages, periods)
               for _, levels, periods in configurations(args))


def units(args) -> int:
    return len(configurations(args)) * args.languages


def run_seed(args, seed: int, tick) -> dict:
    configurations(args)  # the flags, before the base is loaded
    model, report = base(args)
    b = sequential.closed_book_base(model, args, seed)
    out = {"systems": {}, "R": {}, "periods": {}, "lr": args.lr, "gating": args.gating,
           "base": {"in_context": report["in_context"], "closed_book": report["closed_book"]}, "b": b}
    for name, levels, periods in configurations(args):
        system = Sleep(model, levels, periods, args.lr, args, seed)
        result = sequential.sequence(system, list(range(args.languages)), args, seed, tick)
        out["systems"][name] = {**sequential.summarise(result["R"], b), "wall_s": result["wall_s"],
                                **sequential.sleep_metrics(system)}
        out["R"][name], out["periods"][name] = result["R"], periods
    return out


def base_configs(args) -> dict:
    """The pretrained base a run loads (sequential's)."""
    return sequential.base_configs(args)


def bases(args) -> dict:
    return sequential.bases(args)


def plot(summary: dict, path, per_seed: list[dict]) -> None:
    sequential.plot(summary, path, per_seed, NAME)


def more_levels_help(summary: dict) -> tuple[bool, dict] | None:
    """Claim 'more levels help', on the best slowest-period factor of each level count (ACC, mean and sample
    std over seeds): it holds when ACC grows with the level count (monotone) and the last count beats the
    first by more than twice the largest std (resolved). None when fewer than two level counts were run."""
    by_levels: dict[int, list[tuple[float, float]]] = {}
    for name, stats in summary.items():
        by_levels.setdefault(int(name[1:].split()[0]), []).append((stats["ACC"]["mean"], stats["ACC"]["std"]))
    if len(by_levels) < 2:
        return None
    best = {k: max(v) for k, v in sorted(by_levels.items())}  # (mean, std) of the best period per count
    means = [m for m, _ in best.values()]
    numbers = {"best": best, "monotone": all(a <= b for a, b in zip(means, means[1:])),
               "resolved": means[-1] - means[0] > 2 * max(sd for _, sd in best.values())}
    return numbers["monotone"] and numbers["resolved"], numbers


def levels_sentence(holds: bool, n: dict) -> str:
    verdict = ("holds" if holds else "not resolved: the differences are within twice the seeds' std"
               if n["monotone"] else "does not hold (not monotone)")
    return (f"Claim 'more levels help': {verdict} here; best ACC per level count: "
            + ", ".join(f"{k}: {m:.1%} ± {sd:.1%}" for k, (m, sd) in n["best"].items()) + ".")


def notes(summary: dict, per_seed: list[dict]) -> str:
    base_report = per_seed[0]["base"]
    gating = per_seed[0].get("gating", "sum")  # seed files from before issue 18 ran "sum"
    lines = [f"Base: in-context accuracy on unseen languages {base_report['in_context']:.1%}, closed-book "
             f"{base_report['closed_book']:.1%}. Periods per configuration (wake steps): "
             + "; ".join(f"{k}: {v}" for k, v in per_seed[0]["periods"].items()) + "."]
    verdict = more_levels_help(summary)
    if verdict is not None:
        lines.append(levels_sentence(*verdict))
    learnt = peaks(per_seed)
    lines.append("Best accuracy reached on the earlier languages before the end (what there was to forget): "
                 + ", ".join(f"{k} {v:.1%}" for k, v in sorted(learnt.items())) + ".")
    if gating == "sum":
        lines.append(sequential.DIAGNOSIS)
    lines.append(settings_note(per_seed[0].get("lr", "—"), gating))
    return "\n\n".join(lines)


def settings_note(lr, gating: str = sequential.GATING) -> str:
    return (f"Budget: every configuration consolidates each book with the same `--steps` seeding steps, at the "
            f"same seeding learning rate {lr} (`--lr`; no tuning, no baselines: the comparison is between "
            f"schedules). {sequential.sleep_note(gating)} Periods as listed above. {sequential.data_note()}")
