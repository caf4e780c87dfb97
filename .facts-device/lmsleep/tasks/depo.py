"""Depo k-hop retrieval on a directed cycle (spec: sleep-recurrence.md, Tasks 2).

A directed cycle of n nodes (n drawn from [nodes_min, nodes_max], names random and distinct) written
as its n edges "a>b," in shuffled order, left-padded with PAD to a whole number of windows, so the
queries start on a window boundary after the graph has been evicted. Then `queries` queries
"k hops after X is Y", with k and X random per query (so the stored memory must be query-agnostic):

    k X : Y ;        k: fixed-width decimal (width of k_max, zero-padded), Y: the answer

Layout (nodes = 4, window = 6, queries = 2, k_max = 3; the cycle a > b > d > c > a):

    sequence  _ _ c > a , b > d , a > b , d > c , 2 a : d ; 3 c : d ;
    answers                                             ^         ^   (each scored at the ':' before it)

Node names are one letter (one token) when nodes_max <= 26, two letters when nodes_max <= 676; then
an answer is two tokens with two loss positions, scored as one answer (see `answer_id`). The paper's
size (n <= 75, L = 75, k up to 16) thus needs two-letter names: 6 tokens per edge instead of its 4.
Bucket: k, per query. Raw: {"edges": [[a, b], ...] as written, "queries": [{"k", "source", "answer"}]}.
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

from .. import validate
from .example import Answer, Example, make_example
from .vocab import CHARACTERS, LETTERS, left_pad

VOCABULARY = CHARACTERS  # the paper-1 tasks share one vocabulary, so one model can learn them all

MAX_NODES = len(LETTERS) ** 2


@dataclass(frozen=True)
class Options:
    """n drawn from [nodes_min, nodes_max]; window: L; queries per example; k drawn from [k_min, k_max]."""

    nodes_min: int = 12
    nodes_max: int = 12
    window: int = 16
    queries: int = 8
    k_min: int = 1
    k_max: int = 8

    def __post_init__(self) -> None:
        validate.integer("depo.Options.nodes_min", self.nodes_min, 2, MAX_NODES)
        validate.integer("depo.Options.nodes_max", self.nodes_max, self.nodes_min, MAX_NODES, why="at least nodes_min")
        validate.integer("depo.Options.window", self.window, 1)
        validate.integer("depo.Options.queries", self.queries, 1)
        validate.integer("depo.Options.k_min", self.k_min, 1)
        # k < n keeps every hop count distinct from "back to X" (k = n) on the smallest cycle
        validate.integer("depo.Options.k_max", self.k_max, self.k_min, self.nodes_min - 1, why="from k_min to nodes_min − 1")

    @property
    def name_length(self) -> int:
        """Tokens per node name: 1 while the letters suffice, else 2."""
        return 1 if self.nodes_max <= len(LETTERS) else 2

    @property
    def graph_length(self) -> int:
        """Tokens of the padded graph section: room for nodes_max edges, rounded up to whole windows."""
        edge_length = 2 * self.name_length + 2  # a > b ,
        return math.ceil(edge_length * self.nodes_max / self.window) * self.window


PAPER = Options(nodes_min=17, nodes_max=75, window=75, queries=10, k_min=1, k_max=16)  # n <= 75, k ~ U[1, 16]


def generate(options: Options, n: int, seed: int) -> list[Example]:
    """`n` examples, deterministic in `seed` (the first m of n are the m examples of generate(.., m, seed))."""
    validate.integer("generate.n", n, 0)
    rng = random.Random(seed)
    all_names = ["".join(letters) for letters in itertools.product(LETTERS, repeat=options.name_length)]
    k_width = len(str(options.k_max))
    examples = []
    for _ in range(n):
        cycle = rng.sample(all_names, rng.randint(options.nodes_min, options.nodes_max))  # cycle[i] -> cycle[i+1]
        edges = [[cycle[i], cycle[(i + 1) % len(cycle)]] for i in range(len(cycle))]
        rng.shuffle(edges)
        graph = "".join(f"{a}>{b}," for a, b in edges)
        pieces = [left_pad(graph, options.graph_length)]
        queries = []
        for _ in range(options.queries):
            k, start = rng.randint(options.k_min, options.k_max), rng.randrange(len(cycle))
            answer = cycle[(start + k) % len(cycle)]
            queries.append({"k": k, "source": cycle[start], "answer": answer})
            pieces += [f"{k:0{k_width}d}{cycle[start]}:", Answer(answer, bucket=k), ";"]
        examples.append(make_example(pieces, {"edges": edges, "queries": queries}, VOCABULARY))
    return examples


def solve(raw: dict) -> list[str]:
    """The answer of each query, found by walking the written edges k times from the source."""
    successor = dict(raw["edges"])
    answers = []
    for query in raw["queries"]:
        node = query["source"]
        for _ in range(query["k"]):
            node = successor[node]
        answers.append(node)
    return answers
