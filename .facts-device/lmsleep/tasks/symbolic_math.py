"""Symbolic math, GSM-Infinite style (spec: sleep-recurrence.md, Tasks 3, Decision).

Variables (one letter each) are defined by one arithmetic operation mod p on variables and constants,
"v=x+y;" with + - *. The question "?q;" comes first, then the definitions in shuffled order, left-padded
with PAD to whole windows, then SEP and the answer (the value of q mod p, one digit, uniform over
0..p−1):

    ? q ; d = 3 * b ; q = d - a ; b = 4 + 4 ; a = b * 2 ; e = 5 + q ; ... | 1

Difficulty (bucket) = the number of operations on the answer's dependency path: the definitions q
depends on, itself included (above: q, d, a, b, so 4). The other definitions are distractors; they may
read path variables (e = 5 + q) but nothing on the path reads them.

With `questions` = m > 1, all m questions come first ("?q;?r;"), each with a dependency path of its own
(paths share no variable), and the end holds m answers in question order ("|1|4"): m scored answers per
example instead of one, for the same context. Every example has m·ops_max + distractors definitions
(easier examples get more distractors), so the number of input tokens is fixed:
T = ceil((3m + 6·definitions) / window)·window + 2m − 1.
Raw: {"modulus", "questions": [{"query", "answer", "ops"}, ...] in order, "definitions": [[var, op, left,
right], ...] as written}, operands being variable names (str) or constants (int).
"""
from __future__ import annotations

import operator
import random
from dataclasses import dataclass

from .. import validate
from .example import Answer, Example, make_example
from .vocab import CHARACTERS, LETTERS, SEP, left_pad

VOCABULARY = CHARACTERS  # the paper-1 tasks share one vocabulary, so one model can learn them all

OPERATIONS = "+-*"
PRIMES = (2, 3, 5, 7)  # values stay single digit tokens


@dataclass(frozen=True)
class Options:
    """ops drawn from [ops_min, ops_max] per question; distractors: at least this many off-path definitions;
    modulus: p; window: L; questions: m, asked together before the context."""

    ops_min: int = 1
    ops_max: int = 8
    distractors: int = 4
    modulus: int = 7
    window: int = 32
    questions: int = 1

    def __post_init__(self) -> None:
        validate.integer("math.Options.questions", self.questions, 1, len(LETTERS))
        validate.integer("math.Options.ops_min", self.ops_min, 1, len(LETTERS) // self.questions, why="at most 26 // questions")
        validate.integer("math.Options.ops_max", self.ops_max, self.ops_min, len(LETTERS) // self.questions, why="from ops_min to 26 // questions")
        validate.integer("math.Options.distractors", self.distractors, 0, len(LETTERS) - self.questions * self.ops_max, why="at most 26 − questions × ops_max")
        validate.one_of("math.Options.modulus", self.modulus, PRIMES)
        validate.integer("math.Options.window", self.window, 1)

    @property
    def definitions(self) -> int:
        """Definitions per example (one variable name each, so at most 26)."""
        return self.questions * self.ops_max + self.distractors


def generate(options: Options, n: int, seed: int) -> list[Example]:
    """`n` examples, deterministic in `seed` (the first m of n are the m examples of generate(.., m, seed))."""
    validate.integer("generate.n", n, 0)
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        unused, definitions, values, questions = list(LETTERS), [], {}, []
        count = options.definitions  # names still to hand out: the remaining paths' and the distractors'
        for _ in range(options.questions):
            ops = rng.randint(options.ops_min, options.ops_max)
            answer = rng.randrange(options.modulus)
            # The answer is drawn first and the path redrawn until it gives that answer: left alone, products
            # with a zero would make 0 far likelier than the other values, a prior a model learns at once.
            while True:
                names = rng.sample(unused, count)
                path_values: dict[str, int] = {}
                path = _answer_path(ops, names[:ops], path_values, options.modulus, rng)
                if path_values[path[-1][0]] == answer:
                    break
            unused, count = names[ops:], count - ops  # the next path shares no variable with this one
            definitions += path
            values.update(path_values)
            questions.append({"query": path[-1][0], "answer": answer, "ops": ops})
        definitions += _distractors(unused, values, options.modulus, rng)
        rng.shuffle(definitions)
        question = "".join(f"?{q['query']};" for q in questions)
        context = "".join(f"{var}={left}{op}{right};" for var, op, left, right in definitions)
        raw = {"modulus": options.modulus, "questions": questions, "definitions": definitions}
        pieces = [left_pad(question + context, options.window)]
        for q in questions:
            pieces += [SEP, Answer(str(q["answer"]), bucket=q["ops"])]
        examples.append(make_example(pieces, raw, VOCABULARY))
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


def dependency_path(raw: dict, query: str) -> set[str]:
    """The variables `query` depends on, itself included; their count is its op count."""
    definition = {var: (left, right) for var, _, left, right in raw["definitions"]}
    path, frontier = set(), [query]
    while frontier:
        var = frontier.pop()
        if var not in path:
            path.add(var)
            frontier += [x for x in definition[var] if isinstance(x, str)]
    return path


def solve(raw: dict) -> list[str]:
    """Each question's value mod p, one answer string per question: evaluate every definition whose
    operands are known, sweep after sweep, until nothing is left."""
    known: dict[str, int] = {}
    pending = list(raw["definitions"])
    while pending:
        ready = [d for d in pending if all(isinstance(x, int) or x in known for x in d[2:])]
        assert ready, "the definitions have a cycle or an undefined variable"
        for var, op, left, right in ready:
            operand = [known[x] if isinstance(x, str) else x for x in (left, right)]
            known[var] = _APPLY[op](*operand) % raw["modulus"]
        pending = [d for d in pending if d[0] not in known]
    return [str(known[q["query"]]) for q in raw["questions"]]
