"""`lmsleep demo`: train a tiny sleep model on Rule 110 for about a minute, then stream through it.

The stream shows the model at work: each window of bits is read one token at a time (one wake pass per
token), the model sleeps when the window fills (N passes into its fast weights) and evicts its KV cache;
after the last window it answers the labels from its fast-weight memory alone.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .io import load_model
from .stream import SleepStream
from .tasks import decode, encode, rule110
from .train import TrainConfig, Trainer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    parser.add_argument("--steps", type=int, default=150, help="training steps (default 150, about a minute)")
    parser.add_argument("--passes", type=int, default=2, help="sleep passes N (default 2)")
    parser.add_argument("--t", type=int, default=1, help="Rule 110 steps t (default 1)")
    parser.add_argument("--examples", type=int, default=8, help="held-out examples to stream (default 8)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    cfg = TrainConfig(
        task="rule110", task_options={"t_min": args.t, "t_max": args.t}, model={"sleep_passes": args.passes},
        steps=args.steps, batch_size=32, eval_every=max(1, args.steps // 3), eval_size=256,
        log_every=max(1, args.steps // 10), checkpoint_every=args.steps, seed=args.seed,
    )
    options = cfg.task_options_object()
    print(f"lmsleep demo: Rule 110 with {options.strings} strings of {options.bits} bits, t = {args.t}; "
          f"a {cfg.model_config().layout} hybrid, window L = {options.window}, N = {args.passes} sleep passes.")
    print(f"Training {args.steps} steps (about a minute on 2 cores), then streaming {args.examples} held-out examples.")
    started = time.perf_counter()
    records = Trainer(cfg, args.out, progress=True).run()
    final = [r for r in records if "eval" in r][-1]["eval"][f"N{args.passes}"]
    print(f"trained in {time.perf_counter() - started:.0f} s; held-out exact accuracy {final['exact']:.3f}, "
          f"per-label {final['answer']:.3f} (chance: {0.5 ** options.strings:.3f} / 0.5); metrics in {args.out}/metrics.jsonl")

    model = load_model(Path(args.out) / "checkpoint").eval()
    examples = rule110.generate(options, args.examples, seed=10_000 + args.seed)
    right = 0
    for index, example in enumerate(examples):
        stream = SleepStream(model)
        bits = example.raw["strings"]
        for window in bits:
            stream.feed(torch.tensor(encode(window)))
        if index == 0:  # show that the memory state survives a save / restore
            memory_file = Path(args.out) / "memory.safetensors"
            stream.save(memory_file)
            stream = SleepStream.load(model, memory_file)
        answer = decode(stream.generate(torch.tensor([encode("|")]), options.strings)[0].tolist())
        truth = "".join(rule110.solve(example.raw))
        right += answer == truth
        if index < 4:
            print(f"  windows {' '.join(bits)} -> slept {stream.sleeps}x, kept only S; "
                  f"answers {answer} (true {truth}) {'ok' if answer == truth else 'wrong'}")
    print(f"streamed {len(examples)} examples: {right}/{len(examples)} answered exactly right "
          f"(memory state saved to and restored from {args.out}/memory.safetensors on the first)")
    return 0
