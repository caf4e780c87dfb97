"""Knowledge incorporation on real text (issue 20; paper 2's Table 3, SEAL's setting): a pretrained chat model
(default SmolLM2-135M-Instruct, offline) reads one SQuAD passage, learns, and answers its questions closed-book.

World: the SQuAD v1.1 development set grouped by passage (../shared/data/squad, CC BY-SA 4.0). Seed s takes
passages s·P … s·P + P − 1 (P = --passages), each learnt from the same pristine base, its first --questions
questions asked; the reading probe is the in-context reading of --probe passages from the far end of the file.
Protocol, per passage: base closed-book and in-context (the ceiling: measured first, it bounds everything
after it), then each system of squad_systems (fine-tuning, fine-tuning on the model's own restatements,
Sleep) on a fresh copy of the base with the same number of update steps; closed-book EM / F1 / contains on
the passage's questions, and forgetting = the base's in-context reading F1 on the probe minus the system's.
Tuning, as in the knowledge benchmark (squad_tuning): each fine-tuning system's Adam rate is picked from a
grid on 2 validation passages from the far end of the file, by closed-book F1 within --forgetting-budget
points of reading lost on a validation probe; once for the base (kept in OUT/tuning.json). Sleep runs at the
demo's settings (chosen on passage 0, the first test passage of seed 0; seeds ≥ 1 never saw them).
"""
from __future__ import annotations

import argparse
import time

import torch

from ...tasks import squad
from .. import squad_qa
from ..real_base import load_causal_lm
from . import squad_systems, squad_tuning

NAME = "squad"
HELP = ("knowledge incorporation on real text: a pretrained chat model (default SmolLM2-135M-Instruct) reads a SQuAD "
        "passage, learns (fine-tuning, fine-tuning on its restatements, Sleep), answers its questions closed-book")
PRIMARY = "f1"
SECONDS = {"finetune": 60.0, "finetune+restatements": 90.0, "sleep": 250.0, "evaluation": 12.0,  # 1 thread, EPYC
           "restatements": 60.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2", help="smollm2 (default), a model directory or a GGUF file")
    parser.add_argument("--passages", type=int, default=8, help="passages per seed (default 8)")
    parser.add_argument("--questions", type=int, default=5, help="questions asked per passage (default 5)")
    parser.add_argument("--probe", type=int, default=2, help="passages of the reading probe (default 2)")
    parser.add_argument("--steps", type=int, default=squad_systems.Budget().steps,
                        help=f"update steps per passage for every system (default {squad_systems.Budget().steps})")
    parser.add_argument("--forgetting-budget", type=float, default=2.5,
                        help="most reading F1 (points) a tuned learning rate may cost on validation passages (default 2.5)")
    parser.add_argument("--squad", default=None, help="the grouped SQuAD file (default ../shared/data/squad)")
    parser.add_argument("--systems", default=",".join(squad_systems.SYSTEMS),
                        help=f"comma-separated subset of {', '.join(squad_systems.SYSTEMS)} (base and in-context always)")


def systems(args) -> list[str]:
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in squad_systems.SYSTEMS]
    if unknown or not chosen:
        raise ValueError(f"--systems: unknown {unknown or chosen}; choose from {', '.join(squad_systems.SYSTEMS)}")
    for flag in ("passages", "questions", "probe", "steps"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if not args.forgetting_budget >= 0:
        raise ValueError(f"--forgetting-budget must be at least 0, got {args.forgetting_budget}")
    return chosen


def units(args) -> int:
    return args.passages * (1 + len(systems(args))) + squad_tuning.units(systems(args))


def estimate(args) -> float:
    """Seconds per seed on one thread (measured on the 2-core development machine, AMD EPYC): loading the
    base ~30 s; per passage the evaluations and each system's learning (SECONDS, scaled by --steps)."""
    scale = args.steps / squad_systems.Budget().steps
    per_passage = SECONDS["evaluation"] * (1 + len(systems(args))) + sum(SECONDS[s] * scale for s in systems(args))
    tuned = [s for s in systems(args) if s in squad_tuning.TUNED]
    tuning = 0.0 if squad_tuning.cached(args) is not None else squad_tuning.VALIDATION * (
        len(tuned) * len(squad_tuning.GRID) * SECONDS["evaluation"] * 3
        + sum(SECONDS[s] * scale * len(squad_tuning.GRID) for s in tuned)
        + SECONDS["restatements"] * ("finetune+restatements" in tuned))
    return 30 + args.passages * per_passage + tuning / max(1, len(getattr(args, "seeds", [0])))


def run_seed(args, seed: int, tick) -> dict:
    chosen = systems(args)
    passages = squad.load(args.squad)
    held = squad_tuning.split(passages, args.probe)
    if (seed + 1) * args.passages > held["first_held"]:
        raise ValueError(f"seed {seed} needs test passages up to {(seed + 1) * args.passages}; the file has "
                         f"{held['first_held']} before its validation and probe passages")
    base, tokenizer = load_causal_lm(args.model)
    tuning = squad_tuning.tune(args, chosen, base, tokenizer, held, tick)
    probe = held["probe"]
    reading_base = squad_tuning.reading(base, tokenizer, probe, args.questions)
    rows: dict[str, list[dict]] = {}
    for index in range(seed * args.passages, (seed + 1) * args.passages):
        passage = passages[index]
        closed = squad_qa.evaluate(base, tokenizer, passage, in_context=False, questions=args.questions)
        ceiling = squad_qa.evaluate(base, tokenizer, passage, in_context=True, questions=args.questions)
        keep = lambda got, **more: {k: got[k] for k in ("em", "f1", "contains")} | more  # noqa: E731
        rows.setdefault("base", []).append(keep(closed, reading=reading_base, forgetting=0.0, cpu_s=0.0))
        rows.setdefault("in-context", []).append(keep(ceiling, reading=reading_base, forgetting=0.0, cpu_s=0.0))
        tick()
        for name in chosen:
            budget = squad_systems.Budget(steps=args.steps, lr=tuning["lrs"].get(name, squad_systems.Budget.lr))
            system = squad_systems.make(name, base, tokenizer, budget)
            started = time.process_time()
            system.learn(passage, seed * 1000 + index)
            cpu = time.process_time() - started
            got = squad_qa.evaluate(system.model, tokenizer, passage, in_context=False, questions=args.questions)
            reading = squad_tuning.reading(system.model, tokenizer, probe, args.questions)
            rows.setdefault(name, []).append(keep(got, reading=reading, forgetting=reading_base - reading, cpu_s=cpu))
            del system
            tick()
    return {"systems": {name: {k: sum(r[k] for r in values) / len(values) for k in values[0]}
                        for name, values in rows.items()},
            "passages": list(range(seed * args.passages, (seed + 1) * args.passages)), "threads": torch.get_num_threads(),
            "learning_rates": tuning["lrs"], "forgetting_budget": args.forgetting_budget}


def notes(summary: dict, per_seed: list[dict]) -> str:
    rates = "; ".join(f"seed {i}: " + ", ".join(f"{k} {v:g}" for k, v in r.get("learning_rates", {}).items())
                      for i, r in enumerate(per_seed))
    return (f"Tuned learning rates ({rates}; grid {', '.join(f'{g:g}' for g in squad_tuning.GRID)}, forgetting budget "
            f"{per_seed[0].get('forgetting_budget', '—')} F1 points). "
            "EM / F1 / contains: SQuAD's exact match, token F1 and the share of replies containing the reference, "
            "closed-book on the passage's questions (percent); reading: in-context F1 on the probe passages; "
            "forgetting: the base's reading minus the system's; cpu_s: the system's learning, CPU seconds. "
            "Paper 2's Table 3 (Qwen2.5-7B, one passage / 200 in a row): base 31.9, fine-tuning 33.4 / 32.0, "
            "SEAL 46.7 / 43.2, Sleep with 4 levels 48.9 / 46.2.")
