"""CPU seconds of one full sleep per passage on the knowledge world (issue 19, item 5): the 2-level base of
`lmsleep continual bench knowledge`, a sleep as its `sleep (2 levels)` system runs it (read the passage,
consolidate it into a new expert, dream and learn the kept dreams into that expert), timed in CPU seconds of
this process (time.process_time), consolidation and dreaming apart. Also the result: closed-book accuracy on
the passage and in-context reading on the probe, to compare implementations at an equal result.

    OMP_NUM_THREADS=1 python benchmarks/bench_sleep_cost.py [--passages 3 --steps 40 --profile out.prof]
"""
from __future__ import annotations

import argparse
import cProfile
import os
import statistics
import sys
import time
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import final_json, print_table  # noqa: E402

from lmsleep.continual.bench import knowledge, knowledge_setup as setup, knowledge_systems as ks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=3, help="test passages slept on (one sleep each)")
    parser.add_argument("--steps", type=int, default=40, help="seeding steps (the knowledge benchmark's 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dream-lr", type=float, default=1e-2, help="rate the kept dreams are learnt at")
    parser.add_argument("--no-generator", action="store_true", help="dream without a trained generator (faster setup)")
    parser.add_argument("--profile", help="write a cProfile of the sleeps here")
    parser.add_argument("--cache-dir")
    parser.add_argument("--base-steps", type=int, default=knowledge.BASE_STEPS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base, _ = setup.base_model(2, args)
    budget = setup.budget_of(argparse.Namespace(steps=args.steps, upward=0))
    budget = replace(budget, dream_lr=args.dream_lr)
    generator = None
    if not args.no_generator:
        started = time.process_time()
        generator = ks.train_generator(base, setup.passages(setup.TRAINING, args.seed, setup.GENERATOR_PASSAGES),
                                       budget, args.seed)
        print(f"dream generator trained in {time.process_time() - started:.1f} CPU s")
    probe = setup.probe(setup.PROBE + args.seed)
    profiler = cProfile.Profile() if args.profile else None
    rows = []
    for t in range(args.passages):
        raw = setup.world(setup.TEST + setup.MAX_PER_SEED * args.seed + t)
        system = ks.sleeper(base, budget, args.seed * 101 + t, generator)
        clock = {}

        def split(model):
            clock["consolidated"] = time.process_time()

        if profiler:
            profiler.enable()
        started = time.process_time()
        system.learn(raw, args.seed * 101 + t, after_consolidation=split)
        ended = time.process_time()
        if profiler:
            profiler.disable()
        rows.append({"passage": t, "consolidation_s": clock["consolidated"] - started,
                     "dreaming_s": ended - clock["consolidated"], "sleep_s": ended - started,
                     "accuracy": ks.accuracy(system.model, raw), "reading": ks.reading(system.model, probe)})
        print_table(rows[-1:], list(rows[-1]))
    mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0] if k != "passage"}
    print(f"mean over {len(rows)} passages, {torch.get_num_threads()} thread:")
    print_table([mean], list(mean))
    if profiler:
        profiler.dump_stats(args.profile)
    final_json("sleep_cost", {**vars(args), **mean, "rows": rows})


if __name__ == "__main__":
    main()
