"""Dreaming's isolated fine-tunes (issue 12, Speed): the kept dreams' LoRA fine-tunes run batched (m copies
stacked along the batch, one forward and backward per step) against sequential (one copy at a time, the
same code with m = 1), side by side in one process, timed in turns. Target: batched ≥ 3× faster at m = 15.
Also reports how far the two results are apart (they compute the same thing up to rounding), and the time
of one full sleep at the size of `lmsleep continual demo` (its model and its seeding and dreaming
settings; untrained weights, which take as long): consolidation and dreaming separately, in CPU seconds of this
process (time.process_time: the work itself, whatever else the machine runs).

    python benchmarks/bench_dreams.py [--copies 15 --vocab 128 --width 64 --layout AGAG --threads 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import final_json, interleaved_medians, print_table  # noqa: E402

from lmsleep import SleepConfig, SleepLM  # noqa: E402
from lmsleep.continual import demo  # noqa: E402
from lmsleep.continual.learner import ContinualLearner, LearnerConfig  # noqa: E402
from lmsleep.continual.lora import finetune  # noqa: E402


def dreams(vocab: int, copies: int, examples: int, length: int, prompt: int) -> list:
    """One SFT dataset per kept dream: `examples` sequences of `length` tokens, the loss after `prompt`."""
    generator = torch.Generator().manual_seed(0)
    data = []
    for _ in range(copies):
        sequence = torch.randint(0, vocab, (examples, length + 1), generator=generator)
        mask = torch.zeros(examples, length, dtype=torch.long)
        mask[:, prompt:] = 1
        data.append((sequence[:, :-1], sequence[:, 1:], mask))
    return data


def full_sleep(repeats: int) -> dict:
    """Median CPU seconds of one consolidation (a context reset) and one dreaming at the demo's size."""
    vocab = 105  # the facts vocabulary
    config = SleepConfig(vocab_size=vocab, window=64, **demo.MODEL)
    generator = torch.Generator().manual_seed(1)
    context = torch.randint(0, vocab, (1, 20), generator=generator)
    questions = torch.randint(0, vocab, (9, 12), generator=generator)
    times = {"consolidation": [], "dreaming": []}
    for _ in range(repeats):
        torch.manual_seed(0)
        learner = ContinualLearner(SleepLM(config), LearnerConfig(periods=[8, 16], seeding=demo.SEEDING,
                                                                   dreaming=demo.DREAMING, prompt=[1]))
        learner.read(context)

        def measure(model):  # a stand-in for τ, as costly as the demo's closed-book check
            with torch.no_grad():
                return -float(model.loss(questions[:, :-1], questions[:, 1:], torch.ones_like(questions[:, 1:])))

        started = time.process_time()
        learner.reset_context()
        times["consolidation"].append(time.process_time() - started)
        started = time.process_time()
        learner.dream(measure, context=context)
        times["dreaming"].append(time.process_time() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=15, help="m, kept dreams fine-tuned")
    parser.add_argument("--vocab", type=int, default=128)
    parser.add_argument("--width", type=int, default=64, help="d_model")
    parser.add_argument("--layout", default="AGAG")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--length", type=int, default=64, help="tokens per dream sequence")
    parser.add_argument("--prompt", type=int, default=16, help="leading tokens without loss (the context's cue)")
    parser.add_argument("--examples", type=int, default=1, help="sequences per dream")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="fine-tuning steps per dream")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = SleepConfig(vocab_size=args.vocab, d_model=args.width, layout=args.layout, n_heads=4,
                         head_dim=args.width // 4, n_fast_heads=4, fast_key_dim=args.width // 4,
                         fast_value_dim=args.width // 4, mlp_hidden=3 * args.width, window=args.window)
    model = SleepLM(config).eval()
    data = dreams(args.vocab, args.copies, args.examples, args.length, args.prompt)
    settings = dict(rank=args.rank, alpha=2.0 * args.rank, steps=args.steps, lr=1e-2, seed=0)
    results = {}

    def run(batched: bool):
        results[batched] = finetune(model, data, batched=batched, **settings)

    batched_s, sequential_s = interleaved_medians([lambda: run(True), lambda: run(False)], args.repeats)
    apart = max(float((x - y).abs().max()) for x, y in
                zip(results[True].adapters.parameters(), results[False].adapters.parameters()))
    loss_apart = float((results[True].losses - results[False].losses).abs().max())
    speedup = sequential_s / batched_s
    parameters = sum(p.numel() for p in model.parameters())
    print(f"m = {args.copies} dreams x {args.examples} x {args.length} tokens, {args.steps} Adam steps, rank "
          f"{args.rank}; model {args.layout} d_model {args.width} vocab {args.vocab} ({parameters} parameters), "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    rows = [{"mode": "batched", "seconds": batched_s, "ms_per_step": 1e3 * batched_s / args.steps},
            {"mode": "sequential", "seconds": sequential_s, "ms_per_step": 1e3 * sequential_s / args.steps}]
    print_table(rows, ["mode", "seconds", "ms_per_step"])
    print(f"speed-up {speedup:.2f}x (target >= 3); batched vs sequential: adapters differ by <= {apart:.2g}, "
          f"losses by <= {loss_apart:.2g}")
    sleep = full_sleep(args.repeats)
    print(f"one full sleep at the demo's size ({demo.MODEL}; seeding {demo.SEEDING}; dreaming {demo.DREAMING}):")
    print_table([{"stage": name, "cpu_seconds": seconds} for name, seconds in sleep.items()], ["stage", "cpu_seconds"])
    final_json("dreams_finetune", {**vars(args), "parameters": parameters, "batched_s": batched_s,
                                   "sequential_s": sequential_s, "speedup": speedup, "adapters_apart": apart,
                                   "losses_apart": loss_apart, "target_met": speedup >= 3,
                                   "sleep_consolidation_s": sleep["consolidation"], "sleep_dreaming_s": sleep["dreaming"]})


if __name__ == "__main__":
    main()
