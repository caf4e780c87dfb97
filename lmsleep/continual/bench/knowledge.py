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
COLUMNS = ["accuracy", "transfer", "forgetting", "reading", "forgot_old", "writes_true", "writes_wrong", "cpu_s"]
PERCENT = ("accuracy", "transfer", "forgetting", "reading", "forgot_old", "writes_true", "writes_wrong")

MODEL = {**DEMO_MODEL, "expert_pool": 24}  # one new expert per passage in the continued setting
LEVELS = (2, 4)
GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
SEEDING = {k: v for k, v in DEMO_SEEDING.items() if k != "steps"}
DREAMING = {"dreams": 8, "dream_length": 20, "keep_top": 2, "keep_random": 1, "rank": 4, "steps": 10, "lr": 1e-2,
            "generator_steps": 5}
GENERATOR_PASSAGES, VALIDATION_PASSAGES, PROBE_SIZE = 8, 2, 64
# Disjoint seed ranges: test, validation, generator-training passages and the two probes never coincide
# (each range holds 100 passages for each of 10,000 seeds).
TEST, VALIDATION, TRAINING, PROBE, PROBE_VALIDATION = 1_000_000, 2_000_000, 3_000_000, 4_000_000, 5_000_000
MAX_SEED, MAX_PER_SEED = 10_000, 100


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
    for name in ("trials", "generator_passages"):
        if getattr(args, name) > MAX_PER_SEED - 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at most {MAX_PER_SEED - 1} (passages of one seed "
                             "are drawn from a range of 100), got {getattr(args, name)}")
    validate.number("--forgetting-budget", args.forgetting_budget, 0, 1)
    if args.passages > MODEL["expert_pool"]:
        raise ValueError(f"--passages {args.passages} exceeds the {MODEL['expert_pool']} experts a level holds "
                         "(one new expert per passage)")
    if args.passages > 1 and args.trials != 1:
        raise ValueError("--trials is for single-passage trials; with --passages P > 1 each seed takes one run of P "
                         "passages (use more seeds instead)")
    if max(getattr(args, "seeds", [0])) >= MAX_SEED:
        raise ValueError(f"seeds must be below {MAX_SEED} (each seed draws its passages from its own range)")


def ablations(args) -> bool:
    return bool(args.ablations) if args.ablations is not None else args.passages == 1


def variants() -> list[str]:
    """Sleep's ablations this model can run: with one base expert per level there is no other expert for the
    random-expert switch to route to, so that ablation would be the full sleep by construction."""
    return [v for v in ks.SLEEP_VARIANTS[1:] if v != "no random expert" or MODEL.get("level_experts", 1) > 1]


def systems(args) -> list[str]:
    names = ["base", "in-context", *ks.SFT_SYSTEMS, "sleep (2 levels)", "sleep (4 levels)"]
    if ablations(args):
        names += [f"sleep − {v[3:]}" for v in variants()]
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
    sleeps = 2 + (len(variants()) - 1 if ablations(args) else 0)  # consolidations per passage
    per_passage = sleeps * 12.0 * scale + 3 * 1.0 * scale
    passages = args.passages if args.passages > 1 else args.trials
    tuning = VALIDATION_PASSAGES * (len(GRID) * 4 * 1.0 + 12.0) * scale
    return 20 + tuning + per_passage * passages


def budget_of(args) -> ks.Budget:
    return ks.Budget(steps=args.steps, seeding=SEEDING, dreaming=DREAMING)


def world(seed: int) -> dict:
    """The passage (raw world) of passage seed `seed`: one new person (name pool 2)."""
    return facts.world(seed, 1, replace(WORLD, pool=2))


def probe(seed: int) -> dict:
    """64 other passages, one question each, asked in context: the reading skill an update may destroy."""
    options = replace(WORLD, pool=2, context=1, questions=1, ask_loss=0)
    return batch(facts.generate(options, PROBE_SIZE, seed))


def tune(base, args, seed: int, probe_: dict, reading_base: float, generator, tick) -> dict:
    """Each system's learning rate, from the same grid by the same rule: the best mean accuracy on validation
    passages whose mean forgetting (on the validation probe) stays within the budget, ties to less forgetting,
    then the smaller rate (none within: the least forgetting). For the fine-tuning systems it is their Adam
    rate; for Sleep, the rate at which its dreams are learnt into the new expert (consolidated once per
    validation passage, then each rate tried on a copy)."""
    budget = budget_of(args)
    validation = [world(VALIDATION + MAX_PER_SEED * seed + i) for i in range(VALIDATION_PASSAGES)]
    tried: dict[str, list[tuple[float, float]]] = {}
    for i, raw in enumerate(validation):
        for name, system in ks.SFT.items():
            for lr in GRID:
                model = copy.deepcopy(base)
                system(model, raw, lr, budget, seed * 7 + i, generator)
                tried.setdefault(f"{name} {lr}", []).append(_outcome(model, raw, probe_, reading_base))
        consolidated = copy.deepcopy(base)
        new = ks.consolidate_passage(consolidated, raw, budget, seed * 7 + i)
        for lr in GRID:
            model = copy.deepcopy(consolidated)
            ks.learn_dreams(model, _same_expert(new, consolidated, model), raw, budget, seed * 7 + i, generator, lr=lr)
            tried.setdefault(f"sleep {lr}", []).append(_outcome(model, raw, probe_, reading_base))
        tick()
    chosen = {}
    for name in (*ks.SFT_SYSTEMS, "sleep"):
        results = []
        for lr in GRID:
            outcomes = tried[f"{name} {lr}"]
            results.append((sum(o[0] for o in outcomes) / len(outcomes), sum(o[1] for o in outcomes) / len(outcomes), lr))
        within = [r for r in results if r[1] <= args.forgetting_budget]
        chosen[name] = (max(within, key=lambda r: (r[0], -r[1], -r[2])) if within else min(results, key=lambda r: r[1]))[2]
    return chosen


def _outcome(model, raw, probe_, reading_base) -> tuple[float, float]:
    return ks.accuracy(model, raw), reading_base - ks.reading(model, probe_)


def _same_expert(new, source, copy_):
    """The (module, slot) pairs of `new` (modules of `source`) found in its deep copy `copy_`."""
    modules = dict(source.named_modules())
    names = {id(module): name for name, module in modules.items()}
    copies = dict(copy_.named_modules())
    return [(copies[names[id(module)]], slot) for module, slot in new]


def prepare(args, seed: int, levels: tuple[int, ...] = LEVELS, tick=lambda: None) -> dict:
    """What every seed of the knowledge benchmarks starts from: the bases (cached), their dream generators
    (ReST-EM on training passages), the test probe and each base's reading on it, and the tuned rates."""
    budget = budget_of(args)
    bases, reports, generators = {}, {}, {}
    training = [world(TRAINING + MAX_PER_SEED * seed + i) for i in range(args.generator_passages)]
    for count in levels:
        bases[count], reports[count] = pretrained_base(WORLD, {**MODEL, "memory_levels": count}, args.cache_dir,
                                                       args.base_steps, progress=False)
        generators[count] = ks.train_generator(bases[count], training, budget, seed)
        tick()
    test_probe, validation_probe = probe(PROBE + seed), probe(PROBE_VALIDATION + seed)
    lrs = tune(bases[2], args, seed, validation_probe, ks.reading(bases[2], validation_probe), generators[2], tick)
    return {"bases": bases, "reports": reports, "generators": generators, "probe": test_probe,
            "reading": {count: ks.reading(bases[count], test_probe) for count in levels}, "lrs": lrs,
            "budget": replace(budget, dream_lr=lrs["sleep"])}


def run_seed(args, seed: int, tick) -> dict:
    _check(args)
    ready = prepare(args, seed, LEVELS, tick)
    count = args.passages if args.passages > 1 else args.trials
    raws = [world(TEST + MAX_PER_SEED * seed + i) for i in range(count)]
    run = _continued if args.passages > 1 else _single
    per_system = run(args, seed, raws, ready, tick)
    reports = ready["reports"]
    return {"systems": per_system, "learning_rates": ready["lrs"], "forgetting_budget": args.forgetting_budget,
            "bases": {str(levels): {k: reports[levels][k] for k in ("in_context", "closed_book", "chance", "cache")}
                      for levels in LEVELS},
            "generator_trained": {str(levels): ready["generators"][levels] is not None for levels in LEVELS}}


def _levels(name: str) -> int:
    return 4 if name == "sleep (4 levels)" else 2


def _apply(name: str, model, raw, seed: int, ready: dict, capture=None) -> None:
    """Run system `name` on one passage, in place."""
    budget, generators = ready["budget"], ready["generators"]
    if name in ks.SFT:
        ks.SFT[name](model, raw, ready["lrs"][name], budget, seed, generators[2])
    elif name.startswith("sleep ("):
        ks.sleep(model, raw, budget, seed, generators[_levels(name)], "sleep", capture)
    else:
        ks.sleep(model, raw, budget, seed, generators[2], "no " + name.split("− ")[1])


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
        reference = {levels: (ks.accuracy(bases[levels], raw), ks.accuracy(bases[levels], raw, in_context=True))
                     for levels in LEVELS}
        record("base", bases[2], raw, 2, 0.0)
        in_context = reference[2][1]
        rows.setdefault("in-context", []).append({"accuracy": in_context,
                                                  "transfer": 1.0 if in_context > reference[2][0] else math.nan,
                                                  "reading": reading_base[2], "forgetting": 0.0, "cpu_s": 0.0})
        writes = {name: ks.fidelity(ks.writing(name, bases[2], raw, ready["budget"], seed * 101 + t,
                                               ready["generators"][2]), raw)
                  for name in ("finetune+restatements", "seal")}
        for name in systems(args)[2:]:
            if name == "sleep − dreaming":  # the sleep's model before its dreams: measured inside that sleep
                continue
            levels = _levels(name)
            model = copy.deepcopy(bases[levels])
            started = time.process_time()
            captured = {}

            def capture(m, started=started):
                captured["seconds"] = time.process_time() - started
                captured["model"] = copy.deepcopy(m)

            _apply(name, model, raw, seed * 101 + t, ready,
                   capture if name == "sleep (2 levels)" and ablations(args) else None)
            seconds = time.process_time() - started
            record(name, model, raw, levels, seconds)
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
                 for levels in LEVELS}
    base_acc, ceiling = reference[2]
    result = {"base": {"accuracy": base_acc, "transfer": 0.0, "reading": reading_base[2], "forgetting": 0.0},
              "in-context": {"accuracy": ceiling, "transfer": 1.0, "reading": reading_base[2], "forgetting": 0.0}}
    for name in systems(args)[2:]:
        levels = _levels(name)
        model = copy.deepcopy(bases[levels])
        seconds, just_learnt = 0.0, []
        for t, raw in enumerate(raws):
            started = time.process_time()
            _apply(name, model, raw, seed * 101 + t, ready)
            seconds += time.process_time() - started
            just_learnt.append(ks.accuracy(model, raw))
        final = [ks.accuracy(model, raw) for raw in raws]
        acc = sum(final) / len(final)
        reading = ks.reading(model, probe_)
        result[name] = {"accuracy": acc, "transfer": _transfer(acc, *reference[levels]), "reading": reading,
                        "forgetting": reading_base[levels] - reading,
                        "forgot_old": sum(a - b for a, b in zip(just_learnt[:-1], final[:-1])) / max(1, len(raws) - 1),
                        "cpu_s": seconds / len(raws)}
        tick()
    return result


def _transfer(acc: float, base: float, in_context: float) -> float:
    return (acc - base) / (in_context - base) if in_context > base else math.nan


def mean_rows(values: list[dict]) -> dict:
    """The mean of each metric over a seed's passages (NaN where none is finite)."""
    out = {}
    for key in values[0]:
        finite = [v[key] for v in values if not math.isnan(v[key])]
        out[key] = sum(finite) / len(finite) if finite else math.nan
    return out


def plot(summary: dict, path, per_seed: list[dict]) -> None:
    """Accuracy and forgetting side by side: systems are compared at matched forgetting."""
    runner.bar_plot(summary, ["accuracy", "forgetting"], path,
                    "knowledge: closed-book accuracy, and reading accuracy lost on other passages (mean ± std over seeds)")


def _mean_of(summary, system, metric):
    return summary.get(system, {}).get(metric, {}).get("mean", math.nan)


def notes(summary: dict, per_seed: list[dict]) -> str:
    first = per_seed[0]
    budget = first.get("forgetting_budget", 0.10)
    bases = ", ".join(f"{levels} levels: in-context {b['in_context']:.0%}, closed-book {b['closed_book']:.0%}"
                      for levels, b in first["bases"].items())
    gate = all(b["in_context"] >= GATE for b in first["bases"].values())
    lrs = "; ".join(f"{name}: " + ", ".join(f"{r['learning_rates'][name]:g}" for r in per_seed)
                    for name in (*ks.SFT_SYSTEMS, "sleep"))
    over = [s for s in summary if _mean_of(summary, s, "forgetting") > budget]
    acc = {s: _mean_of(summary, s, "accuracy") for s in summary}
    sleep = acc.get("sleep (2 levels)", math.nan)
    lines = [
        f"Bases (held-out people, one question each; chance 12.5%): {bases}; gate (in-context ≥ {GATE:.0%}): "
        f"{'passed' if gate else 'FAILED'}. Every seed uses the same cached bases: the spread is over passages, "
        "generators and tuning.",
        f"Learning rates chosen per seed on validation passages: {lrs}.",
        f"Budgets: fine-tuning systems {SFT_NOTE}; Sleep: seeding {SEEDING} for the same number of steps, then 10 "
        f"steps learning its kept dreams into the new expert at the tuned sleep rate above; dreaming {DREAMING}. "
        "The ablations and the 4-level sleep reuse the 2-level sleep's rates (not tuned for them).",
        "The 4-level base differs from the 2-level one only in its number of levels: a sleep on one passage writes "
        "level 1 only, so the two rows compare bases, not the use of slower levels.",
        "Columns: accuracy = closed-book on the passage's 9 questions; forgetting = in-context reading lost on 64 "
        "other passages; transfer = (accuracy − base) / (in-context − base); writes = the base's own restatements / "
        "kept dreams: share of the passage's facts stated, share of stated facts that are wrong; cpu_s = CPU seconds "
        "per passage (one thread).",
    ]
    if over:
        lines.append(f"Over the forgetting budget ({budget:.0%}) on the test probe: {', '.join(over)}.")
    if not math.isnan(sleep):
        ft, seal = acc.get("finetune", math.nan), acc.get("seal", math.nan)
        lines.append(f"Verdicts (means): Sleep (2 levels) {sleep:.1%} vs fine-tuning {ft:.1%} "
                     f"({'beats' if sleep > ft else 'does not beat'}), vs SEAL-style {seal:.1%} "
                     f"({'beats' if sleep > seal else 'does not beat'}), vs fine-tuning on restatements "
                     f"{acc.get('finetune+restatements', math.nan):.1%}.")
        changes = {s: a - sleep for s, a in acc.items() if s.startswith("sleep − ")}
        if changes:
            worst = min(changes, key=changes.get)
            verdict = (f"removing {worst[8:]} hurts most" if changes[worst] < 0 else
                       "no ablation lowers the mean accuracy of the full sleep")
            lines.append("Ablations (accuracy without the part minus the full sleep's): " + ", ".join(
                f"without {s[8:]} {d:+.1%}" for s, d in changes.items()) + f"; {verdict}.")
    return "\n\n".join(lines)


SFT_NOTE = "take --steps Adam steps (default 40) on every parameter, the rate tuned on a 5-point grid"
GATE = 0.9


def bases(args) -> dict:
    """The world's pretrained bases (trained once, then loaded from the cache): {name: report}."""
    return {f"facts, {count} levels": pretrained_base(WORLD, {**MODEL, "memory_levels": count}, args.cache_dir,
                                                       args.base_steps, progress=True)[1] for count in LEVELS}
