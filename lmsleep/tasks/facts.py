"""Facts: invented people and their attributes, read in a passage and asked about (spec: sleep-continual.md,
Our reproduction; issue 13, world 1). The words, templates and parser are in tasks.facts_text.

A world is `entities` people with pronounceable invented names, each with one value of each of the first
`attributes` attributes (color, city, pet, food; `values` words each). The passage states every fact
once, in shuffled order, with a random template (half of them value first); questions are paraphrased and
always ask name first, so the answer is never the passage's next token after the question's words:

    _ _ the red one is named ka lu . ka lu lives in rome . bi mo is blue . oslo is home to bi mo . | where
    does bi mo live ? oslo . what color is ka lu ? red .

Loss (and score) on the answer words only. Layout: PAD, then the passage (context = 1) or PADs in its
place (context = 0: closed-book, what a continual learner is tested on), SEP, `questions` questions with
their answers; the whole sequence left-padded so every example of one Options has the same length.
Names come from one of two disjoint pools (`pool`): 1 for pretraining a base, 2 for the worlds a
learner is tested on (new entities), 0 both. Bucket: 1 for a fact stated value first, 0 name first.
Raw: {"entities": [{"name", <attribute>: value, ...}], "statements": [{"entity", "attribute",
"template"}] as written, "questions": [{"entity", "attribute", "template"}] in order, "context"}.
"""
from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass

from .. import validate
from .example import Answer, Example, Trained, batch, make_example
from .facts_text import (ATTRIBUTES, NAME_SYLLABLES, PAD, QUESTIONS, SEP, STATEMENTS, STOP, SYLLABLES,
                         VOCABULARY, question, question_length, read_facts, same_facts, statement,
                         statement_length, value_first)

__all__ = [
    "Options", "VOCABULARY", "generate", "solve", "world", "passage_text", "passage_tokens", "questions_of",
    "in_context_batch", "closed_book_batch", "check_answer", "judge", "read_facts", "names",
]

MAX_ENTITIES = 8
POOLS = (0, 1, 2)  # all names, the pretraining pool, the held-out pool


@dataclass(frozen=True)
class Options:
    """entities per passage; the first `attributes` attributes, `values` values each; questions per
    example; context: 1 passage then questions (in-context), 0 questions alone (closed-book); pool of
    names: 1 pretraining, 2 held out (new entities), 0 both; value_first: 1 all statement templates, 0 only
    the name-first ones (easier: a diagnostic)."""

    entities: int = 2
    attributes: int = 3
    values: int = 8
    questions: int = 4
    context: int = 1
    pool: int = 1
    value_first: int = 1
    syllables: int = 2
    ask_loss: int = 0

    def __post_init__(self) -> None:
        validate.integer("facts.Options.entities", self.entities, 1, MAX_ENTITIES)
        validate.integer("facts.Options.attributes", self.attributes, 1, len(ATTRIBUTES))
        validate.integer("facts.Options.values", self.values, 2, min(len(v) for v in ATTRIBUTES.values()))
        validate.integer("facts.Options.questions", self.questions, 1, self.entities * self.attributes,
                         why="at most entities × attributes: each question asks another fact")
        validate.integer("facts.Options.context", self.context, 0, 1)
        validate.one_of("facts.Options.pool", self.pool, POOLS)
        validate.integer("facts.Options.value_first", self.value_first, 0, 1)
        validate.integer("facts.Options.syllables", self.syllables, 1, NAME_SYLLABLES)
        validate.integer("facts.Options.ask_loss", self.ask_loss, 0, 1)

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(ATTRIBUTES)[: self.attributes]

    @property
    def passage_length(self) -> int:
        """Tokens reserved for the passage: every fact in its longest template."""
        return self.entities * self.attributes * statement_length(self.attribute_names)

    @property
    def length(self) -> int:
        """Input tokens of every example (the sequence minus its last token)."""
        return self.passage_length + 1 + self.questions * question_length(self.attribute_names) - 1

    @property
    def window(self) -> int:
        """The whole example: a reader must see the passage and the questions together."""
        return self.length


def names(pool: int, syllables: int = NAME_SYLLABLES) -> list[str]:
    """Every name of a pool (1 or 2: the two halves, each syllable in both at every position; 0: all) of
    `syllables` syllables (one-syllable names are one token each: easier to match for a tiny reader)."""
    validate.one_of("pool", pool, POOLS)
    return list(_names(pool, syllables))


@functools.lru_cache(maxsize=None)
def _names(pool: int, syllables: int) -> tuple[str, ...]:  # every world draws from the pool: build it once
    combos = itertools.product(range(len(SYLLABLES)), repeat=syllables)
    return tuple("".join(SYLLABLES[i] for i in combo) for combo in combos if pool == 0 or sum(combo) % 2 == pool - 1)


# ----- worlds -----

def _world(rng: random.Random, entities: int, options: Options) -> dict:
    chosen = rng.sample(names(options.pool, options.syllables), entities)
    people = [{"name": name, **{a: rng.choice(ATTRIBUTES[a][: options.values]) for a in options.attribute_names}}
              for name in chosen]
    statements = [{"entity": p["name"], "attribute": a, "template": rng.choice(_templates(a, options))}
                  for p in people for a in options.attribute_names]
    rng.shuffle(statements)
    return {"entities": people, "statements": statements}


def _templates(attribute: str, options: Options) -> list[int]:
    return [i for i, t in enumerate(STATEMENTS[attribute]) if options.value_first or not value_first(t)]


def world(seed: int, entities: int, options: Options = Options(pool=2)) -> dict:
    """The raw world a learner reads: `entities` new people (names from options.pool, by default the
    held-out pool), options' attributes and values, and the statements of its passage. Deterministic in seed."""
    validate.integer("world.entities", entities, 1, len(names(options.pool, options.syllables)))
    return {**_world(random.Random(seed), entities, options), "questions": [], "context": 1}


def _facts(raw: dict) -> dict[tuple[str, str], str]:
    return {(p["name"], a): v for p in raw["entities"] for a, v in p.items() if a != "name"}


def solve(raw: dict) -> list[str]:
    """The answer of each question, looked up in raw's entities."""
    facts = _facts(raw)
    return [facts[q["entity"], q["attribute"]] for q in raw["questions"]]


def check_answer(raw: dict, name: str, attribute: str, answer: str) -> bool:
    """Whether `answer` (text; its first word counts) is the value of `attribute` of entity `name` in raw."""
    words = answer.split()
    return bool(words) and _facts(raw).get((name, attribute)) == words[0]


def judge(completion: str, reference: str) -> bool:
    """The exact semantic judge: `completion` states the same facts as `reference` (any templates)."""
    return same_facts(completion, reference)


# ----- text -----

def passage_text(raw: dict) -> str:
    """The passage of a raw world: every statement, in order."""
    facts = _facts(raw)
    return " ".join(statement(s["attribute"], s["template"], s["entity"], facts[s["entity"], s["attribute"]])
                    for s in raw["statements"])


def passage_tokens(raw: dict) -> list[int]:
    """The passage as token ids (what a learner reads in context)."""
    return VOCABULARY.encode(passage_text(raw))


def _example(raw: dict, length: int, context: bool) -> Example:
    """The sequence of raw's questions after its passage (or after PADs in its place), left-padded to
    `length` + 1 tokens (`length` input tokens)."""
    facts = _facts(raw)
    passage = passage_text(raw)
    pieces = [passage if context else " ".join([PAD] * len(passage.split())), SEP]
    for q in raw["questions"]:
        answer = facts[q["entity"], q["attribute"]]
        stated = next(s for s in raw["statements"] if (s["entity"], s["attribute"]) == (q["entity"], q["attribute"]))
        bucket = int(value_first(STATEMENTS[q["attribute"]][stated["template"]]))
        asked = question(q["attribute"], q["template"], q["entity"])
        if raw.get("ask_loss"):  # the model also learns to ask (so that it can write replay and dreams)
            pieces += [Trained(asked), Answer(answer, bucket), Trained(STOP)]
        else:
            pieces += [asked, Answer(answer, bucket), STOP]
    used = sum(len(VOCABULARY.split(p if isinstance(p, str) else p.text)) for p in pieces)
    assert used <= length + 1, "the layout reserves too few tokens"
    return make_example([" ".join([PAD] * (length + 1 - used)), *pieces], raw, VOCABULARY)


def generate(options: Options, n: int, seed: int) -> list[Example]:
    """`n` examples, deterministic in `seed` (the first m of n are the m examples of generate(.., m, seed))."""
    validate.integer("generate.n", n, 0)
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        raw = _world(rng, options.entities, options)
        asked = rng.sample([(p["name"], a) for p in raw["entities"] for a in options.attribute_names], options.questions)
        raw["questions"] = [{"entity": name, "attribute": a, "template": rng.randrange(len(QUESTIONS[a]))}
                            for name, a in asked]
        raw["context"] = options.context
        raw["ask_loss"] = options.ask_loss
        examples.append(_example(raw, options.length, bool(options.context)))
    return examples


# ----- what a learner is tested on -----

def questions_of(raw: dict, paraphrases: bool = True) -> list[dict]:
    """Every fact of a raw world asked once per question template (or with the first template only), in
    entity then attribute order: the rows of in_context_batch / closed_book_batch."""
    return [{"entity": p["name"], "attribute": a, "template": t}
            for p in raw["entities"] for a in p if a != "name"
            for t in range(len(QUESTIONS[a]) if paraphrases else 1)]


def _rows(raw: dict, paraphrases: bool, context: bool) -> list[Example]:
    attributes = [a for a in ATTRIBUTES if a in raw["entities"][0]]
    length = len(passage_text(raw).split()) + 1 + question_length(attributes) - 1
    return [_example({**raw, "questions": [q], "context": int(context)}, length, context)
            for q in questions_of(raw, paraphrases)]


def in_context_batch(raw: dict, paraphrases: bool = True):
    """One row per questions_of(raw): the whole passage, SEP, the question and its answer (batch() tensors)."""
    return batch(_rows(raw, paraphrases, context=True))


def closed_book_batch(raw: dict, paraphrases: bool = True):
    """The rows of in_context_batch with PADs in place of the passage (same length): closed-book recall."""
    return batch(_rows(raw, paraphrases, context=False))

