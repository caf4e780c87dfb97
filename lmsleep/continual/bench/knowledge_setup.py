"""What every seed of the knowledge benchmarks starts from (knowledge.py, efficiency.py): the world's passages
and probes (disjoint seed ranges), the cached bases, their dream generators (the learner's ReST-EM on training
passages), and the learning rates tuned on validation passages."""
from __future__ import annotations

import copy
from dataclasses import replace

from ...tasks import batch, facts
from ..base import pretrained_base
from ..demo import BASE_STEPS, MODEL as DEMO_MODEL, SEEDING as DEMO_SEEDING, WORLD
from . import knowledge_systems as ks
from .tuning import choose

MODEL = {**DEMO_MODEL, "expert_pool": 24}  # one new expert per passage; a full pool merges (LearnerConfig.full_pool)
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
__all__ = ["BASE_STEPS", "WORLD"]


def world(seed: int) -> dict:
    """The passage (raw world) of passage seed `seed`: one new person (name pool 2)."""
    return facts.world(seed, 1, replace(WORLD, pool=2))


def passages(offset: int, seed: int, count: int) -> list[dict]:
    """`count` passages of seed `seed` in the range starting at `offset` (TEST, VALIDATION, TRAINING)."""
    return [world(offset + MAX_PER_SEED * seed + i) for i in range(count)]


def probe(seed: int) -> dict:
    """64 other passages, one question each, asked in context: the reading skill an update may destroy."""
    options = replace(WORLD, pool=2, context=1, questions=1, ask_loss=0)
    return batch(facts.generate(options, PROBE_SIZE, seed))


def budget_of(args) -> ks.Budget:
    periods = (args.upward, 0) if getattr(args, "upward", 0) else None
    return ks.Budget(steps=args.steps, seeding=SEEDING, dreaming=DREAMING, periods=periods)


def outcome(model, raw, probe_, reading_base) -> tuple[float, float]:
    return ks.accuracy(model, raw), reading_base - ks.reading(model, probe_)


def tune(base, args, seed: int, probe_: dict, reading_base: float, generator, tick) -> dict:
    """Each system's learning rate, from the same grid by the same rule: the best mean accuracy on validation
    passages whose mean forgetting (on the validation probe) stays within the budget, ties to less forgetting,
    then the smaller rate (none within: the least forgetting). For the fine-tuning systems it is their Adam
    rate; for SEAL-style, the rate its dreams are learnt at; for Sleep, the rate at which its dreams are
    learnt into the new expert (consolidated once per validation passage, then each rate tried on a copy of
    the learner)."""
    budget = budget_of(args)
    tried: dict[str, list[tuple[float, float]]] = {}
    for i, raw in enumerate(passages(VALIDATION, seed, VALIDATION_PASSAGES)):
        trial = seed * 7 + i
        for name in ks.SFT_SYSTEMS:
            for lr in GRID:
                system = ks.system(name, base, lr, budget, trial, generator)
                system.learn(raw, trial)
                tried.setdefault(f"{name} {lr}", []).append(outcome(system.model, raw, probe_, reading_base))
        consolidated = ks.sleeper(base, budget, trial, generator)
        consolidated.learner.read(ks.passage(raw))
        if consolidated.wake:
            consolidated.learner.wake(ks.passage(raw))
        consolidated.learner.reset_context()
        for lr in GRID:
            learner = copy.deepcopy(consolidated.learner)
            learner.config = replace(learner.config, dream_lr=lr)
            learner.dream()
            tried.setdefault(f"sleep {lr}", []).append(outcome(learner.model, raw, probe_, reading_base))
        tick()
    chosen = {}
    for name in (*ks.SFT_SYSTEMS, "sleep"):
        chosen[name] = choose({lr: tried[f"{name} {lr}"] for lr in GRID}, args.forgetting_budget)
    return chosen


def base_model(count: int, args, progress: bool = False):
    """The cached base with `count` levels (trained the first time), and its report."""
    return pretrained_base(WORLD, {**MODEL, "memory_levels": count}, args.cache_dir, args.base_steps, progress=progress)


def prepare(args, seed: int, levels: tuple[int, ...] = LEVELS, tick=lambda: None) -> dict:
    """What every seed of the knowledge benchmarks starts from: the bases (cached), their dream generators
    (ReST-EM on training passages), the test probe and each base's reading on it, and the tuned rates."""
    budget = budget_of(args)
    bases, reports, generators = {}, {}, {}
    training = passages(TRAINING, seed, args.generator_passages)
    for count in levels:
        bases[count], reports[count] = base_model(count, args)
        generators[count] = ks.train_generator(bases[count], training, budget, seed)
        tick()
    test_probe, validation_probe = probe(PROBE + seed), probe(PROBE_VALIDATION + seed)
    lrs = tune(bases[2], args, seed, validation_probe, ks.reading(bases[2], validation_probe), generators[2], tick)
    return {"bases": bases, "reports": reports, "generators": generators, "probe": test_probe,
            "reading": {count: ks.reading(bases[count], test_probe) for count in levels}, "lrs": lrs,
            "budget": replace(budget, dream_lr=lrs["sleep"])}
