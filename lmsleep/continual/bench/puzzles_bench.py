"""`lmsleep continual bench puzzles` (issue 13, benchmark 3; the paper's few-shot ARC): held-out 1-D puzzles
(tasks.puzzles, split 2: rules never trained on) shown by a few demonstrations; a system's success on a
problem is the fraction of its `copies` (5) isolated LoRA copies whose greedy test output is exactly right.

    in_context   the base answers with the demonstrations in context (one answer: success 0 or 1)
    ttt          test-time fine-tuning: each copy trains on the leave-one-out demonstrations (demo i as the
                 query, the others as its context; the missing slot repeats the first other demo, so every
                 sequence keeps the layout the base learnt)
    seal         SEAL-style: m dreams (a new "input>output" pair each, sampled after the demonstrations by a
                 ReST-EM generator trained on TRAINING tasks, where the test answer is the reward) are scored
                 by gradient importance, the top k + b random kept; each kept dream's copy trains on the
                 leave-one-out demonstrations plus its dream. On held-out problems nothing looks at the test
                 answer. No consolidation, no expansion.
    sleep        the demonstrations are first consolidated into a new low-rank expert of level 1 (knowledge
                 seeding: teacher = the base reading them, student = the base reading padding in their place),
                 then dreaming as in seal, on the consolidated model

Every copy of ttt, seal and sleep takes the same number of LoRA steps at the same learning rate (one value
for all systems, no per-system tuning); seal and sleep also spend compute on dreams and the generator, sleep
on consolidation: wall_s reports what each really cost. The base (cached by continual.base.pretrained) is
trained on training tasks in context with loss on the demonstrations too (puzzles.Options.demo_loss), so it
can write demonstrations; its held-out in-context accuracy is measured and reported (the gate).
"""
from __future__ import annotations

import argparse
import copy
import time
from dataclasses import asdict, replace

import torch

from ...tasks import batch, puzzles
from ...train import TrainConfig
from .. import base as base_cache
from ..dreaming import DreamingConfig, rest_em_data, rewards_for, sample_dreams
from ..lora import LoRAAdapters, attached, finetune
from ..seeding import SeedingConfig, consolidate, prepare_student, snapshot
from ..selection import importance, select

NAME = "puzzles"
HELP = ("few-shot 1-D puzzles on held-out rules: success (fraction of 5 dream copies solving the test) of "
        "in-context, test-time fine-tuning, SEAL-style and Sleep")
PRIMARY = "success"
COLUMNS = ["success", "pass_at_5", "dream_valid", "dream_correct", "closed_book", "wall_s"]
PERCENT = ("success", "pass_at_5", "dream_valid", "dream_correct", "closed_book")
SYSTEMS = ("in_context", "ttt", "seal", "sleep")

VOCAB = puzzles.VOCABULARY
SEP, PAD = VOCAB.encode(puzzles.SEP)[0], VOCAB.encode("_")[0]
MODEL = {"layout": "AA", "eviction": "none", "d_model": 64, "memory_levels": 1, "expert_pool": 4, "expert_rank": 8}
TRAINING = {"batch_size": 32, "lr": 0.008, "adamw_lr": 0.012, "warmup": 30, "min_lr_ratio": 1.0}
BASE_SEED_HELD_OUT = 2**31 - 5  # problems the base's gate is measured on (never a benchmark problem)
LARGE = {"problems": 32, "rest_problems": 32, "rest_rounds": 2, "candidates": 12}
# Measured on one thread of the shared 2-core machine while other jobs ran (uncontended runs took about half).
SECONDS = {"base_step": 0.16, "problem": 7.5, "rest_problem": 1.5}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--length", type=int, default=4, help="cells per row (default 4)")
    add("--colors", type=int, default=4, help="colors including the background (default 4)")
    add("--demos", type=int, default=3, help="demonstrations per problem (default 3)")
    add("--base-steps", type=int, default=1500, help="pretraining steps of the base (default 1500)")
    add("--problems", type=int, default=8, help="held-out problems per seed (default 8, as the paper's 8 tasks)")
    add("--copies", type=int, default=5, help="fine-tuned copies (kept dreams) per problem (default 5)")
    add("--candidates", type=int, default=8, help="dreams sampled per problem, m (default 8)")
    add("--ft-steps", type=int, default=20, help="LoRA steps per copy, every system (default 20)")
    add("--lr", type=float, default=1e-2, help="LoRA learning rate, every system (default 1e-2)")
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
                                       "ft_steps", "lr", "rank", "rest_problems", "rest_rounds", "generator_steps",
                                       "seeding_steps")}
    if getattr(args, "large", False):
        s.update(LARGE)
    for name in ("base_steps", "problems", "copies", "candidates", "ft_steps", "rank", "rest_problems",
                 "rest_rounds", "generator_steps", "seeding_steps"):
        if not isinstance(s[name], int) or s[name] < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {s[name]!r}")
    if s["copies"] > s["candidates"]:
        raise ValueError(f"--copies ({s['copies']}) cannot exceed --candidates ({s['candidates']}): the copies are "
                         f"the dreams kept out of the candidates")
    if not s["lr"] > 0:
        raise ValueError(f"--lr must be positive, got {s['lr']}")
    if s["demos"] < 2:
        raise ValueError(f"--demos must be at least 2 (leave-one-out needs one demonstration left), got {s['demos']}")
    world(s, 1)  # length, colors, demos: puzzles.Options checks their ranges
    return s


def world(s: dict, split: int, demo_loss: int = 0) -> puzzles.Options:
    return puzzles.Options(demos=s["demos"], length=s["length"], colors=s["colors"], split=split, demo_loss=demo_loss)


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


# ----- sequences -----

def demos_text(pairs) -> str:
    return "".join(f"{a}>{b};" for a, b in pairs)


def query(context: str, x: str, y: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, targets, loss_mask) [1, T] of "context | x > y", the loss on y."""
    ids = torch.tensor([VOCAB.encode(f"{context}{puzzles.SEP}{x}>{y}")])
    mask = torch.zeros_like(ids[:, 1:])
    mask[:, -len(y):] = 1
    return ids[:, :-1], ids[:, 1:], mask


def leave_one_out(raw: dict) -> tuple[torch.Tensor, ...]:
    """Demo i as the query, the others as context (the first other repeated in the freed slot)."""
    rows = []
    for i, (x, y) in enumerate(raw["demos"]):
        others = [d for j, d in enumerate(raw["demos"]) if j != i]
        rows.append(query(demos_text(others + others[:1]), x, y))
    return tuple(torch.cat(parts) for parts in zip(*rows))


def dream_data(context: torch.Tensor, dream: torch.Tensor, length: int) -> tuple[torch.Tensor, ...]:
    """A dream "x>y" as a query after the demonstrations (context ends with SEP), the loss on its y."""
    ids = torch.cat([context[0], dream])[None]
    mask = torch.zeros_like(ids[:, 1:])
    mask[:, -length:] = 1
    return ids[:, :-1], ids[:, 1:], mask


def parse_dream(dream: list[int], s: dict) -> tuple[str, str] | None:
    text = VOCAB.decode(dream)
    x, _, y = text.partition(">")
    cells = set("0123456789"[: s["colors"]])
    if len(x) != s["length"] or len(y) != s["length"] or not set(x + y) <= cells:
        return None
    return x, y


def copies_solve(model, adapters: LoRAAdapters | None, tests: list[tuple[torch.Tensor, ...]]) -> list[bool]:
    """Copy i (adapter i, or the model itself when adapters is None) answers tests[i] exactly right."""
    tokens, targets, mask = (torch.cat(parts) for parts in zip(*tests))
    with torch.no_grad():
        if adapters is None:
            predicted = model(tokens).argmax(-1)
        else:
            with attached(model, adapters) as router:
                router.route(list(range(len(tests))), [1] * len(tests))
                predicted = model(tokens).argmax(-1)
    return exact(predicted, targets, mask)


def exact(predicted: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> list[bool]:
    """Per row: every scored position predicted right (the whole test output exactly)."""
    return ((predicted == targets) | ~mask.bool()).all(1).tolist()


# ----- systems -----

def dream_copies(model, problems: list[dict], s: dict, seed: int, generator, baseline: bool = False):
    """For each problem: sample m dreams after its demonstrations, keep top k + 1 random by importance, and
    fine-tune one copy per kept dream on leave-one-out + the dream (all problems' copies in one batched run;
    baseline: one more copy per problem, last, on leave-one-out alone, what a dream must beat).
    Returns (tuned adapters, [(context, dreams, kept)] per problem)."""
    cfg = DreamingConfig(dreams=s["candidates"], dream_length=2 * s["length"] + 1, rank=s["rank"],
                         alpha=2.0 * s["rank"], seed=seed)
    datasets, made = [], []
    for p, raw in enumerate(problems):
        context = torch.tensor([VOCAB.encode(demos_text(raw["demos"]) + puzzles.SEP)])
        dreams = sample_dreams(model, context, cfg, seed * 1_000 + p, generator)
        loo = leave_one_out(raw)
        candidates = [dream_data(context, d, s["length"]) for d in dreams]
        scores = importance(model, candidates, loo, rank=s["rank"], alpha=2.0 * s["rank"], seed=seed + p)
        kept = select(scores, s["copies"] - 1, 1, torch.Generator().manual_seed(seed + p)).tolist()
        datasets += [tuple(torch.cat([a, b]) for a, b in zip(loo, candidates[k])) for k in kept]
        if baseline:
            datasets.append(loo)
        made.append((context, dreams, kept))
    tuned = finetune(model, datasets, rank=s["rank"], alpha=2.0 * s["rank"], steps=s["ft_steps"], lr=s["lr"], seed=seed)
    return tuned.adapters, made


def test_query(raw: dict) -> tuple[torch.Tensor, ...]:
    return query(demos_text(raw["demos"]), *raw["test"])


def dream_scores(model, problems, s, seed, generator) -> dict:
    """success, pass@5 and dream fidelity (valid "x>y" rows; following the true rule: measured with the
    solver for the report only, never used to select or reward on held-out problems)."""
    adapters, made = dream_copies(model, problems, s, seed, generator)
    tests = [test_query(raw) for raw in problems for _ in range(s["copies"])]
    solved = copies_solve(model, adapters, tests)
    per_problem = [solved[i * s["copies"] : (i + 1) * s["copies"]] for i in range(len(problems))]
    valid = correct = 0
    for raw, (_, dreams, kept) in zip(problems, made):
        for k in kept:
            pair = parse_dream(dreams[k].tolist(), s)
            valid += pair is not None
            correct += pair is not None and "".join(map(str, puzzles.apply(
                raw["rule"], raw["params"], [int(c) for c in pair[0]]))) == pair[1]
    total = len(problems) * s["copies"]
    return {"per_problem": per_problem, "dream_valid": valid / total, "dream_correct": correct / total}


def dream_rewards(solved: list[bool], losses: list[float]) -> list[int]:
    """One training problem's rewards: its dream copies then, last, its leave-one-out-only copy; a dream
    earns 1 when its copy solves the test and has a lower test loss than the leave-one-out-only copy."""
    beats = rewards_for([-loss for loss in losses[:-1]], -losses[-1], "every")
    return [int(bool(ok) and b) for ok, b in zip(solved[:-1], beats)]


def rest_em(model, s: dict, seed: int, tick) -> tuple[LoRAAdapters | None, list[dict]]:
    """The dream generator: ReST-EM rounds on TRAINING-task problems. A dream's reward is 1 when its copy
    solves the test and its loss on the test answer is below that of the problem's leave-one-out-only copy
    (the dream helped, not just the demonstrations). Each round fine-tunes a fresh generator from the base
    on the rewarded (demonstrations, dream) pairs."""
    generator, rounds, per = None, [], s["copies"] + 1
    for r in range(s["rest_rounds"]):
        problems = [e.raw for e in puzzles.generate(world(s, 1), s["rest_problems"], 50_000 + 97 * seed + r)]
        adapters, made = dream_copies(model, problems, s, 7 * seed + r + 1, generator, baseline=True)
        tests = [test_query(raw) for raw in problems for _ in range(per)]
        solved = copies_solve(model, adapters, tests)
        losses = adapters.losses(model, tests).tolist()
        pairs, rewarded = [], 0
        for i, (context, dreams, kept) in enumerate(made):
            rewards = dream_rewards(solved[i * per : (i + 1) * per], losses[i * per : (i + 1) * per])
            rewarded += sum(rewards)
            data = rest_em_data(context, dreams[kept], rewards)
            if data is not None:
                pairs.append(data)
        rounds.append({"solved": sum(solved) / len(solved), "rewarded": rewarded / (len(problems) * s["copies"])})
        if pairs:
            data = tuple(torch.cat(parts) for parts in zip(*pairs))
            generator = finetune(model, [data], rank=s["rank"], alpha=2.0 * s["rank"], steps=s["generator_steps"],
                                 lr=s["lr"], seed=seed + 11 * r, batch_size=32).adapters
        tick()
    return generator, rounds


def consolidated(teacher, raw: dict, s: dict, seed: int):
    """Sleep stage 1: a copy of the base with the demonstrations distilled into a new expert of level 1."""
    student = copy.deepcopy(teacher)
    new, _ = prepare_student(student, None, 0, torch.Generator().manual_seed(seed))
    context = torch.tensor([VOCAB.encode(demos_text(raw["demos"]))])
    cfg = SeedingConfig(steps=s["seeding_steps"], lr=1e-2, batch_size=8, sample_length=2 * s["length"] + 1,
                        group_size=2, seed=seed)
    report = consolidate(teacher, student, new, torch.tensor([[SEP]]), cfg, context=context,
                         blank=torch.full_like(context, PAD))
    return student.eval(), report


def closed_book(model, raw: dict) -> bool:
    """The test answered with padding where the demonstrations were (what consolidation alone kept)."""
    blank = "_" * len(demos_text(raw["demos"]))
    return copies_solve(model, None, [query(blank, *raw["test"])])[0]


def summary_of(per_problem: list[list[bool]]) -> dict:
    return {"success": sum(sum(p) / len(p) for p in per_problem) / len(per_problem),
            "pass_at_5": sum(any(p) for p in per_problem) / len(per_problem)}


def run_seed(args: argparse.Namespace, seed: int, tick) -> dict:
    s = sizes(args)
    model, report = pretrained(s, args.cache_dir)
    model.eval()
    problems = [e.raw for e in puzzles.generate(world(s, 2), s["problems"], 10_000 + seed)]
    systems = {}

    started = time.perf_counter()
    solved = copies_solve(model, None, [test_query(raw) for raw in problems])
    closed = [closed_book(model, raw) for raw in problems]
    systems["in_context"] = {**summary_of([[v] for v in solved]), "closed_book": sum(closed) / len(closed),
                             "wall_s": round(time.perf_counter() - started, 2)}

    started = time.perf_counter()
    loo = [leave_one_out(raw) for raw in problems for _ in range(s["copies"])]
    tuned = finetune(model, loo, rank=s["rank"], alpha=2.0 * s["rank"], steps=s["ft_steps"], lr=s["lr"], seed=seed)
    solved = copies_solve(model, tuned.adapters, [test_query(raw) for raw in problems for _ in range(s["copies"])])
    systems["ttt"] = {**summary_of([solved[i * s["copies"] : (i + 1) * s["copies"]] for i in range(len(problems))]),
                      "wall_s": round(time.perf_counter() - started, 2)}

    started = time.perf_counter()
    generator, rounds = rest_em(model, s, seed, tick)
    generator_s = time.perf_counter() - started
    started = time.perf_counter()
    seal = dream_scores(model, problems, s, 100 + seed, generator)
    systems["seal"] = {**summary_of(seal["per_problem"]), "dream_valid": seal["dream_valid"],
                       "dream_correct": seal["dream_correct"],
                       "wall_s": round(time.perf_counter() - started + generator_s, 2)}

    started = time.perf_counter()
    teacher = snapshot(model)
    per_problem, valid, correct, closed, seeding = [], 0.0, 0.0, [], []
    for p, raw in enumerate(problems):
        student, rep = consolidated(teacher, raw, s, 1_000 * seed + p)
        seeding.append({"divergence_before": rep.divergence_before, "divergence_after": rep.divergence_after})
        closed.append(closed_book(student, raw))
        scores = dream_scores(student, [raw], s, 200 + 1_000 * seed + p, generator)
        per_problem += scores["per_problem"]
        valid += scores["dream_valid"] / len(problems)
        correct += scores["dream_correct"] / len(problems)
        tick()
    systems["sleep"] = {**summary_of(per_problem), "dream_valid": valid, "dream_correct": correct,
                        "closed_book": sum(closed) / len(closed),
                        "wall_s": round(time.perf_counter() - started + generator_s, 2)}
    gate = {k: report[k] for k in ("in_context_held_out", "in_context_train", "steps", "train_seconds")}
    return {"systems": systems, "base": gate, "rest_em": rounds, "seeding": seeding,
            "tasks": sorted({f"{raw['rule']} {raw['params']}" for raw in problems}), "settings": s}


def units(args: argparse.Namespace) -> int:
    s = sizes(args)
    return s["rest_rounds"] + s["problems"]


def estimate(args: argparse.Namespace) -> float:
    """Seconds per seed on one thread, from the measured costs in SECONDS; when the base is not cached yet,
    its training is spread over the seeds to run."""
    s = sizes(args)
    scale = (s["candidates"] / 8) * (s["ft_steps"] / 20)
    seconds = (s["problems"] * SECONDS["problem"] * scale * (s["seeding_steps"] / 12) ** 0.5
               + s["rest_rounds"] * s["rest_problems"] * SECONDS["rest_problem"] * scale)
    cfg = base_config(s)
    if not (base_cache.cache_root(args.cache_dir) / base_cache.cache_key(cfg) / base_cache.REPORT_FILE).is_file():
        seconds += s["base_steps"] * SECONDS["base_step"] / max(1, len(getattr(args, "seeds", [0])))
    return seconds


def notes(summary: dict, per_seed: list[dict]) -> str:
    base = per_seed[0]["base"]
    s = per_seed[0]["settings"]
    mean = {name: summary[name]["success"]["mean"] for name in SYSTEMS if name in summary}
    order = " > ".join(sorted(mean, key=mean.get, reverse=True))
    claim = mean["sleep"] > mean["seal"] > mean["ttt"] > mean["in_context"]
    gate = base["in_context_held_out"]
    lines = [
        f"World: rows of {s['length']} cells, {s['colors']} colors, {s['demos']} demonstrations; held-out tasks: "
        f"{', '.join(sorted({t for r in per_seed for t in r['tasks']}))}.",
        f"Base (shared by every seed, {base['steps']} steps, {base['train_seconds']} s): exact test output in context "
        f"{base['in_context_held_out']:.1%} on held-out tasks, {base['in_context_train']:.1%} on training tasks "
        f"(512 problems each)." + ("" if gate >= 0.9 else " **Below the 90% gate**: held-out rules are read only "
                                   "partly in context, so everything below is measured against a weak reader."),
        f"Budget: every copy of ttt, seal and sleep takes {s['ft_steps']} LoRA steps (rank {s['rank']}, lr {s['lr']}, "
        "one value for all systems: of {1e-2, 3e-2}, tried on the 16 problems of validation seed 99, other problems "
        "of the same held-out tasks, 1e-2 had as good or better success for every system); "
        f"{s['copies']} copies per problem; seal and sleep sample "
        f"{s['candidates']} dreams per problem and use a generator trained by {s['rest_rounds']} ReST-EM round(s) on "
        f"{s['rest_problems']} training-task problems; sleep adds {s['seeding_steps']} knowledge-seeding steps per "
        f"problem. wall_s is each system's real cost per seed (seal and sleep include the generator's training).",
        "ReST-EM on training tasks (per seed): copies solving the test "
        + ", ".join(f"{r['rest_em'][-1]['solved']:.0%}" for r in per_seed) + "; dreams rewarded "
        + ", ".join(f"{r['rest_em'][-1]['rewarded']:.0%}" for r in per_seed)
        + ". Knowledge seeding, divergence before -> after (mean over problems): "
        + ", ".join(f"{_mean(r['seeding'], 'divergence_before'):.3f} -> {_mean(r['seeding'], 'divergence_after'):.3f}"
                    for r in per_seed) + ".",
        "closed_book: the test answered with padding in place of the demonstrations (in_context: the base; sleep: "
        "after consolidation, before dreaming). dream_correct: kept dreams that follow the true rule (report only).",
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
