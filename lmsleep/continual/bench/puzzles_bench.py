"""`lmsleep continual bench puzzles` (issue 13, benchmark 3; the paper's few-shot ARC): held-out 1-D puzzles
(tasks.puzzles, split 2: rules never trained on) shown by a few demonstrations; a system's success on a
problem is the fraction of its `copies` (5) that answer the test exactly right (greedy) with the
demonstrations in context. The systems (puzzles_systems):

    in_context   the base (one answer: success 0 or 1)
    ttt          test-time fine-tuning, a baseline: each copy is a LoRA adapter trained on the leave-one-out
                 demonstrations (demo i as the query, the others as its context; the missing slot repeats the
                 first other demo, so every sequence keeps the layout the base learnt)
    seal         SEAL-style: each copy is a ContinualLearner (consolidation off) that reads the demonstrations
                 and sleeps: it samples m dreams (a new "x>y" pair each) after them with the dream generator,
                 keeps the one of highest gradient importance and learns it into every parameter
    sleep        each copy is a ContinualLearner with the whole sleep: the demonstrations are consolidated into a
                 new low-rank expert of level 1 (knowledge seeding: teacher = the base reading them, student =
                 the base reading padding in their place), then it dreams as seal does and learns the kept dream
                 into that expert

The dream generator is trained by ReST-EM on TRAINING-task problems (a learner's train_dream_generator; the
test answer is the reward there: a kept dream is rewarded when its isolated LoRA copy solves the test, with a
lower test loss than the model's when the model solves it too); on held-out problems nothing looks at the
test answer. Every LoRA copy (ttt, the generator's reward copies) and every learnt dream takes `ft_steps`
steps at `lr` (sleep's new expert too); seal's full fine-tuning takes them at `seal_lr`. wall_s reports what
each system really cost (seal and sleep include the generator's training). The base (cached by
continual.base.pretrained) is trained on training tasks in context with loss on the demonstrations too
(puzzles.Options.demo_loss), so it can write demonstrations; its held-out in-context accuracy is the gate.

Changed by issue 18 (seal and sleep now run the learner, so they mean what a user of it gets): a copy of
seal or sleep was one LoRA adapter trained on the leave-one-out demonstrations plus one kept dream (4 by
importance + 1 at random out of one set of m, read after the demonstrations); it is now one learner sleeping
on a fresh copy of the base, with its own m dreams, learning the kept dream alone, after padding in place of
the demonstrations (the learner's layout), into the new expert (sleep) or every parameter (seal). Sleep's
closed_book is measured after the whole sleep (it was after consolidation alone). The generator's rounds
reward against the model itself rather than a leave-one-out-only copy, as the learner's ReST-EM does.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict

import torch

from ...tasks import batch, puzzles
from ...train import TrainConfig
from .. import base as base_cache
from . import puzzles_systems as systems_
from .puzzles_systems import exact, world

NAME = "puzzles"
HELP = ("few-shot 1-D puzzles on held-out rules: success (fraction of 5 copies solving the test) of "
        "in-context, test-time fine-tuning, SEAL-style and Sleep (each copy one learner's sleep)")
PRIMARY = "success"
COLUMNS = ["success", "pass_at_5", "dream_valid", "dream_correct", "closed_book", "wall_s"]
PERCENT = ("success", "pass_at_5", "dream_valid", "dream_correct", "closed_book")
SYSTEMS = ("in_context", "ttt", "seal", "sleep")

MODEL = {"layout": "AA", "eviction": "none", "d_model": 64, "memory_levels": 1, "expert_pool": 4, "expert_rank": 8}
TRAINING = {"batch_size": 32, "lr": 0.008, "adamw_lr": 0.012, "warmup": 30, "min_lr_ratio": 1.0}
BASE_SEED_HELD_OUT = 2**31 - 5  # problems the base's gate is measured on (never a benchmark problem)
LARGE = {"problems": 32, "rest_problems": 32, "rest_rounds": 2, "candidates": 12}
# Measured on one thread of the shared 2-core machine while other jobs ran (issue 18: a default seed took 83 s).
SECONDS = {"base_step": 0.04, "seeding_step": 0.12, "dream_copy": 0.25, "ttt_copy": 0.08, "rest_problem": 0.35}
# seal's full fine-tuning: the best success of {3e-2, 1e-2, 3e-3, 1e-3, 1e-4} on the 16 problems of validation
# seed 99 (other problems of the same held-out tasks; 21% at 1e-3, at most 6% elsewhere)
SEAL_LR = 1e-3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--length", type=int, default=4, help="cells per row (default 4)")
    add("--colors", type=int, default=4, help="colors including the background (default 4)")
    add("--demos", type=int, default=3, help="demonstrations per problem (default 3)")
    add("--base-steps", type=int, default=1500, help="pretraining steps of the base (default 1500)")
    add("--problems", type=int, default=8, help="held-out problems per seed (default 8, as the paper's 8 tasks)")
    add("--copies", type=int, default=5, help="copies per problem: LoRA copies (ttt), learners that sleep once "
        "(seal, sleep), kept dreams per problem of the generator's ReST-EM (default 5)")
    add("--candidates", type=int, default=8, help="dreams sampled per sleep, m (default 8)")
    add("--ft-steps", type=int, default=20, help="steps per copy and per learnt dream, every system (default 20)")
    add("--lr", type=float, default=1e-2, help="learning rate of LoRA copies and of sleep's new expert (default 1e-2)")
    add("--seal-lr", type=float, default=SEAL_LR, help="learning rate of seal's full fine-tuning (default 1e-3)")
    add("--rank", type=int, default=4, help="LoRA rank (default 4)")
    add("--rest-problems", type=int, default=8, help="training-task problems per ReST-EM round (default 8)")
    add("--rest-rounds", type=int, default=1, help="ReST-EM rounds of the dream generator (default 1)")
    add("--generator-steps", type=int, default=20, help="LoRA steps of each generator fine-tune (default 20)")
    add("--seeding-steps", type=int, default=12, help="knowledge-seeding steps of sleep (default 12)")
    add("--large", action="store_true",
        help="the larger setting: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in LARGE.items()))


def sizes(args: argparse.Namespace) -> dict:
    """The settings of a run (--large replaces the sizes it names), checked, with clear errors."""
    s = {k: getattr(args, k) for k in ("length", "colors", "demos", "base_steps", "problems", "copies", "candidates",
                                       "ft_steps", "lr", "seal_lr", "rank", "rest_problems", "rest_rounds",
                                       "generator_steps", "seeding_steps")}
    if getattr(args, "large", False):
        s.update(LARGE)
    for name in ("base_steps", "problems", "copies", "candidates", "ft_steps", "rank", "rest_problems",
                 "rest_rounds", "generator_steps", "seeding_steps"):
        if not isinstance(s[name], int) or s[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {s[name]!r}")
    if s["copies"] > s["candidates"]:
        raise ValueError(f"--copies ({s['copies']}) cannot exceed --candidates ({s['candidates']}): the generator's "
                         f"ReST-EM keeps that many dreams out of the candidates")
    for name in ("lr", "seal_lr"):
        if not s[name] > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {s[name]}")
    if s["demos"] < 2:
        raise ValueError(f"--demos must be at least 2 (leave-one-out needs one demonstration left), got {s['demos']}")
    world(s, 1)  # length, colors, demos: puzzles.Options checks their ranges
    return s


def base_config(s: dict) -> TrainConfig:
    """The base: training tasks in context, loss on the demonstrations and the test output."""
    steps = s["base_steps"]
    return TrainConfig(task="puzzles", task_options=asdict(world(s, 1, demo_loss=1)), model=dict(MODEL), steps=steps,
                       seed=0, eval_every=steps, eval_size=64, checkpoint_every=steps, log_every=max(1, steps // 20),
                       **TRAINING)


def solved_in_context(model, options: puzzles.Options, n: int, seed: int) -> float:
    """Fraction of n problems whose test output the model gets exactly right (argmax at every answer
    position under teacher forcing, which is exactly when greedy decoding writes it)."""
    data = batch(puzzles.generate(options, n, seed))
    with torch.no_grad():
        predicted = torch.cat([model(data["tokens"][i : i + 128]).argmax(-1) for i in range(0, n, 128)])
    return sum(exact(predicted, data["targets"], data["loss_mask"])) / n


def measure_base(model, s: dict) -> dict:
    model.eval()
    return {"in_context_held_out": round(solved_in_context(model, world(s, 2), 512, BASE_SEED_HELD_OUT), 4),
            "in_context_train": round(solved_in_context(model, world(s, 1), 512, BASE_SEED_HELD_OUT), 4)}


_BASES: dict = {}


def pretrained(s: dict, cache_dir=None):
    cfg = base_config(s)
    key = (base_cache.cache_key(cfg), str(cache_dir))
    if key not in _BASES:
        _BASES[key] = base_cache.pretrained(cfg, lambda m: measure_base(m, s), cache_dir, progress=False)
    return _BASES[key]


def summary_of(per_problem: list[list[bool]]) -> dict:
    return {"success": sum(sum(p) / len(p) for p in per_problem) / len(per_problem),
            "pass_at_5": sum(any(p) for p in per_problem) / len(per_problem)}


def run_seed(args: argparse.Namespace, seed: int, tick) -> dict:
    s = sizes(args)
    model, report = pretrained(s, args.cache_dir)
    model.eval()
    problems = [e.raw for e in puzzles.generate(world(s, 2), s["problems"], 10_000 + seed)]
    systems, wall = {}, {}

    started = time.perf_counter()
    closed = [systems_.solves(model, raw)[1] for raw in problems]
    systems["in_context"] = {**summary_of(systems_.in_context(model, problems)), "closed_book": _share(closed),
                             "wall_s": round(time.perf_counter() - started, 2)}

    started = time.perf_counter()
    systems["ttt"] = {**summary_of(systems_.ttt(model, problems, s, seed)),
                      "wall_s": round(time.perf_counter() - started, 2)}

    started = time.perf_counter()
    generator, rounds = systems_.train_generator(model, s, seed, tick)
    generator_s = time.perf_counter() - started
    copies = {"seal": [], "sleep": []}
    for p, raw in enumerate(problems):
        seeds = [(10_007 * seed + p) * 101 + c for c in range(s["copies"])]  # the same learners' seeds for both
        for name in copies:
            started = time.perf_counter()
            copies[name].append(systems_.sleep_copies(model, raw, s, seeds, generator, name))
            wall[name] = wall.get(name, generator_s) + time.perf_counter() - started
        tick()
    for name, per_problem in copies.items():
        flat = [c for problem in per_problem for c in problem]
        systems[name] = {**summary_of([[c["solved"] for c in problem] for problem in per_problem]),
                         "dream_valid": _share([c["valid"] for c in flat]),
                         "dream_correct": _share([c["correct"] for c in flat]),
                         "closed_book": _share([c["closed_book"] for c in flat]), "wall_s": round(wall[name], 2)}
    seeding = [{k: c["records"]["consolidation"][k] for k in ("divergence_before", "divergence_after")}
               for problem in copies["sleep"] for c in problem]
    gate = {k: report[k] for k in ("in_context_held_out", "in_context_train", "steps", "train_seconds")}
    return {"systems": systems, "base": gate, "rest_em": rounds, "seeding": seeding,
            "tasks": sorted({f"{raw['rule']} {raw['params']}" for raw in problems}), "settings": s}


def _share(values) -> float:
    return sum(values) / len(values)


def units(args: argparse.Namespace) -> int:
    s = sizes(args)
    return s["rest_rounds"] + s["problems"]


def estimate(args: argparse.Namespace) -> float:
    """Seconds per seed on one thread, from the measured costs in SECONDS; when the base is not cached yet,
    its training is spread over the seeds to run."""
    s = sizes(args)
    scale = (s["candidates"] / 8) * (s["ft_steps"] / 20)  # a copy samples m dreams and learns for ft_steps
    per_problem = s["copies"] * (2 * SECONDS["dream_copy"] * scale + s["seeding_steps"] * SECONDS["seeding_step"]
                                 + SECONDS["ttt_copy"] * s["ft_steps"] / 20)
    seconds = (s["problems"] * per_problem
               + s["rest_rounds"] * s["rest_problems"] * SECONDS["rest_problem"] * scale * s["copies"] / 5)
    cfg = base_config(s)
    if not (base_cache.cache_root(args.cache_dir) / base_cache.cache_key(cfg) / base_cache.REPORT_FILE).is_file():
        seconds += s["base_steps"] * SECONDS["base_step"] / max(1, len(getattr(args, "seeds", [0])))
    return seconds


def verdict(summary: dict) -> tuple[bool, dict]:
    """(the paper's order Sleep > SEAL-style > test-time fine-tuning > in-context holds, mean success per system)."""
    mean = {name: summary[name]["success"]["mean"] for name in SYSTEMS if name in summary}
    return mean["sleep"] > mean["seal"] > mean["ttt"] > mean["in_context"], mean


def notes(summary: dict, per_seed: list[dict]) -> str:
    base = per_seed[0]["base"]
    s = per_seed[0]["settings"]
    claim, mean = verdict(summary)
    order = " > ".join(sorted(mean, key=mean.get, reverse=True))
    gate = base["in_context_held_out"]
    lines = [
        f"World: rows of {s['length']} cells, {s['colors']} colors, {s['demos']} demonstrations; held-out tasks: "
        f"{', '.join(sorted({t for r in per_seed for t in r['tasks']}))}.",
        f"Base (shared by every seed, {base['steps']} steps, {base['train_seconds']} s): exact test output in context "
        f"{base['in_context_held_out']:.1%} on held-out tasks, {base['in_context_train']:.1%} on training tasks "
        f"(512 problems each)." + ("" if gate >= 0.9 else " **Below the 90% gate**: held-out rules are read only "
                                   "partly in context, so everything below is measured against a weak reader."),
        f"Budget: {s['copies']} copies per problem. A ttt copy is a LoRA adapter (rank {s['rank']}) trained "
        f"{s['ft_steps']} steps at lr {s['lr']}; a seal or sleep copy is one ContinualLearner that reads the "
        f"demonstrations and sleeps once: it samples {s['candidates']} dreams, keeps 1 by gradient importance and "
        f"learns it in {s['ft_steps']} steps (sleep: into the new expert at lr {s['lr']}, after "
        f"{s['seeding_steps']} knowledge-seeding steps; seal: every parameter at lr {s['seal_lr']}). Both dream with "
        f"a generator trained by {s['rest_rounds']} ReST-EM round(s) on {s['rest_problems']} training-task problems. "
        "wall_s is each system's real cost per seed (seal and sleep include the generator's training).",
        "ReST-EM on training tasks (per seed, last round): kept dreams rewarded "
        + ", ".join(f"{r['rest_em'][-1]['rewarded']:.0%}" for r in per_seed)
        + ". Knowledge seeding, divergence before -> after (mean over sleep's copies): "
        + ", ".join(f"{_mean(r['seeding'], 'divergence_before'):.3f} -> {_mean(r['seeding'], 'divergence_after'):.3f}"
                    for r in per_seed) + ".",
        "closed_book: the test answered with padding in place of the demonstrations (in_context: the base; seal and "
        "sleep: after the sleep). dream_valid / dream_correct: learnt dreams that are a well-formed pair / follow "
        "the true rule (the solver, for the report only).",
        f"Order by mean success: {order}. The paper's order Sleep > SEAL-style > test-time fine-tuning > in-context "
        f"{'holds' if claim else 'does not hold'} at this scale (means: "
        + ", ".join(f"{k} {v:.1%}" for k, v in mean.items()) + ").",
    ]
    return "\n\n".join(lines)


def _mean(records: list[dict], key: str) -> float:
    return sum(r[key] for r in records) / max(1, len(records))


def bases(args) -> dict:
    """The world's pretrained base (trained once, then loaded from the cache): {name: report}."""
    return {"puzzles": pretrained(sizes(args), args.cache_dir)[1]}
