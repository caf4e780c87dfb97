"""The SQuAD benchmark's learning rates, tuned as the knowledge benchmark tunes them (tuning.choose): each
fine-tuning system tries every rate of GRID on VALIDATION passages from the far end of the file (never a
test passage of any seed), scored by closed-book F1, with forgetting measured on a validation probe of other
passages (not the probe the benchmark reports). The base is one pretrained model for every seed, so the rates
are tuned once per set of arguments and kept in OUT/tuning.json; later seeds and reruns read them.

Restatements are written once per validation passage and every rate learns the same ones.
"""
from __future__ import annotations

import json
from pathlib import Path

from ...io import write_text
from ...tasks import squad
from .. import squad_qa
from . import squad_systems
from .runner import dumps, identity
from .tuning import choose

GRID = (1e-5, 3e-5, 1e-4, 3e-4)
VALIDATION = 2  # passages
TUNED = ("finetune", "finetune+restatements")
FILE = "tuning.json"


def split(passages: list, probe: int) -> dict[str, list]:
    """From the far end of the file: the reported probe, the validation probe, the validation passages.
    Test passages (from the start) must stay below `first_held`."""
    held = passages[len(passages) - 2 * probe - VALIDATION:]
    return {"validation": held[:VALIDATION], "validation_probe": held[VALIDATION:VALIDATION + probe],
            "probe": held[VALIDATION + probe:], "first_held": len(passages) - 2 * probe - VALIDATION}


def units(names: list[str]) -> int:
    return VALIDATION * len(GRID) * len([n for n in names if n in TUNED])


def reading(model, tokenizer, probe, questions) -> float:
    """In-context F1 on the probe's passages (the skill an update may destroy)."""
    return sum(squad_qa.evaluate(model, tokenizer, p, in_context=True, questions=questions)["f1"] for p in probe) / len(probe)


def cached(args) -> dict | None:
    path = Path(args.out) / FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # torn by a crash: tune again
    return saved if saved.get("arguments") == identity(args) else None


def tune(args, names: list[str], base, tokenizer, held: dict, tick) -> dict:
    """{"lrs": {system: rate}, "tried": {system: {rate: [[f1, forgetting] per passage]}}, ...} for the
    fine-tuning systems among `names` (Sleep runs at the demo's settings)."""
    saved = cached(args)
    if saved is not None:
        tick(units(names))
        return saved
    reading_base = reading(base, tokenizer, held["validation_probe"], args.questions)
    tried: dict[str, dict[float, list]] = {}
    for i, passage in enumerate(held["validation"]):
        seed = 10**6 + i
        for name in (n for n in names if n in TUNED):
            rows = None  # written once per passage and system, learnt at every rate
            for lr in GRID:
                system = squad_systems.make(name, base, tokenizer, squad_systems.Budget(steps=args.steps, lr=lr))
                rows = system.rows(passage, seed) if rows is None else rows
                system.fit(rows, seed)
                f1 = squad_qa.evaluate(system.model, tokenizer, passage, in_context=False, questions=args.questions)["f1"]
                forgot = reading_base - reading(system.model, tokenizer, held["validation_probe"], args.questions)
                tried.setdefault(name, {}).setdefault(lr, []).append([f1, forgot])
                del system
                tick()
    lrs = {name: choose(by_rate, args.forgetting_budget) for name, by_rate in tried.items()}
    result = {"arguments": identity(args), "grid": list(GRID), "lrs": lrs, "reading_base": reading_base,
              "tried": {name: {str(lr): o for lr, o in by_rate.items()} for name, by_rate in tried.items()},
              "validation_passages": [p.title for p in held["validation"]]}
    write_text(Path(args.out) / FILE, dumps(result))
    return result
