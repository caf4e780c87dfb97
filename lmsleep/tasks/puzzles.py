"""1-D ARC-like puzzles (issue 13, world 3): a hidden transformation of a row of colored cells, shown by a few
input/output demonstrations; the model must apply it to a test input.

Layout (demos = 2, length = 6; colors are digits, 0 the background):

    sequence  012030>030210; 400500>005004; | 001020> 020100
    loss on the test output only (the SEP "|" opens the test pair; its output is the answer)

A task is a rule with its parameters (e.g. "shift" by 2, "recolor" 3 → 1). Every task has an id; the tasks
are split by id into a training set (for learning to dream) and a held-out set, disjoint by construction:
Options.split = 1 draws training tasks, 2 held-out tasks, 0 any. Bucket: the rule family's index.
Raw: {"rule", "params", "demos": [[input, output], ...], "test": [input, output]} with rows as digit strings;
`solve(raw)` recomputes the test output (and checks every demonstration) from the rule alone.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .. import validate
from .example import Answer, Example, Trained, make_example
from .vocab import CHARACTERS, SEP

VOCABULARY = CHARACTERS
MAX_COLORS = 10
SPLITS = (0, 1, 2)  # any task, training tasks, held-out tasks


def _shift(row: list[int], k: int) -> list[int]:
    return row[-k:] + row[:-k]


def _recolor(row: list[int], a: int, b: int) -> list[int]:
    return [b if c == a else c for c in row]


def _gravity(row: list[int], side: int) -> list[int]:
    cells = [c for c in row if c]
    pad = [0] * (len(row) - len(cells))
    return cells + pad if side == 0 else pad + cells


def _fill(row: list[int]) -> list[int]:
    """Between two cells of one color, the background takes that color."""
    out = list(row)
    for i, c in enumerate(row):
        if c:
            j = next((j for j in range(i + 1, len(row)) if row[j]), None)
            if j is not None and row[j] == c:
                out[i:j] = [c] * (j - i)
    return out


def _mirror(row: list[int]) -> list[int]:
    """The left half, mirrored onto the right half."""
    half = len(row) // 2
    left = row[:half]
    return left + row[half : len(row) - half] + left[::-1]


RULES = {  # name -> (function(row, **params), every parameter set for rows of `colors` colors and `length`)
    "shift": (lambda row, k: _shift(row, k), lambda colors, length: [{"k": k} for k in range(1, length)]),
    "reverse": (lambda row: row[::-1], lambda colors, length: [{}]),
    "recolor": (lambda row, a, b: _recolor(row, a, b),
                lambda colors, length: [{"a": a, "b": b} for a in range(1, colors) for b in range(1, colors) if a != b]),
    "gravity": (lambda row, side: _gravity(row, side), lambda colors, length: [{"side": 0}, {"side": 1}]),
    "fill": (lambda row: _fill(row), lambda colors, length: [{}]),
    "mirror": (lambda row: _mirror(row), lambda colors, length: [{}]),
}


def apply(rule: str, params: dict, row: list[int]) -> list[int]:
    return RULES[rule][0](list(row), **params)


@dataclass(frozen=True)
class Options:
    """demos: demonstrations per task; length: cells per row; colors: colors in use (0 is background);
    density: percent of non-background cells; split: 1 training tasks, 2 held-out tasks, 0 any;
    demo_loss: 1 trains on the demonstrations too (after the first cell; not scored), so that a model
    learns to write demonstrations of a rule (the dreams of continual.bench.puzzles_bench), 0 only the test."""

    demos: int = 3
    length: int = 8
    colors: int = 4
    density: int = 40
    split: int = 1
    demo_loss: int = 0

    def __post_init__(self) -> None:
        validate.integer("puzzles.Options.demos", self.demos, 1, 16)
        validate.integer("puzzles.Options.length", self.length, 2, 64)
        validate.integer("puzzles.Options.colors", self.colors, 3, MAX_COLORS)
        validate.integer("puzzles.Options.density", self.density, 1, 100)
        validate.one_of("puzzles.Options.split", self.split, SPLITS)
        validate.one_of("puzzles.Options.demo_loss", self.demo_loss, (0, 1))

    @property
    def window(self) -> int:
        """The whole example (demonstrations and test): a solver must see them together."""
        return (self.demos + 1) * (2 * self.length + 2) - 1


def tasks(options: Options) -> list[tuple[str, dict]]:
    """Every (rule, params) of options' split; task i is held out when i % 4 == 3 (a quarter of them)."""
    everything = [(name, params) for name, (_, settings) in RULES.items()
                  for params in settings(options.colors, options.length)]
    if options.split == 0:
        return everything
    return [task for i, task in enumerate(everything) if (i % 4 == 3) == (options.split == 2)]


def _row(rng: random.Random, options: Options) -> list[int]:
    return [rng.randrange(1, options.colors) if rng.randrange(100) < options.density else 0
            for _ in range(options.length)]


def _text(row: list[int]) -> str:
    return "".join(str(c) for c in row)


def _informative_row(rng: random.Random, options: Options, rule: str, params: dict) -> list[int]:
    """A row the rule changes (a demonstration that changes nothing shows nothing), when one can be drawn."""
    for _ in range(20):
        row = _row(rng, options)
        if apply(rule, params, row) != row:
            return row
    return row


def generate(options: Options, n: int, seed: int) -> list[Example]:
    """`n` examples, deterministic in seed: a task drawn from options' split, its demonstrations and a test."""
    validate.integer("generate.n", n, 0)
    rng = random.Random(seed)
    pool = tasks(options)
    families = list(RULES)
    examples = []
    for _ in range(n):
        rule, params = pool[rng.randrange(len(pool))]
        pairs = []
        for _ in range(options.demos + 1):
            row = _informative_row(rng, options, rule, params)
            pairs.append([_text(row), _text(apply(rule, params, row))])
        raw = {"rule": rule, "params": params, "demos": pairs[:-1], "test": pairs[-1]}
        demos = "".join(f"{a}>{b};" for a, b in raw["demos"])
        shown = [demos[0], Trained(demos[1:])] if options.demo_loss else [demos]
        pieces = [*shown, SEP, f"{raw['test'][0]}>", Answer(raw["test"][1], families.index(rule))]
        examples.append(make_example(pieces, raw, VOCABULARY))
    return examples


def solve(raw: dict) -> list[str]:
    """The test output, recomputed from the rule (every demonstration checked against it first)."""
    rule, params = raw["rule"], raw["params"]
    for given, expected in raw["demos"]:
        if _text(apply(rule, params, [int(c) for c in given])) != expected:
            raise ValueError(f"demonstration {given}>{expected} does not follow {rule} {params}")
    return [_text(apply(rule, params, [int(c) for c in raw["test"][0]]))]
