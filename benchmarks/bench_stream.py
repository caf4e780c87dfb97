"""Wake latency and memory vs context: per-token decode latency (batch 1, median) and peak resident memory
at growing stream lengths, for the sleep model (L = 512, N = 4), the same hybrid at N = 1, a full-attention
transformer with a KV cache and a sliding-window transformer, all of the same width and depth.

Each (model, length) runs in its own process so that peak RSS is that configuration's own. The stream is
prefilled to `length` in blocks of L tokens, then `--measure` tokens are fed one at a time; the median of
those per-token times is the wake latency, and (mean − median) the amortised sleep cost per token.

Processes run minutes apart, and a shared host's speed drifts by ±10% over that time, so the latency
ratio of the longest to the shortest length is also measured side by side: one process per model holds
two streams, prefilled to the shortest and the longest length, and feeds them one token each in turn
(`paired_ratio` in the summary: median long / median short over the same interleaved stretch).

    python benchmarks/bench_stream.py                       # 1k, 4k, 16k, 64k (the full-attention 64k run takes minutes)
    python benchmarks/bench_stream.py --lengths 1024 4096   # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
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


def _stream(model: SleepLM, length: int, measure: int, window: int):
    """A stream prefilled to `length` tokens in blocks of `window`, the tokens to time after them, and the
    prefill's wall time."""
    stream = SleepStream(model)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (1, length + measure), generator=generator)
    started = time.perf_counter()
    for start in range(0, length, window):
        stream.feed(tokens[:, start : min(start + window, length)])
    return stream, tokens[:, length:], time.perf_counter() - started


def _feed_one(stream: SleepStream, token: torch.Tensor) -> tuple[float, bool]:
    """Seconds to feed one token, and whether the stream slept on it."""
    sleeps = stream.sleeps
    started = time.perf_counter()
    stream.feed(token)
    return time.perf_counter() - started, stream.sleeps > sleeps


@torch.no_grad()
def worker(name: str, length: int, measure: int, width: int, window: int) -> dict:
    stream, tokens, prefill = _stream(build(name, width, window), length, measure, window)
    times, sleeping, peak_state = [], [], 0
    for t in range(measure):
        elapsed, slept = _feed_one(stream, tokens[:, t : t + 1])
        (sleeping if slept else times).append(elapsed)
        peak_state = max(peak_state, state_bytes(stream))
    times.sort()
    median = times[len(times) // 2]
    # The tokens that fill a window also pay for the sleep: their excess over a wake token, spread over all.
    sleep_per_token = sum(s - median for s in sleeping) / measure
    return {"model": name, "length": length, "wake_ms": 1e3 * median, "p90_ms": 1e3 * times[int(0.9 * len(times))],
            "sleep_ms_per_token": 1e3 * sleep_per_token, "state_mib": peak_state / 2**20,
            "peak_rss_mib": peak_rss_mib(), "prefill_s": prefill, "sleeps": stream.sleeps}


@torch.no_grad()
def paired_worker(name: str, short: int, long: int, measure: int, width: int, window: int) -> dict:
    """Wake latency at two lengths measured in turns, token by token, in one process (see the docstring)."""
    model = build(name, width, window)
    streams = {length: _stream(model, length, measure, window)[:2] for length in (short, long)}
    times = {short: [], long: []}
    for t in range(measure):
        for length in (short, long) if t % 2 == 0 else (long, short):
            stream, tokens = streams[length]
            elapsed, slept = _feed_one(stream, tokens[:, t : t + 1])
            if not slept:
                times[length].append(elapsed)
    medians = {length: statistics.median(values) for length, values in times.items()}
    return {"model": name, "short": short, "long": long, "wake_ms_short": 1e3 * medians[short],
            "wake_ms_long": 1e3 * medians[long], "paired_ratio": medians[long] / medians[short]}


def _run_worker(args, *worker_args: str) -> dict:
    command = [sys.executable, __file__, *worker_args, "--measure", str(args.measure), "--width", str(args.width),
               "--window", str(args.window)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--measure", type=int, default=1024, help="tokens timed one by one (default 1024 = 2 windows)")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "LENGTH"), help=argparse.SUPPRESS)
    parser.add_argument("--paired-worker", nargs=3, metavar=("MODEL", "SHORT", "LONG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.measure, args.width, args.window)))
        return
    if args.paired_worker:
        name, short, long = args.paired_worker
        print(json.dumps(paired_worker(name, int(short), int(long), args.measure, args.width, args.window)))
        return
    rows = []
    for name in args.models:
        for length in args.lengths:
            rows.append(_run_worker(args, "--worker", name, str(length)))
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
    if len(args.lengths) > 1:
        for name in args.models:
            paired = _run_worker(args, "--paired-worker", name, str(min(args.lengths)), str(max(args.lengths)))
            summary[name]["paired_ratio"] = paired["paired_ratio"]
            print(f"  {name}, {paired['short']} and {paired['long']} in turns: {paired['wake_ms_short']:.3f} and "
                  f"{paired['wake_ms_long']:.3f} ms/token", flush=True)
    print()
    for name, values in summary.items():
        print(f"{name}: " + ", ".join(f"{k} = {v:.3f}" for k, v in values.items()))
    final_json("stream", {"width": args.width, "window": args.window, "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
