"""`lmsleep train`: train one model on one task (see lmsleep.train). Run it under torchrun for DDP:

    torchrun --nproc_per_node 2 -m lmsleep.cli train --task rule110 --out runs/r110
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import validate
from .config import ARCHITECTURES, MODEL_KINDS, model_fields
from .train import TrainConfig, Trainer

MODEL_FLAGS = {  # flag -> SleepConfig field
    "layout": "layout", "d_model": "d_model", "n_heads": "n_heads", "head_dim": "head_dim",
    "n_fast_heads": "n_fast_heads", "fast_key_dim": "fast_key_dim", "fast_value_dim": "fast_value_dim",
    "mlp_hidden": "mlp_hidden", "window": "window", "passes": "sleep_passes", "eviction": "eviction",
    "loop_start": "loop_start", "loop_end": "loop_end", "architecture": "architecture",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a TrainConfig JSON file (e.g. a run's train.json); flags override it")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    parser.add_argument("--init-from", metavar="DIR",
                        help="start from this model's weights (a run's checkpoint/ or run directory); same "
                             "architecture, any N: fine-tuning at another number of sleep passes")
    parser.add_argument("--task", help="rule110, depo or math")
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="a task option, e.g. --opt t_min=3 --opt t_max=3 (see `lmsleep data TASK -h`)")
    parser.add_argument("--stage", action="append", default=[], metavar="UNTIL:KEY=VALUE[,KEY=VALUE]",
                        help="a curriculum stage: task options for training steps before UNTIL, e.g. "
                             "--stage 500:k_max=1 --stage 1000:k_max=2 (held-out evaluation keeps --opt's)")
    parser.add_argument("--model", choices=list(MODEL_KINDS), default=None,
                        help="; ".join(f"{kind}: {text}" for kind, text in MODEL_KINDS.items()) + " (default sleep)")
    for flag in MODEL_FLAGS:
        kind = str if flag in ("layout", "eviction", "architecture") else int
        parser.add_argument("--" + flag.replace("_", "-"), type=kind, default=None,
                            **({"choices": list(ARCHITECTURES), "help": "; ".join(f"{name}: {text}" for name, text
                                                                                in ARCHITECTURES.items())}
                               if flag == "architecture" else {}))
    for name in ("steps", "batch_size", "warmup", "eval_every", "eval_size", "log_every", "checkpoint_every", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    for name in ("lr", "adamw_lr", "weight_decay", "clip", "min_lr_ratio"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    parser.add_argument("--optimizer", choices=("muon", "adamw"), default=None)
    parser.add_argument("--eval-passes", type=int, nargs="+", default=None, help="also evaluate at these N′")
    parser.add_argument("--activation-checkpointing", action="store_true", default=None)
    parser.add_argument("--tensorboard", action="store_true", default=None)
    parser.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the loss (opt-in: see results/benchmarks.md for when it pays off)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    data = _config_file(args.config) if args.config else {}
    for name in ("task", "steps", "batch_size", "warmup", "eval_every", "eval_size", "log_every", "checkpoint_every",
                 "seed", "lr", "adamw_lr", "weight_decay", "clip", "min_lr_ratio", "optimizer", "eval_passes",
                 "activation_checkpointing", "tensorboard", "compile", "init_from"):
        if getattr(args, name) is not None:
            data[name] = getattr(args, name)
    options = dict(data.get("task_options", {}))
    for item in args.opt:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--opt expects KEY=VALUE, got {item!r}")
        options[key] = validate.parse_int(f"--opt {key}", value)
    data["task_options"] = options
    if args.stage:
        data["curriculum"] = [_parse_stage(item) for item in args.stage]
    model = dict(data.get("model", {}))
    for flag, name in MODEL_FLAGS.items():
        if getattr(args, flag) is not None:
            model[name] = getattr(args, flag)
    data["model"] = model_fields(args.model, model) if args.model else model
    return validate.from_dict(TrainConfig, data, f"train config {args.config}" if args.config else "train config")


def _config_file(path: str) -> dict:
    """The fields of a TrainConfig JSON file (checked when the TrainConfig is built with the flags)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"--config: file not found: {path}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--config {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise validate.WrongType(f"--config {path} must hold a JSON object of TrainConfig fields")
    return data


def _parse_stage(item: str) -> dict:
    until, sep, settings = item.partition(":")
    pairs = [pair.partition("=") for pair in settings.split(",")] if sep else []
    if not until.isdigit() or not pairs or any(not key or not eq or not value.lstrip("-").isdigit()
                                               for key, eq, value in pairs):
        raise ValueError(f"--stage expects UNTIL:KEY=VALUE[,KEY=VALUE] with integers, got {item!r}")
    return {"until": int(until), "task_options": {key: int(value) for key, _, value in pairs}}


def run(args: argparse.Namespace) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    trainer = Trainer(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    records = trainer.run()
    if trainer.rank == 0:
        final = [r for r in records if "eval" in r]
        if final:
            print(json.dumps({"step": final[-1]["step"], "eval": final[-1]["eval"]}))
    return 0
