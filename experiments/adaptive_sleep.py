"""Adaptive sleep on trained models: held-out exact accuracy and mean passes per slept window as ε varies
(Adaptive(ε, N_max)), beside fixed N′ = 1..N_max, per run and mean over runs.

    PYTHONPATH=. python experiments/adaptive_sleep.py RUN_DIR [RUN_DIR ...] [--eps 0.3 1e-1 ...] [--max-passes 8]

Each RUN_DIR is a training run (lmsleep train / sweep): its `sweep-config.json` (or `train.json`) gives the
task, and `checkpoint/` (or the directory itself, a model directory) the model. The held-out set is the one lmsleep.train evaluates on
(task.generate(options, eval_size, EVAL_SEED)), scored the same way: windows whose loss mask is zero are
slept on (N′ passes, or adaptive), the answer window gets its wake pass. "passes" is the mean, over the
slept windows of every example, of the passes each ran (wake pass included). Prints a Markdown table
(exact / passes, per run and mean), then one JSON line. It also prints how much the fast state still moves at each pass
n = 2..N_max (the median relative change ‖S_n − S_{n−1}‖ / ‖S_n‖ over the slept windows of 64 held-out
examples, the windows before each one slept at the trained N): the scale on which ε acts.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from lmsleep import Adaptive
from lmsleep.adaptive import relative_change
from lmsleep.io import load_model
from lmsleep.tasks.example import batch, score
from lmsleep.train import EVAL_SEED, TrainConfig


def run_config(run: Path) -> TrainConfig:
    for name in ("sweep-config.json", "train.json"):
        if (run / name).is_file():
            return TrainConfig.from_json((run / name).read_text(), str(run / name))
    raise FileNotFoundError(f"{run} has neither sweep-config.json nor train.json: not a training run")


@torch.no_grad()
def evaluate(model, data: dict, passes) -> dict:
    """Exact accuracy and mean passes per slept window of `model` on `data` (batch()) at `passes`."""
    predicted, slept = [], []
    for start in range(0, data["tokens"].shape[0], 64):
        part = {k: v[start : start + 64] for k, v in data.items()}
        logits, used = model(part["tokens"], part["loss_mask"], passes=passes, return_passes=True)
        predicted.append(logits.argmax(-1))
        windows = model.windows(part["tokens"].shape[1])
        sleeps = [i for i, (a, b) in enumerate(windows) if not part["loss_mask"][:, a:b].any()]
        slept.append(used[:, sleeps].float())
    return {"exact": score(torch.cat(predicted), data)["exact"], "passes": torch.cat(slept).mean().item()}


@torch.no_grad()
def change_per_pass(model, data: dict, max_passes: int, examples: int = 64) -> list[float]:
    """Median relative change of the looped fast states at passes 2..max_passes, over the slept windows of
    the first `examples` examples, each window reached by sleeping the ones before at the trained N."""
    tokens, mask = data["tokens"][:examples], data["loss_mask"][:examples]
    memory, changes = model.empty_memory(), [[] for _ in range(2, max_passes + 1)]
    fast = model.fast_blocks()
    for a, b in model.windows(tokens.shape[1]):
        if mask[:, a:b].any():
            break
        window_start = memory
        _, h1, woke = model.wake(tokens[:, a:b], memory)
        previous = [woke[i].state for i in fast]
        for n in range(2, max_passes + 1):
            slept = model.sleep(h1, woke, window_start, n)
            current = [slept[i].state for i in fast]
            changes[n - 2].append(relative_change(previous, current))
            previous = current
        memory = model.evict(model.sleep(h1, woke, window_start, model.config.sleep_passes))
    return [torch.cat(c).median().item() for c in changes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 3e-2, 1e-2, 3e-3, 1e-3])
    parser.add_argument("--max-passes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = [(f"N'={n}", n) for n in range(1, args.max_passes + 1)]
    settings += [(f"eps={eps:g}", Adaptive(eps, args.max_passes)) for eps in args.eps]
    results: dict[str, dict[str, dict]] = {}
    changes: dict[str, list[float]] = {}
    for run in args.runs:
        cfg = run_config(run)
        model = load_model(run / "checkpoint" if (run / "checkpoint").is_dir() else run).eval()
        data = batch(cfg.task_module().generate(cfg.task_options_object(), cfg.eval_size, EVAL_SEED))
        results[run.name] = {label: evaluate(model, data, passes) for label, passes in settings}
        changes[run.name] = change_per_pass(model, data, args.max_passes)
        print(f"{run.name}: done (trained at N = {model.config.sleep_passes})", flush=True)
    mean = {label: {key: statistics.mean(r[label][key] for r in results.values()) for key in ("exact", "passes")}
            for label, _ in settings}
    print_table(results, mean)
    print(f"\nmedian relative change ‖S_n − S_(n−1)‖ / ‖S_n‖ at pass n = 2..{args.max_passes}:")
    for name, values in changes.items():
        print(f"- {name}: " + ", ".join(f"{c:.3f}" for c in values))
    print(json.dumps({"adaptive_sleep": {"max_passes": args.max_passes, "runs": results, "mean": mean,
                                         "median_change_per_pass": changes}}))


def print_table(results: dict[str, dict[str, dict]], mean: dict[str, dict]) -> None:
    """One row per setting: held-out exact accuracy / mean passes per slept window, per run and mean."""
    names = list(results)
    print("\n| setting | " + " | ".join(names) + " | mean |")
    print("| --- |" + " --- |" * (len(names) + 1))
    for label in mean:
        cells = [results[name][label] for name in names] + [mean[label]]
        print(f"| {label} | " + " | ".join(f"{c['exact']:.3f} / {c['passes']:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
