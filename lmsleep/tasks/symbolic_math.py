"""Symbolic math, GSM-Infinite style (spec: sleep-recurrence.md, Tasks 3, Decision).

Variables (one letter each) are defined by one arithmetic operation mod p on variables and constants,
"v=x+y;" with + - *. The question "?q;" comes first, then the definitions in shuffled order, left-padded
with PAD to whole windows, then SEP and the answer (the value of q mod p, one digit, uniform over
0..p−1):

    ? q ; d = 3 * b ; q = d - a ; b = 4 + 4 ; a = b * 2 ; e = 5 + q ; ... | 1

Difficulty (bucket) = the number of operations on the answer's dependency path: the definitions q
depends on, itself included (above: q, d, a, b, so 4). The other definitions are distractors; they may
read path variables (e = 5 + q) but nothing on the path reads them. Every example has
ops_max + distractors definitions (easier examples get more distractors), so T is fixed:
T = ceil((3 + 6 * definitions) / window) * window + 1. One loss position, the SEP.
Raw: {"modulus", "query", "answer", "ops", "definitions": [[var, op, left, right], ...] as written},
operands being variable names (str) or constants (int).
"""
from __future__ import annotations

import operator
import random
from dataclasses import dataclass

from .example import Answer, Example, check_range, make_example
from .vocab import LETTERS, SEP, left_pad

OPERATIONS = "+-*"
PRIMES = (2, 3, 5, 7)  # values stay single digit tokens


@dataclass(frozen=True)
class Options:
    """ops drawn from [ops_min, ops_max]; distractors: at least this many off-path definitions;
    modulus: p; window: L."""

    ops_min: int = 1
    ops_max: int = 8
    distractors: int = 4
    modulus: int = 7
    window: int = 32

    def __post_init__(self) -> None:
        check_range("math.Options", "ops_min", self.ops_min, 1, len(LETTERS))
        check_range("math.Options", "ops_max", self.ops_max, self.ops_min, len(LETTERS))
        check_range("math.Options", "distractors", self.distractors, 0, len(LETTERS) - self.ops_max)
        if self.modulus not in PRIMES:
            raise ValueError(f"math.Options.modulus must be one of {PRIMES}, got {self.modulus!r}")
        check_range("math.Options", "window", self.window, 1)

    @property
    def definitions(self) -> int:
        """Definitions per example (one variable name each, so at most 26)."""
        return self.ops_max + self.distractors


def generate(options: Options, n: int, seed: int) -> list[Example]:
    """`n` examples, deterministic in `seed` (the first m of n are the m examples of generate(.., m, seed))."""
    check_range("generate", "n", n, 0)
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        ops = rng.randint(options.ops_min, options.ops_max)
        # The answer is drawn first and the path redrawn until it gives that answer: left alone, products
        # with a zero would make 0 far likelier than the other values, a prior a model learns at once.
        answer = rng.randrange(options.modulus)
        while True:
            names = rng.sample(LETTERS, options.definitions)
            values: dict[str, int] = {}
            definitions = _answer_path(ops, names[:ops], values, options.modulus, rng)
            query = definitions[-1][0]
            if values[query] == answer:
                break
        definitions += _distractors(names[ops:], values, options.modulus, rng)
        rng.shuffle(definitions)
        question = f"?{query};"
        context = "".join(f"{var}={left}{op}{right};" for var, op, left, right in definitions)
        raw = {"modulus": options.modulus, "query": query, "answer": answer, "ops": ops,
               "definitions": definitions}
        pieces = [left_pad(question + context, options.window), SEP, Answer(str(answer), bucket=ops)]
        examples.append(make_example(pieces, raw))
    return examples


def _answer_path(ops: int, names: list[str], values: dict, modulus: int, rng: random.Random) -> list[list]:
    """`ops` definitions, the last one the query, each read by a later one (so all lie on its path).

    `unread` holds the variables no later definition reads yet; each definition reads some of them,
    never so few that the remaining definitions (each reading at most two, adding one) could not
    bring `unread` down to the query alone.
    """
    definitions, unread = [], []
    for step, var in enumerate(names):
        remaining = ops - step
        reads = rng.randint(max(0, len(unread) + 1 - remaining), min(2, len(unread)))
        operands = rng.sample(unread, reads)
        unread = [name for name in unread if name not in operands]
        already_read = [name for name in values if name not in unread]
        while len(operands) < 2:  # the free operands: a constant, or sometimes a variable already read
            use_var = already_read and rng.random() < 0.3
            operands.append(rng.choice(already_read) if use_var else rng.randrange(modulus))
        rng.shuffle(operands)
        definitions.append(_define(var, rng.choice(OPERATIONS), *operands, values, modulus))
        unread.append(var)
    assert unread == [names[-1]]
    return definitions


def _distractors(names: list[str], values: dict, modulus: int, rng: random.Random) -> list[list]:
    """One definition per name, reading any variable defined so far or a constant; nothing reads them
    on the answer's path, which is complete before they exist."""
    definitions = []
    for var in names:
        operands = [rng.choice(list(values)) if rng.random() < 0.5 else rng.randrange(modulus) for _ in range(2)]
        definitions.append(_define(var, rng.choice(OPERATIONS), *operands, values, modulus))
    return definitions


def _define(var: str, op: str, left, right, values: dict, modulus: int) -> list:
    """Record var's value in `values` and return its definition [var, op, left, right]."""
    a, b = (values[x] if isinstance(x, str) else x for x in (left, right))
    values[var] = (a + b if op == "+" else a - b if op == "-" else a * b) % modulus
    return [var, op, left, right]


# The reference solver: reads only the written definitions, sharing no code with the generator.
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def dependency_path(raw: dict) -> set[str]:
    """The variables the query depends on, itself included; their count is the op count."""
    definition = {var: (left, right) for var, _, left, right in raw["definitions"]}
    path, frontier = set(), [raw["query"]]
    while frontier:
        var = frontier.pop()
        if var not in path:
            path.add(var)
            frontier += [x for x in definition[var] if isinstance(x, str)]
    return path


def solve(raw: dict) -> list[str]:
    """The query's value mod p, as one answer string: evaluate every definition whose operands are
    known, sweep after sweep, until the query is known."""
    known: dict[str, int] = {}
    pending = list(raw["definitions"])
    while raw["query"] not in known:
        ready = [d for d in pending if all(isinstance(x, int) or x in known for x in d[2:])]
        assert ready, "the definitions have a cycle or an undefined variable"
        for var, op, left, right in ready:
            operand = [known[x] if isinstance(x, str) else x for x in (left, right)]
            known[var] = _APPLY[op](*operand) % raw["modulus"]
        pending = [d for d in pending if d[0] not in known]
    return [str(known[raw["query"]])]
