"""Eager vs torch.compile (inductor) training step of the paper-1 model, side by side in one run.

The step is the Trainer's: the loss (`SleepLM.loss`, forward and backward) on one training batch of the
task, gradient clipping, the optimisers' step. "compiled" compiles the loss function (the model's forward
and backward; the native fast-weight op is one node of the graph, `lmsleep::gated_delta_rule_native`), the
optimisers run eagerly in both. `SleepLM.loss` reads the loss mask to choose each window's number of
passes, so the compiled loss has a few graph breaks there (the op itself traces without one).

Shapes: the Rule 110 2-block model the experiments train (`lmsleep.sweep.QUICK`: layout AG, d_model 64,
batch 32, window 8) and the same at width 256; N = --passes.

    python benchmarks/bench_compile.py [--passes 4] [--widths 64 256] [--repeats 20] [--threads 2]

Columns: eager and compiled step (median seconds over interleaved repeats), speedup, compile_s (the first
compiled step minus a compiled step's median: the compile time, cold unless --warm-cache), and max |Δloss| between the two over the
measured steps (the same batches in both).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import final_json, interleaved_medians, print_table  # noqa: E402

from lmsleep.sweep import QUICK  # noqa: E402
from lmsleep.train import TrainConfig, Trainer  # noqa: E402


def trainer(width: int, passes: int, out_dir: str) -> Trainer:
    base = copy.deepcopy(QUICK["base"])
    base["model"] = {**base["model"], "d_model": width, "sleep_passes": passes}
    base["eval_size"] = 1  # the Trainer builds a held-out set; not used here
    return Trainer(TrainConfig(**base), out_dir, progress=False)


def step_function(run: Trainer, loss_fn):
    """One training step of `run` with `loss_fn` in place of its loss; returns the loss. The batch is the
    same at every call (the data generation is not what is measured)."""
    data = run._train_batch()

    def step():
        loss = loss_fn(data["tokens"], data["targets"], data["loss_mask"])
        for o in run.optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.clip)
        for o in run.optimizers:
            o.step()
        return loss.detach()

    return step


def measure(width: int, passes: int, repeats: int, out_dir: str) -> dict:
    eager_run, compiled_run = trainer(width, passes, out_dir + "/eager"), trainer(width, passes, out_dir + "/compiled")
    eager = step_function(eager_run, eager_run.loss_fn)
    compiled = step_function(compiled_run, torch.compile(compiled_run.loss_fn))
    losses = {"eager": [eager()]}
    started = time.perf_counter()
    losses["compiled"] = [compiled()]
    first_compiled = time.perf_counter() - started

    def timed(fn, key):
        return lambda: losses[key].append(fn())

    eager_s, compiled_s = interleaved_medians([timed(eager, "eager"), timed(compiled, "compiled")], repeats)
    difference = max(abs(float(a) - float(b)) for a, b in zip(losses["eager"], losses["compiled"]))
    return {"width": width, "N": passes, "params": sum(p.numel() for p in eager_run.model.parameters()),
            "eager_s": eager_s, "compiled_s": compiled_s, "speedup": eager_s / compiled_s,
            "compile_s": first_compiled - compiled_s,
            "max_loss_diff": difference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--warm-cache", action="store_true", help="let inductor reuse its on-disk cache")
    parser.add_argument("--out", default="/tmp/lmsleep-bench-compile", help="scratch run directory")
    args = parser.parse_args()
    # torch 2.13: a warm AOTAutograd cache replays an aliased output of this model with a garbage shape
    # (RuntimeError: shape '[94795713615640, ...]' is invalid), so it stays off, as TrainConfig.compile does.
    torch._functorch.config.enable_autograd_cache = False
    if not args.warm_cache:  # compile_s is the cold compile time, what a first run pays
        torch._inductor.config.force_disable_caches = True
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for width in args.widths:
        rows.append(measure(width, args.passes, args.repeats, f"{args.out}/w{width}"))
        print(f"  width {width}: eager {rows[-1]['eager_s'] * 1e3:.1f} ms, compiled {rows[-1]['compiled_s'] * 1e3:.1f} ms "
              f"({rows[-1]['speedup']:.2f}x), compile {rows[-1]['compile_s']:.0f} s", flush=True)
    print_table(rows, ["width", "N", "params", "eager_s", "compiled_s", "speedup", "compile_s", "max_loss_diff"])
    final_json("compile", {"passes": args.passes, "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
