"""Training throughput: tokens/s of a full training step (forward, backward, optimiser) for the hybrid at
N = 1..4 and the two transformer baselines, equal width and depth, at T = 512 and 2048.

Each sequence has T/L = 4 windows; the loss is on the last window only (as in the paper's tasks), so the
first three are consolidation windows and get N passes. The batch holds 4096 tokens at every T.

    python benchmarks/bench_train.py [--width 256 --repeats 3] [--profile]

--profile also prints, per row, the ops taking the most time over 2 more steps (torch.profiler), with
their call counts: where a step's time goes.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import final_json, median_seconds, print_table  # noqa: E402

from lmsleep import SleepConfig, SleepLM  # noqa: E402
from lmsleep.train import TrainConfig, build_optimizers  # noqa: E402

MODELS = {
    **{f"hybrid-N{n}": dict(layout="AGAG", sleep_passes=n, eviction="hard") for n in (1, 2, 3, 4)},
    "full-attention": dict(layout="AAAA", sleep_passes=1, eviction="none"),
    "sliding-window": dict(layout="AAAA", sleep_passes=1, eviction="sliding"),
}


def training_step(name: str, time_len: int, width: int, batch_tokens: int):
    """A full training step of model `name` at T = time_len, as a function, and the tokens it trains on."""
    heads = width // 64
    window = time_len // 4
    config = SleepConfig(vocab_size=256, d_model=width, n_heads=heads, head_dim=64, n_fast_heads=heads,
                         fast_key_dim=64, fast_value_dim=64, mlp_hidden=4 * width, window=window, **MODELS[name])
    torch.manual_seed(0)
    model = SleepLM(config)
    optimizers = build_optimizers(model, TrainConfig())
    batch = max(1, batch_tokens // time_len)
    tokens = torch.randint(0, 256, (batch, time_len))
    mask = torch.zeros_like(tokens)
    mask[:, -window:] = 1

    def step():
        loss = model.loss(tokens, tokens.roll(-1, 1), mask)
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in optimizers:
            o.step()

    return step, batch * time_len


def profile_table(step, rows: int = 8) -> str:
    """The ops with the most self CPU time over 2 steps, with their call counts."""
    from torch.profiler import profile

    step()
    with profile() as prof:
        for _ in range(2):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="also print the top ops of each row")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for time_len in args.lengths:
        for name in args.models:
            step, tokens = training_step(name, time_len, args.width, args.batch_tokens)
            seconds = median_seconds(step, args.repeats)
            rows.append({"model": name, "T": time_len, "step_s": seconds, "tokens_per_s": tokens / seconds})
            print(f"  {name} T={time_len}: {tokens / seconds:.0f} tokens/s", flush=True)
            if args.profile:
                print(profile_table(step), flush=True)
    print_table(rows, ["model", "T", "step_s", "tokens_per_s"])
    summary = {}
    for time_len in args.lengths:
        at = {r["model"]: r for r in rows if r["T"] == time_len}
        if "hybrid-N1" in at and "full-attention" in at:
            summary[f"hybrid_N1_vs_full_attention_T{time_len}"] = at["hybrid-N1"]["tokens_per_s"] / at["full-attention"]["tokens_per_s"]
        for n in (2, 3, 4):
            if f"hybrid-N{n}" in at and "hybrid-N1" in at:
                # Linear growth in N means step time ≤ N × the N = 1 step time.
                summary[f"step_time_N{n}_over_N_times_N1_T{time_len}"] = at[f"hybrid-N{n}"]["step_s"] / (n * at["hybrid-N1"]["step_s"])
    for key, value in summary.items():
        print(f"{key} = {value:.3f}")
    final_json("train_throughput", {"width": args.width, "batch_tokens": args.batch_tokens, "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
