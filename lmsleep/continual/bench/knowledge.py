"""`lmsleep continual bench knowledge`: knowledge incorporation (the paper's Table 3) on the `facts` world.

A passage about a person the base has never seen (name pool 2) is read once; the context is cleared; the
model answers questions about it closed-book (every fact, every phrasing). Systems and ablations:
knowledge_systems.py. Two settings:

    single passage (default)   every trial starts from the base: --trials passages per seed
    continued (--passages P)   one model takes P passages one after another; then every passage is asked

Measured per system (mean over the seed's trials, then mean ± std over seeds):
    accuracy     closed-book answer accuracy on the passages' questions (chance 1/8)
    transfer     (accuracy − base) / (in-context − base): the share of what the base reads in context that
                 the system kept without it (in-context reading is the teacher's ceiling)
    reading      other knowledge: in-context accuracy on 64 other passages (the base's skill)
    forgetting   reading of the base − reading after the update (points lost)
    forgot_old   continued setting: accuracy on a passage right after it was learnt − at the end
    writes_true / writes_wrong   self-edit fidelity of the base's own writing (restatements; kept dreams):
                 the share of the passage's facts it states, the share of stated facts that are wrong
    cpu_s        CPU seconds of this process per passage (one thread: the work, whatever else the machine runs)

Budgets (stated in the report): every fine-tuning system takes `--steps` Adam steps on all parameters, its
learning rate tuned per seed on 2 validation passages from a 5-point grid (the best accuracy whose
forgetting stays within --forgetting-budget); a sleep takes `--steps` seeding steps at the demo's settings
(chosen on the demo's passages, other people than these) plus 10 steps learning its kept dreams into the new
expert (40 + 10 steps; the rate of those 10 is tuned like the others). Forgetting is tuned on one probe of
other passages and reported on another. The SEAL-style system and the sleeps dream with the same generator, trained by ReST-EM on 8 other
passages (their questions are its reward); no system sees a question about a test passage.
"""
from __future__ import annotations

import argparse
import copy
import math
import time

from ... import validate
from ..base import base_config
from .knowledge_setup import (BASE_STEPS, GENERATOR_PASSAGES, GRID, LEVELS, MAX_PER_SEED, MAX_SEED, MODEL,
                              PROBE, PROBE_VALIDATION, TEST, TRAINING, VALIDATION, VALIDATION_PASSAGES,
                              WORLD, base_model, passages, prepare, probe, world)
from . import knowledge_systems as ks
from .knowledge_report import GATE, notes, plot  # noqa: F401 (the benchmark interface)

NAME = "knowledge"
HELP = ("knowledge incorporation (paper 2, Table 3): read a passage once, clear the context, answer closed-book; "
        "fine-tuning, restatements, SEAL-style and Sleep with its ablations (default: about 7 minutes)")
PRIMARY = "accuracy"
COLUMNS = ["accuracy", "transfer", "forgetting", "reading", "forgot_old", "writes_true", "writes_wrong", "cpu_s"]
PERCENT = ("accuracy", "transfer", "forgetting", "reading", "forgot_old", "writes_true", "writes_wrong")
__all__ = ["GRID", "MODEL", "PROBE", "PROBE_VALIDATION", "TEST", "TRAINING", "VALIDATION", "MAX_SEED", "MAX_PER_SEED",
           "WORLD", "world", "probe", "prepare"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=1, help="single-passage setting: passages per seed (default 1)")
    parser.add_argument("--passages", type=int, default=1,
                        help="1: single-passage trials; P > 1: the continued setting, P passages in a row (e.g. 20)")
    parser.add_argument("--steps", type=int, default=40, help="update steps per passage for every system (default 40)")
    parser.add_argument("--ablations", type=int, choices=(0, 1), default=None,
                        help="run Sleep's ablations (default: 1 for single passages, 0 for the continued setting)")
    parser.add_argument("--forgetting-budget", type=float, default=0.10,
                        help="most reading accuracy a tuned learning rate may cost on validation passages (default 0.10)")
    parser.add_argument("--generator-passages", type=int, default=GENERATOR_PASSAGES,
                        help=f"other passages the dream generator is trained on by ReST-EM (default {GENERATOR_PASSAGES})")
    parser.add_argument("--base-steps", type=int, default=BASE_STEPS, help="pretraining steps of the bases")
    parser.add_argument("--systems", default=None,
                        help="comma-separated subset of the systems to run (default: all; base and in-context always)")
    parser.add_argument("--upward", type=int, default=0,
                        help="upward consolidation: level 1's period in passages (each passage read is a wake step; "
                             "every UPWARD passages level 1 consolidates its experts into one of level 2); 0: off")


def _check(args) -> None:
    for name in ("trials", "passages", "steps", "base_steps", "generator_passages"):
        validate.positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    validate.non_negative_int("--upward", args.upward)
    systems(args)  # names --systems it does not know
    for name in ("trials", "generator_passages"):
        if getattr(args, name) > MAX_PER_SEED - 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at most {MAX_PER_SEED - 1} (passages of one seed "
                             "are drawn from a range of 100), got {getattr(args, name)}")
    validate.number("--forgetting-budget", args.forgetting_budget, 0, 1)
    if args.passages > 1 and args.trials != 1:
        raise ValueError("--trials is for single-passage trials; with --passages P > 1 each seed takes one run of P "
                         "passages (use more seeds instead)")
    if max(getattr(args, "seeds", [0])) >= MAX_SEED:
        raise ValueError(f"seeds must be below {MAX_SEED} (each seed draws its passages from its own range)")


def ablations(args) -> bool:
    return bool(args.ablations) if args.ablations is not None else args.passages == 1


def variants() -> list[str]:
    """Sleep's ablations (every one a LearnerConfig switch; the random expert takes the low-rank pool too, so
    it is an ablation with one base expert per level)."""
    return list(ks.SLEEP_VARIANTS[1:])


def all_systems(args) -> list[str]:
    names = ["base", "in-context", *ks.SFT_SYSTEMS, "sleep (2 levels)", "sleep (4 levels)"]
    if ablations(args):
        names += [f"sleep − {v[3:]}" for v in variants()]
    elif args.passages > 1:
        names.append("sleep − off path")  # the always-on experts of before: what the gates change over many passages
    return names


def levels_of(args) -> tuple[int, ...]:
    """The bases this run needs: 2 levels always (tuning uses it), 4 when its sleep runs."""
    return LEVELS if "sleep (4 levels)" in systems(args) else (2,)


def systems(args) -> list[str]:
    """The systems this run measures (--systems picks some; base and in-context are always reported)."""
    names = all_systems(args)
    chosen = getattr(args, "systems", None)
    if not chosen:
        return names
    picked = [name.strip() for name in chosen.split(",") if name.strip()]
    unknown = [name for name in picked if name not in names]
    if unknown or not picked:
        raise ValueError(f"--systems names unknown systems {unknown or picked!r}; choose from {', '.join(names[2:])}")
    if "sleep − dreaming" in picked and "sleep (2 levels)" not in picked:
        raise ValueError("--systems: 'sleep − dreaming' is measured inside 'sleep (2 levels)'; pick both")
    return names[:2] + [name for name in names[2:] if name in picked]


def units(args) -> int:
    _check(args)
    trials = 1 if args.passages > 1 else args.trials
    per_system = args.passages if args.passages > 1 else trials  # the continued setting ticks per passage
    return VALIDATION_PASSAGES + len(levels_of(args)) + per_system * (len(systems(args)) - 2)


def estimate(args) -> float:
    """Seconds per seed with one thread per seed (bases cached): per passage, a sleep system about 16 s (its
    seeding with unrelated and closed-book replay, then its dreams), SEAL-style 3 s, fine-tuning 1 s; tuning
    on the validation passages and the dream generators' ReST-EM first (measured on the 2-core development
    machine, AMD EPYC, under load). Training a base the first time adds about 1.5 minutes."""
    _check(args)
    scale = args.steps / 40
    cost = {"finetune": 1.0, "finetune+restatements": 1.5, "seal": 3.0}
    per_passage = sum(cost.get(name, 16.0) for name in systems(args)[2:] if name != "sleep − dreaming") * scale
    count = args.passages if args.passages > 1 else args.trials
    tuning = VALIDATION_PASSAGES * (len(GRID) * 5.5 + 16.0) * scale
    generators = len(levels_of(args)) * args.generator_passages * 4.0
    return 20 + generators + tuning + per_passage * count


def run_seed(args, seed: int, tick) -> dict:
    _check(args)
    ready = prepare(args, seed, levels_of(args), tick)
    count = args.passages if args.passages > 1 else args.trials
    raws = passages(TEST, seed, count)
    run = _continued if args.passages > 1 else _single
    per_system = run(args, seed, raws, ready, tick)
    reports = ready["reports"]
    return {"systems": per_system, "learning_rates": ready["lrs"], "forgetting_budget": args.forgetting_budget,
            "bases": {str(levels): {k: reports[levels][k] for k in ("in_context", "closed_book", "chance", "cache")}
                      for levels in ready["bases"]},
            "generator_trained": {str(levels): ready["generators"][levels] is not None for levels in ready["bases"]}}


def _levels(name: str) -> int:
    return 4 if name == "sleep (4 levels)" else 2


def make_system(name: str, seed: int, ready: dict):
    """System `name` on a copy of its base: something with .model and .learn(raw, seed)."""
    budget, generators, bases = ready["budget"], ready["generators"], ready["bases"]
    if name in ks.SFT_SYSTEMS:
        return ks.system(name, bases[2], ready["lrs"][name], budget, seed, generators[2])
    levels = _levels(name)
    variant = "sleep" if name.startswith("sleep (") else "no " + name.split("− ")[1]
    return ks.sleeper(bases[levels], budget, seed, generators[levels], variant, levels=levels)


def _writes(name: str, raw: dict, ready: dict, seed: int) -> dict:
    """Self-edit fidelity of the base's own writing for `raw`: its restatements, or the dreams a sleep keeps."""
    base, budget = ready["bases"][2], ready["budget"]
    if name == "finetune+restatements":
        return ks.fidelity(ks.restatement_data(base, raw, budget, seed), raw)
    return ks.fidelity(ks.kept_dreams(base, raw, budget, seed, ready["generators"][2]), raw)


def _single(args, seed, raws, ready, tick) -> dict:
    rows: dict[str, list[dict]] = {}
    bases, probe_, reading_base = ready["bases"], ready["probe"], ready["reading"]

    def record(name, model, raw, levels, seconds):
        acc = ks.accuracy(model, raw)
        reading = ks.reading(model, probe_)
        base_acc, in_context = reference[levels]
        rows.setdefault(name, []).append({
            "accuracy": acc, "transfer": _transfer(acc, base_acc, in_context), "reading": reading,
            "forgetting": reading_base[levels] - reading, "cpu_s": seconds})

    for t, raw in enumerate(raws):
        trial = seed * 101 + t
        reference = {levels: (ks.accuracy(bases[levels], raw), ks.accuracy(bases[levels], raw, in_context=True))
                     for levels in ready["bases"]}
        record("base", bases[2], raw, 2, 0.0)
        in_context = reference[2][1]
        rows.setdefault("in-context", []).append({"accuracy": in_context,
                                                  "transfer": 1.0 if in_context > reference[2][0] else math.nan,
                                                  "reading": reading_base[2], "forgetting": 0.0, "cpu_s": 0.0})
        writes = {name: _writes(name, raw, ready, trial) for name in ("finetune+restatements", "seal")}
        for name in systems(args)[2:]:
            if name == "sleep − dreaming":  # the sleep's model before its dreams: measured inside that sleep
                continue
            started = time.process_time()
            system = make_system(name, trial, ready)
            captured = {}

            def capture(m, started=started):
                captured["seconds"] = time.process_time() - started
                captured["model"] = copy.deepcopy(m)

            if name == "sleep (2 levels)" and ablations(args):
                system.learn(raw, trial, after_consolidation=capture)
            else:
                system.learn(raw, trial)
            record(name, system.model, raw, _levels(name), time.process_time() - started)
            if name in writes:  # how faithful the base's own writing was (self-edit fidelity)
                rows[name][-1].update({f"writes_{k}": v for k, v in writes[name].items()})
            if "model" in captured:
                record("sleep − dreaming", captured["model"], raw, 2, captured["seconds"])
            tick()
        if ablations(args):
            tick()  # "sleep − dreaming" was measured inside the sleep
    return {name: mean_rows(values) for name, values in rows.items()}


def _continued(args, seed, raws, ready, tick) -> dict:
    bases, probe_, reading_base = ready["bases"], ready["probe"], ready["reading"]
    reference = {levels: (sum(ks.accuracy(bases[levels], raw) for raw in raws) / len(raws),
                          sum(ks.accuracy(bases[levels], raw, in_context=True) for raw in raws) / len(raws))
                 for levels in ready["bases"]}
    base_acc, ceiling = reference[2]
    result = {"base": {"accuracy": base_acc, "transfer": 0.0, "reading": reading_base[2], "forgetting": 0.0},
              "in-context": {"accuracy": ceiling, "transfer": 1.0, "reading": reading_base[2], "forgetting": 0.0}}
    for name in systems(args)[2:]:
        levels = _levels(name)
        system = make_system(name, seed, ready)
        seconds, just_learnt = 0.0, []
        for t, raw in enumerate(raws):
            started = time.process_time()
            system.learn(raw, seed * 101 + t)
            seconds += time.process_time() - started
            just_learnt.append(ks.accuracy(system.model, raw))
            tick()
        final = [ks.accuracy(system.model, raw) for raw in raws]
        acc = sum(final) / len(final)
        reading = ks.reading(system.model, probe_)
        result[name] = {"accuracy": acc, "transfer": _transfer(acc, *reference[levels]), "reading": reading,
                        "forgetting": reading_base[levels] - reading,
                        "forgot_old": sum(a - b for a, b in zip(just_learnt[:-1], final[:-1])) / max(1, len(raws) - 1),
                        "cpu_s": seconds / len(raws), **_memory(system)}
    return result


def _memory(system) -> dict:
    """A sleep's memory at the end: parameters (constant: static pools), experts in use, merges made."""
    if not isinstance(system, ks.Sleeper) or not system.learner.config.consolidation:
        return {}
    from ..levels import level_modules

    in_use = [len(level_modules(system.model, level)[0].active_slots()) for level in range(system.learner.levels)]
    sleeps = [sleep for r in system.records for sleep in [r.get("consolidation"), *r.get("level sleeps", [])] if sleep]
    merges = sum(1 for sleep in sleeps if sleep.get("made_room"))  # a full level merged before it received one
    return {"experts_in_use": float(sum(in_use)), "merges": float(merges),
            "parameters": float(sum(p.numel() for p in system.model.parameters()))}


def _transfer(acc: float, base: float, in_context: float) -> float:
    return (acc - base) / (in_context - base) if in_context > base else math.nan


def mean_rows(values: list[dict]) -> dict:
    """The mean of each metric over a seed's passages (NaN where none is finite)."""
    out = {}
    for key in values[0]:
        finite = [v[key] for v in values if not math.isnan(v[key])]
        out[key] = sum(finite) / len(finite) if finite else math.nan
    return out


def base_configs(args) -> dict:
    """The bases a run loads (the runner trains them first, with progress, when they are not cached)."""
    _check(args)
    return {f"facts, {count} levels": base_config(WORLD, {**MODEL, "memory_levels": count}, args.base_steps)
            for count in levels_of(args)}


def bases(args) -> dict:
    """The world's pretrained bases (trained once, then loaded from the cache): {name: report}."""
    return {f"facts, {count} levels": base_model(count, args, progress=True)[1] for count in LEVELS}
