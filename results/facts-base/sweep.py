"""Search for a facts base that learns to read fast: train one setting for a wall-clock budget on one thread,
evaluating in-context accuracy on held-out passages about new entities (name pool 2) every `--every` steps.

    python results/facts-base/sweep.py NAME '{"model": {...}, "task_options": {...}, ...}' --seconds 150

Prints one JSON line per evaluation: {"name", "step", "wall_s", "in_context", "closed_book"}, each accuracy
{"all", "vf0": facts stated name first, "vf1": value first}.
"""
import argparse
import json
import time

import torch

from lmsleep.tasks import batch, facts, score
from lmsleep.train import TrainConfig, Trainer


@torch.no_grad()
def accuracy(model, data) -> float:
    model.eval()
    predicted = torch.cat([model(data["tokens"][i : i + 128]).argmax(-1) for i in range(0, len(data["tokens"]), 128)])
    scores = score(predicted, data)
    return {"all": round(scores["answer"], 4), **{f"vf{k}": round(v, 4) for k, v in scores["per_bucket"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("config", help="TrainConfig fields as JSON (task is facts)")
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--every", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    fields = {"steps": 100000, "min_lr_ratio": 1.0, "eval_size": 8, **json.loads(args.config), "task": "facts"}
    cfg = TrainConfig(**fields)
    trainer = Trainer(cfg, f"/tmp/facts-sweep/{args.name}", progress=False)
    options = cfg.task_options_object()
    held_out = {
        "in_context": batch(facts.generate(facts.Options(**{**vars(options), "pool": 2}), 512, 777)),
        "closed_book": batch(facts.generate(facts.Options(**{**vars(options), "pool": 2, "context": 0}), 256, 778)),
    }
    started = time.perf_counter()
    while True:
        trainer.train_step()
        if trainer.step % args.every == 0:
            wall = time.perf_counter() - started
            record = {"name": args.name, "step": trainer.step, "wall_s": round(wall, 1),
                      **{k: accuracy(trainer.model, v) for k, v in held_out.items()}}
            print(json.dumps(record), flush=True)
            if wall > args.seconds:
                break


if __name__ == "__main__":
    main()
