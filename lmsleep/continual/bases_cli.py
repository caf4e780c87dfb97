"""`lmsleep continual base WORLD`: train (once) or load the pretrained base(s) a world's benchmarks use, and
print how well each reads in context and answers without it. The benchmarks call the same functions, so a
base built here is the one they load from the cache."""
from __future__ import annotations

import argparse
import json

from .bench import load

WORLDS = {"facts": "knowledge", "languages": "sequential", "puzzles": "puzzles"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("world", choices=sorted(WORLDS), help="which world's base")
    parser.add_argument("--cache-dir", default=None, help="where pretrained bases are cached (default ~/.cache/lmsleep)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")


def bench_arguments(world: str, cache_dir) -> argparse.Namespace:
    """The arguments the world's benchmark runs with by default (so the base is the one it uses)."""
    bench = load(WORLDS[world])
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([])
    args.cache_dir = cache_dir
    return args


def run(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    reports = load(WORLDS[args.world]).bases(bench_arguments(args.world, args.cache_dir))
    for name, report in reports.items():
        shown = {k: v for k, v in report.items() if k not in ("config",)}
        print(f"{name}: {json.dumps(shown, sort_keys=True)}")
    return 0
