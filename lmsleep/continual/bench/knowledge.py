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
    wall_s       seconds per passage

Budgets (stated in the report): every fine-tuning system takes `--steps` Adam steps on all parameters, its
learning rate tuned per seed on 2 validation passages from a 5-point grid (the best accuracy whose
forgetting stays within --forgetting-budget); a sleep takes `--steps` seeding steps at the demo's settings
(chosen on the demo's passages, other people than these) plus 10 steps learning its kept dreams into the new
expert. The SEAL-style system and the sleeps dream with the same generator, trained by ReST-EM on 8 other
passages (their questions are its reward); no system sees a question about a test passage.
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import asdict, replace

from ... import validate
from ...tasks import batch, facts
from ..base import pretrained_base
from ..demo import BASE_STEPS, MODEL as DEMO_MODEL, SEEDING as DEMO_SEEDING, WORLD
from . import knowledge_systems as ks, runner

NAME = "knowledge"
HELP = ("knowledge incorporation (paper 2, Table 3): read a passage once, clear the context, answer closed-book; "
        "fine-tuning, restatements, SEAL-style and Sleep with its ablations (default: about 7 minutes)")
PRIMARY = "accuracy"
COLUMNS = ["accuracy", "transfer", "forgetting", "reading", "forgot_old", "writes_true", "writes_wrong", "wall_s"]
PERCENT = ("accuracy", "transfer", "forgetting", "reading", "forgot_old", "writes_true", "writes_wrong")

MODEL = {**DEMO_MODEL, "expert_pool": 24}  # one new expert per passage in the continued setting
LEVELS = (2, 4)
GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
SEEDING = {k: v for k, v in DEMO_SEEDING.items() if k != "steps"}
DREAMING = {"dreams": 8, "dream_length": 20, "keep_top": 2, "keep_random": 1, "rank": 4, "steps": 10, "lr": 1e-2,
            "generator_steps": 5}
GENERATOR_PASSAGES, VALIDATION_PASSAGES, PROBE_SIZE = 8, 2, 64
# Disjoint seed ranges: test, validation, generator-training and probe passages never coincide.
TEST, VALIDATION, TRAINING, PROBE = 1_000_000, 2_000_000, 3_000_000, 4_000_000


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


def _check(args) -> None:
    for name in ("trials", "passages", "steps", "base_steps", "generator_passages"):
        validate.positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    validate.number("--forgetting-budget", args.forgetting_budget, 0, 1)
    if args.passages > MODEL["expert_pool"]:
        raise ValueError(f"--passages {args.passages} exceeds the {MODEL['expert_pool']} experts a level holds "
                         "(one new expert per passage)")


def ablations(args) -> bool:
    return bool(args.ablations) if args.ablations is not None else args.passages == 1


def systems(args) -> list[str]:
    names = ["base", "in-context", *ks.SFT_SYSTEMS, "sleep (2 levels)", "sleep (4 levels)"]
    if ablations(args):
        names += [f"sleep − {v[3:]}" for v in ks.SLEEP_VARIANTS[1:]]
    return names


def units(args) -> int:
    _check(args)
    trials = 1 if args.passages > 1 else args.trials
    return VALIDATION_PASSAGES + len(LEVELS) + trials * (len(systems(args)) - 2)


def estimate(args) -> float:
    """Seconds per seed on 2 cores (bases cached), from timings of this benchmark at its default size with one
    thread on a busy 2-core machine (205 s per seed); training the two bases first adds about 3 minutes."""
    _check(args)
    scale = args.steps / 40
    sleeps = 2 + (4 if ablations(args) else 0)  # consolidations per passage (the ablations reuse some)
    per_passage = sleeps * 12.0 * scale + 3 * 1.0 * scale
    passages = args.passages if args.passages > 1 else args.trials
    tuning = VALIDATION_PASSAGES * (len(GRID) * 4 * 1.0 + 12.0) * scale
    return 20 + tuning + per_passage * passages


def _budget(args) -> ks.Budget:
    return ks.Budget(steps=args.steps, seeding=SEEDING, dreaming=DREAMING)


def _world(seed: int) -> dict:
    return facts.world(seed, 1, replace(WORLD, pool=2))


def _probe(seed: int) -> dict:
    options = replace(WORLD, pool=2, context=1, questions=1, ask_loss=0)
    return batch(facts.generate(options, PROBE_SIZE, PROBE + seed))


def tune(base, args, seed: int, probe: dict, reading_base: float, generator, tick) -> dict:
    """Each system's learning rate, from the same grid by the same rule: the best mean accuracy on validation
    passages whose mean forgetting stays within the budget (else the least forgetting). For the fine-tuning
    systems it is their Adam rate; for Sleep, the rate at which its dreams are learnt into the new expert
    (consolidated once per validation passage, then each rate tried on a copy)."""
    budget = _budget(args)
    validation = [_world(VALIDATION + 100 * seed + i) for i in range(VALIDATION_PASSAGES)]
    tried: dict[str, list[tuple[float, float]]] = {}
    for i, raw in enumerate(validation):
        for name, system in ks.SFT.items():
            for lr in GRID:
                model = copy.deepcopy(base)
                system(model, raw, lr, budget, seed * 7 + i, generator)
                tried.setdefault(f"{name} {lr}", []).append(_outcome(model, raw, probe, reading_base))
        consolidated = copy.deepcopy(base)
        new = ks.consolidate_passage(consolidated, raw, budget, seed * 7 + i)
        for lr in GRID:
            model = copy.deepcopy(consolidated)
            ks.learn_dreams(model, _same_expert(new, consolidated, model), raw, budget, seed * 7 + i, generator, lr=lr)
            tried.setdefault(f"sleep {lr}", []).append(_outcome(model, raw, probe, reading_base))
        tick()
    chosen = {}
    for name in (*ks.SFT_SYSTEMS, "sleep"):
        results = []
        for lr in GRID:
            outcomes = tried[f"{name} {lr}"]
            results.append((sum(o[0] for o in outcomes) / len(outcomes), sum(o[1] for o in outcomes) / len(outcomes), lr))
        within = [r for r in results if r[1] <= args.forgetting_budget]
        chosen[name] = max(within)[2] if within else min(results, key=lambda r: r[1])[2]
    return chosen


def _outcome(model, raw, probe, reading_base) -> tuple[float, float]:
    return ks.accuracy(model, raw), reading_base - ks.reading(model, probe)


def _same_expert(new, source, copy_):
    """The (module, slot) pairs of `new` (modules of `source`) found in its deep copy `copy_`."""
    modules = dict(source.named_modules())
    names = {id(module): name for name, module in modules.items()}
    copies = dict(copy_.named_modules())
    return [(copies[names[id(module)]], slot) for module, slot in new]


def run_seed(args, seed: int, tick) -> dict:
    _check(args)
    budget = _budget(args)
    bases, reports, generators = {}, {}, {}
    for levels in LEVELS:
        model, report = pretrained_base(WORLD, {**MODEL, "memory_levels": levels}, args.cache_dir, args.base_steps,
                                        progress=False)
        training = [_world(TRAINING + 100 * seed + i) for i in range(args.generator_passages)]
        bases[levels], reports[levels] = model, report
        generators[levels] = ks.train_generator(model, training, budget, seed)
        tick()
    base = bases[2]
    probe = _probe(seed)
    reading_base = {levels: ks.reading(bases[levels], probe) for levels in LEVELS}
    lrs = tune(base, args, seed, probe, reading_base[2], generators[2], tick)
    budget = replace(budget, dream_lr=lrs["sleep"])
    count = args.passages if args.passages > 1 else args.trials
    raws = [_world(TEST + 100 * seed + i) for i in range(count)]
    run = _continued if args.passages > 1 else _single
    per_system = run(args, seed, raws, bases, generators, probe, reading_base, lrs, budget, tick)
    return {"systems": per_system, "learning_rates": lrs,
            "bases": {str(levels): {k: reports[levels][k] for k in ("in_context", "closed_book", "chance", "cache")}
                      for levels in LEVELS},
            "generator_trained": {str(levels): generators[levels] is not None for levels in LEVELS}}


def _apply(name: str, model, raw, seed: int, lrs: dict, budget, generators, capture=None) -> None:
    """Run system `name` on one passage, in place."""
    if name in ks.SFT:
        ks.SFT[name](model, raw, lrs[name], budget, seed, generators[2])
    elif name.startswith("sleep ("):
        levels = int(name.split("(")[1].split()[0])
        ks.sleep(model, raw, budget, seed, generators[levels], "sleep", capture)
    else:
        ks.sleep(model, raw, budget, seed, generators[2], "no " + name.split("− ")[1])


def _single(args, seed, raws, bases, generators, probe, reading_base, lrs, budget, tick) -> dict:
    rows: dict[str, list[dict]] = {}

    def record(name, model, raw, base_acc, in_context, levels, seconds):
        acc = ks.accuracy(model, raw)
        reading = ks.reading(model, probe)
        rows.setdefault(name, []).append({
            "accuracy": acc, "transfer": _transfer(acc, base_acc, in_context), "reading": reading,
            "forgetting": reading_base[levels] - reading, "wall_s": seconds})

    for t, raw in enumerate(raws):
        base = bases[2]
        base_acc, in_context = ks.accuracy(base, raw), ks.accuracy(base, raw, in_context=True)
        record("base", base, raw, base_acc, in_context, 2, 0.0)
        writing = {name: ks.fidelity(ks.DATA[name](base, raw, budget, seed * 101 + t, generators[2]), raw)
                   for name in ("finetune+restatements", "seal")}
        rows.setdefault("in-context", []).append({"accuracy": in_context, "transfer": 1.0 if in_context > base_acc else math.nan,
                                                  "reading": reading_base[2], "forgetting": 0.0, "wall_s": 0.0})
        for name in systems(args)[2:]:
            if name == "sleep − dreaming":  # the sleep's model before its dreams: measured inside that sleep
                continue
            levels = 4 if name == "sleep (4 levels)" else 2
            model = copy.deepcopy(bases[levels])
            started = time.perf_counter()
            captured = {}

            def capture(m, started=started):
                captured["model"] = copy.deepcopy(m)
                captured["seconds"] = time.perf_counter() - started

            _apply(name, model, raw, seed * 101 + t, lrs, budget, generators,
                   capture if name == "sleep (2 levels)" and ablations(args) else None)
            seconds = time.perf_counter() - started
            record(name, model, raw, base_acc, in_context, levels, seconds)
            if name in writing:  # how faithful the base's own writing was (self-edit fidelity)
                rows[name][-1].update({f"writes_{k}": v for k, v in writing[name].items()})
            if "model" in captured:
                record("sleep − dreaming", captured["model"], raw, base_acc, in_context, 2, captured["seconds"])
            tick()
        if ablations(args):
            tick()  # "sleep − dreaming" was measured inside the sleep
    return {name: _mean(values) for name, values in rows.items()}


def _continued(args, seed, raws, bases, generators, probe, reading_base, lrs, budget, tick) -> dict:
    result = {}
    base_accs = [ks.accuracy(bases[2], raw) for raw in raws]
    in_context = [ks.accuracy(bases[2], raw, in_context=True) for raw in raws]
    base_acc, ceiling = sum(base_accs) / len(raws), sum(in_context) / len(raws)
    result["base"] = {"accuracy": base_acc, "transfer": 0.0, "reading": reading_base[2], "forgetting": 0.0}
    result["in-context"] = {"accuracy": ceiling, "transfer": 1.0, "reading": reading_base[2], "forgetting": 0.0}
    for name in systems(args)[2:]:
        levels = 4 if name == "sleep (4 levels)" else 2
        model = copy.deepcopy(bases[levels])
        started = time.perf_counter()
        just_learnt = []
        for t, raw in enumerate(raws):
            _apply(name, model, raw, seed * 101 + t, lrs, budget, generators)
            just_learnt.append(ks.accuracy(model, raw))
        final = [ks.accuracy(model, raw) for raw in raws]
        acc = sum(final) / len(final)
        reading = ks.reading(model, probe)
        result[name] = {"accuracy": acc, "transfer": _transfer(acc, base_acc, ceiling), "reading": reading,
                        "forgetting": reading_base[levels] - reading,
                        "forgot_old": sum(a - b for a, b in zip(just_learnt[:-1], final[:-1])) / max(1, len(raws) - 1),
                        "wall_s": (time.perf_counter() - started) / len(raws)}
        tick()
    return result


def _transfer(acc: float, base: float, in_context: float) -> float:
    return (acc - base) / (in_context - base) if in_context > base else math.nan


def _mean(values: list[dict]) -> dict:
    keys = values[0].keys()
    out = {}
    for key in keys:
        finite = [v[key] for v in values if not math.isnan(v[key])]
        out[key] = sum(finite) / len(finite) if finite else math.nan
    return out


def plot(summary: dict, path, per_seed: list[dict]) -> None:
    """Accuracy and forgetting side by side: systems are compared at matched forgetting."""
    runner.bar_plot(summary, ["accuracy", "forgetting"], path,
                    "knowledge: closed-book accuracy, and reading accuracy lost on other passages (mean ± std over seeds)")


def notes(summary: dict, per_seed: list[dict]) -> str:
    first = per_seed[0]
    bases = ", ".join(f"{levels} levels: in-context {b['in_context']:.0%}, closed-book {b['closed_book']:.0%}"
                      for levels, b in first["bases"].items())
    lrs = "; ".join(f"{name}: " + ", ".join(f"{r['learning_rates'][name]:g}" for r in per_seed)
                    for name in (*ks.SFT_SYSTEMS, "sleep"))
    return "\n".join([
        f"Bases (held-out people, one question each; chance 12.5%): {bases}.",
        f"Learning rates chosen per seed on validation passages: {lrs}.",
        f"Sleep: seeding {SEEDING} for the same number of steps; dreaming {DREAMING}; the sleep's rate above is the "
        "one its kept dreams are learnt into the new expert at (10 steps).",
    ])
