"""Wake latency and memory vs context: per-token decode latency (batch 1, median) and peak resident memory
at growing stream lengths, for the sleep model (L = 512, N = 4), the same hybrid at N = 1, a full-attention
transformer with a KV cache and a sliding-window transformer, all of the same width and depth.

Each (model, length) runs in its own process so that peak RSS is that configuration's own. The stream is
prefilled to `length` in blocks of L tokens, then `--measure` tokens are fed one at a time; the median of
those per-token times is the wake latency, and (mean − median) the amortised sleep cost per token.

    python benchmarks/bench_stream.py                       # 1k, 4k, 16k, 64k (the full-attention 64k run takes minutes)
    python benchmarks/bench_stream.py --lengths 1024 4096   # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import final_json, peak_rss_mib, print_table  # noqa: E402

from lmsleep import SleepConfig, SleepLM  # noqa: E402
from lmsleep.stream import SleepStream  # noqa: E402

MODELS = {
    "sleep-N4": dict(layout="AGAG", sleep_passes=4, eviction="hard"),
    "hybrid-N1": dict(layout="AGAG", sleep_passes=1, eviction="hard"),
    "full-attention": dict(layout="AAAA", sleep_passes=1, eviction="none"),
    "sliding-window": dict(layout="AAAA", sleep_passes=1, eviction="sliding"),
}


def build(name: str, width: int, window: int) -> SleepLM:
    heads = width // 64
    config = SleepConfig(vocab_size=256, d_model=width, n_heads=heads, head_dim=64, n_fast_heads=heads,
                         fast_key_dim=64, fast_value_dim=64, mlp_hidden=4 * width, window=window, **MODELS[name])
    torch.manual_seed(0)
    return SleepLM(config).eval()


def state_bytes(stream: SleepStream) -> int:
    tensors = [t for m in stream.memory for t in m.tensors().values()] + stream.features
    return sum(t.numel() * t.element_size() for t in tensors)


@torch.no_grad()
def worker(name: str, length: int, measure: int, width: int, window: int) -> dict:
    model = build(name, width, window)
    stream = SleepStream(model)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (1, length + measure), generator=generator)
    started = time.perf_counter()
    for start in range(0, length, window):
        stream.feed(tokens[:, start : min(start + window, length)])
    prefill = time.perf_counter() - started
    times, sleeping, peak_state = [], [], 0
    for t in range(length, length + measure):
        sleeps = stream.sleeps
        started = time.perf_counter()
        stream.feed(tokens[:, t : t + 1])
        elapsed = time.perf_counter() - started
        (sleeping if stream.sleeps > sleeps else times).append(elapsed)
        peak_state = max(peak_state, state_bytes(stream))
    times.sort()
    median = times[len(times) // 2]
    # The tokens that fill a window also pay for the sleep: their excess over a wake token, spread over all.
    sleep_per_token = sum(s - median for s in sleeping) / measure
    return {"model": name, "length": length, "wake_ms": 1e3 * median, "p90_ms": 1e3 * times[int(0.9 * len(times))],
            "sleep_ms_per_token": 1e3 * sleep_per_token, "state_mib": peak_state / 2**20,
            "peak_rss_mib": peak_rss_mib(), "prefill_s": prefill, "sleeps": stream.sleeps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--measure", type=int, default=1024, help="tokens timed one by one (default 1024 = 2 windows)")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.measure, args.width, args.window)))
        return
    rows = []
    for name in args.models:
        for length in args.lengths:
            command = [sys.executable, __file__, "--worker", name, str(length), "--measure", str(args.measure),
                       "--width", str(args.width), "--window", str(args.window)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(f"  {name} at {length}: wake {rows[-1]['wake_ms']:.3f} ms/token, peak RSS {rows[-1]['peak_rss_mib']:.0f} MiB",
                  flush=True)
    print()
    print_table(rows, ["model", "length", "wake_ms", "p90_ms", "sleep_ms_per_token", "state_mib", "peak_rss_mib", "prefill_s"])
    summary = {}
    for name in args.models:
        mine = {r["length"]: r for r in rows if r["model"] == name}
        lo, hi = min(mine), max(mine)
        summary[name] = {"latency_ratio_longest_vs_shortest": mine[hi]["wake_ms"] / mine[lo]["wake_ms"]}
        above_4k = [r["peak_rss_mib"] for length, r in mine.items() if length >= 4096]
        if len(above_4k) > 1:
            summary[name]["rss_spread_from_4k"] = max(above_4k) / min(above_4k) - 1
    print()
    for name, values in summary.items():
        print(f"{name}: " + ", ".join(f"{k} = {v:.3f}" for k, v in values.items()))
    final_json("stream", {"width": args.width, "window": args.window, "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
