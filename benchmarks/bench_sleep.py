"""Sleep stall: wall time of one sleep (passes 2..N over a full window) against (N − 1) × the time of
prefilling L tokens (one wake pass over the window as a block), for N = 2..8. A ratio near 1 means a sleep
costs what its extra passes must cost and nothing more. For each N the prefill and the sleep are timed in
turns (`--repeats` calls of each), and the ratio is that of their medians.

    python benchmarks/bench_sleep.py [--width 256 --window 512 --repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import final_json, interleaved_medians, print_table  # noqa: E402
from bench_stream import build  # noqa: E402

from lmsleep.stream import SleepStream  # noqa: E402


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--passes", type=int, nargs="+", default=list(range(2, 9)))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build("sleep-N4", args.width, args.window)
    window = torch.randint(0, 256, (1, args.window), generator=torch.Generator().manual_seed(0))
    memory = model.empty_memory()

    def prefill():  # one wake pass over a window, as the stream does for a block of L tokens
        return model.wake(window, memory)

    _, h1, woke = prefill()
    rows = []
    for passes in args.passes:
        SleepStream(model, passes=passes)  # refuses a pass count the stream would refuse
        # Prefill and sleep in turns, so that the ratio compares calls made under the same host load.
        prefill_s, sleep_s = interleaved_medians([prefill, lambda: model.sleep(h1, woke, memory, passes)],
                                                 args.repeats)
        rows.append({"N": passes, "prefill_ms": 1e3 * prefill_s, "sleep_ms": 1e3 * sleep_s,
                     "expected_ms": 1e3 * (passes - 1) * prefill_s, "ratio": sleep_s / ((passes - 1) * prefill_s)})
    prefill_s = statistics.median(r["prefill_ms"] for r in rows) / 1e3
    print(f"prefill of L = {args.window} tokens: {1e3 * prefill_s:.2f} ms, median over the rows "
          f"(width {args.width}, AGAG)")
    print_table(rows, ["N", "prefill_ms", "sleep_ms", "expected_ms", "ratio"])
    worst = max(r["ratio"] for r in rows)
    print(f"worst ratio {worst:.3f} (target <= 1.15)")
    final_json("sleep_stall", {"width": args.width, "window": args.window, "prefill_ms": 1e3 * prefill_s,
                               "rows": rows, "worst_ratio": worst})


if __name__ == "__main__":
    main()
