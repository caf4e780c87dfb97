"""`lmsleep data TASK [options] --n N --seed S`: print generated examples as JSON lines.

The option flags are read off each task's Options dataclass (`ops_max` -> `--ops-max`); a pair
`X_min`/`X_max` also gets `--X`, which sets both (e.g. `--t 5`, `--k 4`, `--ops 6`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, fields

from . import TASKS


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _ranges(options_class) -> list[str]:
    """The X of every X_min / X_max pair of fields."""
    names = [field.name for field in fields(options_class)]
    bases = [name.removesuffix("_min") for name in names if name.endswith("_min")]
    return [base for base in bases if base + "_max" in names]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, module in TASKS.items():
        task = tasks.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        for field in fields(module.Options):
            task.add_argument(_flag(field.name), type=int, default=None, help=f"default {field.default}")
        for base in _ranges(module.Options):
            task.add_argument(_flag(base), type=int, default=None, help=f"sets both {_flag(base)}-min and -max")
        task.add_argument("--n", type=int, default=4, help="how many examples (default 4)")
        task.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def run(args: argparse.Namespace) -> int:
    module = TASKS[args.task]
    chosen = {}
    for base in _ranges(module.Options):
        if getattr(args, base) is not None:
            chosen[base + "_min"] = chosen[base + "_max"] = getattr(args, base)
    for field in fields(module.Options):
        if getattr(args, field.name) is not None:
            chosen[field.name] = getattr(args, field.name)
    options = module.Options(**chosen)
    try:
        for example in module.generate(options, args.n, args.seed):
            print(json.dumps({"task": args.task, **asdict(example)}), flush=True)
    except BrokenPipeError:  # the reader stopped early (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
