"""Rule 110 cellular automaton (spec: sleep-recurrence.md, Tasks 1).

`strings` random bit strings of `bits` bits, each filling exactly one window (L = bits), then the
prediction chunk: SEP and one label per string. Label i is the first bit of string i after t Rule-110
steps with periodic boundaries. Predicting t steps is P-complete, so there is no parallel shortcut.

Layout (strings = 2, bits = 4, t = 1; T = strings * bits + strings):

    sequence  0 1 1 0 | 1 0 0 1 | SEP l1 l2          ("0110" -> "1110", "1001" -> "1011": l1 = 1, l2 = 1)
    tokens    0 1 1 0   1 0 0 1   SEP l1             the model input: the sequence without its last token
    loss      0 0 0 0   0 0 0 0   1   1              SEP predicts l1, l1 predicts l2

Bucket: t (per label). Raw: {"strings": ["0110", "1001"], "t": 1, "labels": ["1", "1"]}.
Metrics: `score` in tasks.example gives exact accuracy (all labels right) and per-label accuracy.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .. import validate
from .example import Answer, Example, make_example
from .vocab import CHARACTERS, SEP

VOCABULARY = CHARACTERS  # the paper-1 tasks share one vocabulary, so one model can learn them all

RULE = 110  # bit (4·left + 2·center + right) of 110 is the cell's next state


@dataclass(frozen=True)
class Options:
    """strings: how many bit strings; bits: bits per string (= the window L); t drawn from [t_min, t_max]."""

    strings: int = 4
    bits: int = 8
    t_min: int = 3
    t_max: int = 3

    def __post_init__(self) -> None:
        validate.integer("rule110.Options.strings", self.strings, 1, 64)
        validate.integer("rule110.Options.bits", self.bits, 3, 4096)
        validate.integer("rule110.Options.t_min", self.t_min, 1, 4096)
        validate.integer("rule110.Options.t_max", self.t_max, self.t_min, 4096, why="at least t_min")

    @property
    def window(self) -> int:
        """L: each string fills exactly one window."""
        return self.bits


PAPER = Options(strings=4, bits=24, t_min=32, t_max=32)  # the N sweep; the N = 1 study uses t in 4..16


def generate(options: Options, n: int, seed: int) -> list[Example]:
    """`n` examples, deterministic in `seed` (the first m of n are the m examples of generate(.., m, seed))."""
    validate.integer("generate.n", n, 0)
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        t = rng.randint(options.t_min, options.t_max)
        rows = [[rng.randint(0, 1) for _ in range(options.bits)] for _ in range(options.strings)]
        labels = [str(_run(row, t)[0]) for row in rows]
        strings = ["".join(map(str, row)) for row in rows]
        raw = {"strings": strings, "t": t, "labels": labels}
        examples.append(make_example([*strings, SEP, *(Answer(label, bucket=t) for label in labels)], raw, VOCABULARY))
    return examples


def _run(cells: list[int], t: int) -> list[int]:
    """t steps of Rule 110 on integer cells, the rule number read as a lookup table."""
    width = len(cells)
    for _ in range(t):
        cells = [(RULE >> (4 * cells[i - 1] + 2 * cells[i] + cells[(i + 1) % width])) & 1 for i in range(width)]
    return cells


# The reference solver: Wolfram's table written out, applied to strings, sharing no code with _run.
TABLE = {"111": "0", "110": "1", "101": "1", "100": "0", "011": "1", "010": "1", "001": "1", "000": "0"}


def evolve(row: str, t: int) -> str:
    """The bit string `row` after t Rule-110 steps with periodic boundaries."""
    for _ in range(t):
        wrapped = row[-1] + row + row[0]
        row = "".join(TABLE[wrapped[i : i + 3]] for i in range(len(row)))
    return row


def solve(raw: dict) -> list[str]:
    """The labels (one "0"/"1" per string) from raw["strings"] and raw["t"] alone."""
    return [evolve(row, raw["t"])[0] for row in raw["strings"]]
