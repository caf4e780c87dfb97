"""Benchmark `sequential` (issue 13; spec: sleep-continual.md, the two-language and class-incremental
studies): invented languages learned one after another, asked closed-book after each.

World (sequential_world): small named languages; a 1-level base pretrained to translate from a book in
context, its in-context accuracy on unseen languages the gate of every result. Then T languages 0..T−1
(`--languages`, alias `--tasks`) are learned in order; after each, every language's closed-book accuracy
(book replaced by padding) fills a row of R, and continual.metrics gives ACC, BWT, FWT and forgetting
(b_j = the base's closed-book accuracy on language j).

Accuracy = fraction of the translation's syllables predicted right (teacher-forced; the closing "." is
not counted). Systems (sequential_systems): finetune, replay, ewc, in-context and sleep-k (the
ContinualLearner with k memory levels, through its public API). Every system gets `--steps` update steps
on each new language (Adam steps of fine-tuning, or the seeding steps that consolidate the book); Sleep's
upward consolidations are extra steps (reported as "sleep_steps" and wall time). Each system's learning
rate is chosen from a grid of the same size (`--grid`) by ACC on a validation sequence of other languages
(`--validation` of 100, 101).

Data: the world has 48 sentences; each language's are shuffled by (seed, language) and cut into `--test`
test sentences and `--train` training sentences, so no test row is ever trained on (`split`).

Default (`--seeds 3`): T = 4, 30 steps, grid 2, 1 validation language, 32 training and 16 test sentences
per language; the runner prints the estimate (the base, trained once, included the first time). Larger:
`--tasks 8 --steps 120 --grid 3 --validation 2` (--train + --test cannot exceed the world's 48 sentences).
"""
from __future__ import annotations

import argparse
import time

import torch

from ... import validate
from ...layers.levels import GATINGS
from ...model import SleepLM
from .. import metrics
from .sequential_report import DIAGNOSIS, forgetting_sentence, halves_forgetting, peak, peaks, plot  # noqa: F401
from .sequential_report import reaches_replay, replay_sentence
from . import sequential_systems
from .sequential_systems import EWC_LAMBDA, GRIDS, SYSTEMS, WAKE_LR, InContext, Sleep, grid, make_system, periods_for
from .sequential_world import BASE_STEPS, GATE, GATING, VALIDATION, accuracy, base, base_config, language_sets, space
from .sequential_world import split

NAME = "sequential"
HELP = "invented languages learned one after another, asked closed-book: R[i, j], ACC, BWT, FWT, forgetting"
PRIMARY = "ACC"
COLUMNS = ["ACC", "BWT", "FWT", "forgetting", "last", "wall_s"]
PERCENT = ("ACC", "BWT", "FWT", "forgetting", "last")
MAX_LANGUAGES = 8  # test languages 0..7 stay clear of the validation (100, 101), gate and pretraining ones


# ----- one sequence -----

def sequence(system, langs: list[int], args, seed: int, tick=lambda n=1: None) -> dict:
    """Learn `langs` in order; R[i][j] after each; test sentences are never training sentences (split)."""
    sets = {j: language_sets(j, seed, args.train, args.test) for j in langs}
    if isinstance(system, InContext):
        system.books = {j: sets[j]["test_in_context"] for j in langs}
    R = []
    started = time.perf_counter()
    for i in langs:
        system.learn(i, sets[i]["train"] if not isinstance(system, Sleep) else sets[i])
        R.append([system.accuracy(j, sets[j]["closed"], sets[j]["test_in_context"]) for j in langs])
        tick()
    return {"R": R, "wall_s": round(time.perf_counter() - started, 1)}


def closed_book_base(model: SleepLM, args, seed: int) -> list[float]:
    """b_j: the base's closed-book accuracy on language j's test sentences (for FWT)."""
    return [accuracy(model, language_sets(j, seed, args.train, args.test)["closed"]) for j in range(args.languages)]


def summarise(R: list[list[float]], b: list[float]) -> dict:
    return {"ACC": metrics.accuracy(R), "BWT": metrics.backward_transfer(R), "FWT": metrics.forward_transfer(R, b),
            "forgetting": metrics.forgetting(R), "last": R[-1][-1]}


def sleep_metrics(system: Sleep) -> dict:
    """What a Sleep system's book consolidations did: the share of tokens its new experts open on, on the
    book's content and on unrelated replay (mean over books)."""
    out = {"sleep_steps": system.sleep_steps}
    for key in ("opens_on_content", "opens_on_unrelated"):
        values = [r[key] for r in system.records if r.get(key) is not None]
        out[key] = sum(values) / len(values) if values else float("nan")
    return out


def validation(args) -> list[int]:
    return list(VALIDATION[: args.validation])


def tune(name: str, base_model: SleepLM, args, seed: int, periods=None, tick=lambda n=1: None) -> tuple[float, dict]:
    """The grid point with the best ACC on the validation sequence, and every point's ACC."""
    scores = {}
    for lr in grid(name, args.grid):
        R = sequence(make_system(name, base_model, lr, args, seed, periods), validation(args), args, seed)["R"]
        scores[lr] = metrics.accuracy(R)
        tick(len(validation(args)))
    return max(scores, key=scores.get), scores


def run_system(name: str, base_model: SleepLM, args, seed: int, b: list[float], periods=None, tick=lambda n=1: None) -> dict:
    torch.manual_seed(seed)
    lr, scores = tune(name, base_model, args, seed, periods, tick)
    system = make_system(name, base_model, lr, args, seed, periods)
    out = sequence(system, list(range(args.languages)), args, seed, tick)
    result = {**summarise(out["R"], b), "lr": lr, "wall_s": out["wall_s"], "update_steps": system.update_steps}
    if isinstance(system, Sleep):
        result.update(sleep_metrics(system))
    return {"metrics": result, "R": out["R"], "tuning": {str(k): v for k, v in scores.items()}}


# ----- the benchmark interface -----

def add_world_arguments(parser: argparse.ArgumentParser) -> None:
    """The sequence, data, model and budget flags (shared with the `levels` benchmark)."""
    parser.add_argument("--languages", "--tasks", dest="languages", type=int, default=4,
                        help=f"T, languages learned in order (default 4, 2..{MAX_LANGUAGES})")
    parser.add_argument("--steps", type=int, default=30, help="update steps per language for every system (default 30)")
    parser.add_argument("--wake", type=int, default=4, help="Sleep's wake steps per language (default 4)")
    parser.add_argument("--batch", type=int, default=8, help="examples per fine-tuning step and per wake step (default 8)")
    parser.add_argument("--train", type=int, default=32,
                        help="training sentences per language (default 32; --train + --test at most 48, the world's sentences)")
    parser.add_argument("--test", type=int, default=16, help="test sentences per language, none of them trained on (default 16)")
    parser.add_argument("--base-steps", type=int, default=BASE_STEPS, help=f"base pretraining steps (default {BASE_STEPS})")
    parser.add_argument("--gating", default=GATING, choices=GATINGS,
                        help=f"how Sleep's experts are gated (default {GATING}; the others are ablations)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_world_arguments(parser)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {', '.join(SYSTEMS)}")
    parser.add_argument("--grid", type=int, default=2, help="learning rates tried per system (1..3, default 2)")
    parser.add_argument("--validation", type=int, default=1,
                        help=f"languages in the tuning sequence (1 or 2: {VALIDATION}; default 1)")
    parser.add_argument("--fisher-rows", type=int, default=32, help="EWC: rows for the Fisher diagonal (default 32)")


def check_world(args) -> None:
    """add_world_arguments' flags, or a clear error naming the flag."""
    validate.integer("--languages (--tasks)", args.languages, 2, MAX_LANGUAGES)
    for flag in ("steps", "wake", "batch", "train", "test", "base_steps"):
        validate.positive_int(f"--{flag.replace('_', '-')}", getattr(args, flag))
    validate.one_of("--gating", args.gating, GATINGS)
    split(0, 0, args.train, args.test)  # room for disjoint training and test sentences


def check(args) -> list[str]:
    """The chosen systems, or a clear error naming the flag."""
    check_world(args)
    validate.positive_int("--fisher-rows", args.fisher_rows)
    validate.integer("--grid", args.grid, 1, 3)
    validate.integer("--validation", args.validation, 1, len(VALIDATION))
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if not systems or unknown:
        raise ValueError(f"--systems: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SYSTEMS)}")
    return systems


# Measured seconds (CPU time, one thread, 2 shared cores): an Adam step of fine-tuning per row, a seeding
# step at batch 8 without its sampling and each token it samples (teacher replay and unrelated replay, token
# by token: the bulk of a step), the fixed cost of one consolidation (its held-out replay, the divergence and
# reward before and after, the expert opening), a wake step, one R row, one Fisher row; and how much longer
# each extra memory level makes a step (sleep-2 took 1.2× sleep-1's). Checked against T = 8: sleep-2 (10
# steps) 81 s, finetune 9 s, ewc 12 s (30 steps).
SECONDS = {"sft_row": 0.004, "seeding_step": 0.065, "sampled_token": 0.0031, "consolidation": 0.65,
           "wake_step": 0.03, "test_row": 0.003, "fisher_row": 0.01}
PER_EXTRA_LEVEL = 0.2


def seeding_step_seconds(levels: int = 1) -> float:
    """One seeding step of Sleep's consolidations (SEEDING: replay and unrelated replay lengths)."""
    seeding = sequential_systems.SEEDING
    sampled = seeding["sample_length"] + (seeding["unrelated_length"] if seeding["unrelated"] else 0)
    return (SECONDS["seeding_step"] + sampled * SECONDS["sampled_token"]) * (1 + PER_EXTRA_LEVEL * (levels - 1))


def consolidations(periods: list[int], languages_: int, wake: int) -> int:
    """Seedings in one sequence: one per book, one per due level that has a slower level to send to."""
    return languages_ + sum(languages_ * wake // p for p in periods[:-1] if p)


def sequence_seconds(name: str, args, languages_: int, periods: list[int] | None = None) -> float:
    evaluation = languages_**2 * args.test * SECONDS["test_row"]  # a row of R per language
    if name.startswith("sleep-"):
        levels = int(name.split("-")[1])
        periods = periods or periods_for(levels, args.wake)
        n = consolidations(periods, languages_, args.wake)
        wake = languages_ * args.wake * SECONDS["wake_step"]
        return n * (args.steps * seeding_step_seconds(levels) + SECONDS["consolidation"]) + wake + evaluation
    steps = 0 if name == "in-context" else languages_ * args.steps * args.batch * SECONDS["sft_row"]
    fisher = languages_ * args.fisher_rows * SECONDS["fisher_row"] if name == "ewc" else 0
    return steps + fisher + evaluation


def estimate(args) -> float:
    """Seconds per seed on 2 cores, one thread, once the base is cached (the runner adds the base's training
    the first time: base_configs)."""
    return sum(len(grid(s, args.grid)) * sequence_seconds(s, args, args.validation)
               + sequence_seconds(s, args, args.languages) for s in check(args))


def units(args) -> int:
    return sum(len(grid(s, args.grid)) * args.validation + args.languages for s in check(args))


def run_seed(args, seed: int, tick) -> dict:
    systems = check(args)
    model, report = base(args)
    gate = {"in_context": report["in_context"], "closed_book": report["closed_book"]}
    out = {"systems": {}, "R": {}, "tuning": {}, "base": gate, "gating": args.gating,
           "b": closed_book_base(model, args, seed)}
    for name in systems:
        result = run_system(name, model, args, seed, out["b"], tick=tick)
        out["systems"][name] = result["metrics"]
        out["R"][name], out["tuning"][name] = result["R"], result["tuning"]
    return out


def base_configs(args) -> dict:
    """The pretrained base a run loads (the runner trains it first, with progress, when it is not cached)."""
    check_world(args)
    return {"languages": base_config(args.base_steps)}


def bases(args) -> dict:
    """The world's pretrained base (trained once, with progress, then loaded from the cache): {name: report}."""
    return {"languages": base(args, progress=True)[1]}


# ----- notes -----

def data_note() -> str:
    return (f"Data: each language's test sentences are disjoint from its training sentences (the world's "
            f"{len(space())} sentences shuffled per seed and language and cut in two: `--test` for testing, "
            f"the next `--train` for training); every language is asked on the same test sentences after each "
            f"language learnt.")


def sleep_note(gating: str = GATING) -> str:
    return (f"Sleep: the ContinualLearner's sleep with imitation and dreaming off (for compute), experts gated by "
            f"\"{gating}\", seeding {sequential_systems.SEEDING} (unrelated replay: whole examples the teacher writes from \"book\", "
            f"so that a new expert learns to stay closed on reading other languages), replay prompted by SEP, the "
            f"student reads padding where the book was; the wake steps only sum gradients into the levels (SGD lr "
            f"{WAKE_LR} at each level's period); each book's consolidation takes `--steps` seeding steps, and the "
            f"upward consolidations are extra (column sleep_steps).")


def settings_note(gating: str = GATING) -> str:
    return (f"Budget: every system takes the same number of update steps on each new language (`--steps`: Adam "
            f"steps of fine-tuning, or the seeding steps that consolidate the book); Sleep's upward "
            f"consolidations are extra. {sleep_note(gating)} Level ℓ's period = wake × 2^(ℓ−1) (level 1 sends the "
            f"previous book's expert up once per language). EWC λ = {EWC_LAMBDA}. Tuning: each system's learning "
            f"rate from the first `--grid` points of its grid {GRIDS} by ACC on the first `--validation` languages "
            f"of {VALIDATION} (never the test languages 0..T−1). {data_note()}")


def notes(summary: dict, per_seed: list[dict]) -> str:
    gate = [r["base"]["in_context"] for r in per_seed]
    gating = per_seed[0].get("gating", "sum")  # seed files from before issue 18 ran "sum"
    lines = [f"Base (one for every seed): in-context accuracy on unseen languages {gate[0]:.1%}, closed-book "
             f"{per_seed[0]['base']['closed_book']:.1%} (gate {GATE:.0%}: {'passed' if gate[0] >= GATE else 'NOT passed'})."]
    sleeps = [s for s in summary if s.startswith("sleep-")]
    if "finetune" in summary and sleeps:
        lines.append(forgetting_sentence(*halves_forgetting(summary, per_seed, sleeps)))
    if "replay" in summary and sleeps:
        lines.append(replay_sentence(*reaches_replay(summary, sleeps)))
    if len(sleeps) > 1:
        accs = ", ".join(f"{s} {summary[s]['ACC']['mean']:.1%} ± {summary[s]['ACC']['std']:.1%}" for s in sleeps)
        lines.append(f"More levels: ACC {accs}.")
    opens = [s for s in sleeps if "opens_on_unrelated" in summary[s]]
    if opens:
        lines.append("Share of tokens a new expert opens on (gate > 0.5), on its book's replay and on unrelated "
                     "replay: " + ", ".join(f"{s} {summary[s]['opens_on_content']['mean']:.1%} and "
                                            f"{summary[s]['opens_on_unrelated']['mean']:.1%}" for s in opens) + ".")
    learnt = peaks(per_seed)
    lines.append("Best accuracy reached on the earlier languages before the end (what there was to forget), per "
                 "system: " + ", ".join(f"{s} {learnt[s]:.1%}" for s in summary if s in learnt) + ".")
    chosen = {s: sorted({r["systems"][s]["lr"] for r in per_seed if s in r["systems"]}) for s in summary}
    lines.append("Learning rates chosen per system (over seeds): " + "; ".join(f"{s} {v}" for s, v in chosen.items()) + ".")
    lines.append(settings_note(gating))
    if gating == "sum":
        lines.append(DIAGNOSIS)
    lines.append("R matrices per seed and system, chosen learning rates and tuning scores: seed-*.json.")
    return "\n\n".join(lines)
