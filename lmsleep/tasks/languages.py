"""Invented languages (issue 13, world 2): each language is a lexicon and a word order, given as a short
"grammar book" in context; the model translates new English sentences into it. Languages are generated
from their number, so a learner can meet language 0, then 1, 2, 3, … one after another.

A sentence is "the ADJ NOUN VERB the NOUN" (subject, verb, object). A language has
    - a lexicon: every concept word ↦ an invented word of two syllables ("cat" ↦ "ka lu"),
    - an order of subject, verb and object (one of the six), and whether adjectives follow their noun.

Layout (context = 1):

    book : cat = ka lu ; dog = me bo ; … ; order = s o v ; adjective = after ;  |  the big cat sees the dog > TRANSLATION .

loss on the translation (its words and the closing "."); context = 0 puts padding where the book was (the
language must be known already). Bucket: the language's order index. Raw: {"language", "lexicon",
"order", "adjective_after", "sentence": [adj, subject, verb, object]}; `solve(raw)` translates from them.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .. import validate
from .example import Answer, Example, make_example
from .vocab import WordVocabulary

PAD, SEP, STOP, GIVES = "_", "|", ".", ">"
NOUNS = ("cat", "dog", "fox", "bird", "fish", "horse", "goat", "frog")
VERBS = ("sees", "likes", "chases", "finds")
ADJECTIVES = ("big", "small", "red", "old")
CONCEPTS = NOUNS + VERBS + ADJECTIVES
ORDERS = ("svo", "sov", "vso", "vos", "osv", "ovs")
CONSONANTS, VOWELS = "ptkszfhjwy", "aeiou"  # other letters than the facts world's names
SYLLABLES = tuple(c + v for c in CONSONANTS for v in VOWELS)
MARKERS = ("book", ":", "=", ";", "order", "adjective", "after", "before", "s", "o", "v", "the")


def _words() -> list[str]:
    return list(dict.fromkeys([PAD, SEP, STOP, GIVES, *MARKERS, *CONCEPTS, *SYLLABLES]))


VOCABULARY = WordVocabulary("languages", _words())


@dataclass(frozen=True)
class Options:
    """language: which language (its number seeds its lexicon and order); languages: draw uniformly from
    languages [language, language + languages); context: 1 the book then the sentence, 0 the sentence alone."""

    language: int = 0
    languages: int = 1
    context: int = 1

    def __post_init__(self) -> None:
        validate.integer("languages.Options.language", self.language, 0)
        validate.integer("languages.Options.languages", self.languages, 1, 1000)
        validate.integer("languages.Options.context", self.context, 0, 1)

    @property
    def window(self) -> int:
        """Input tokens of every example: the book, SEP, the English sentence (7 words with ">") and the
        translation (4 words of 2 syllables each, after "the … the" is dropped, and "."), less one."""
        return len(_book_words(language(0))) + 1 + 7 + (2 * 4 + 1) - 1


def language(number: int) -> dict:
    """The language numbered `number`: {"language", "lexicon", "order", "adjective_after"}, deterministic."""
    rng = random.Random(f"language-{number}")
    words = rng.sample([a + " " + b for a in SYLLABLES for b in SYLLABLES], len(CONCEPTS))
    return {"language": number, "lexicon": dict(zip(CONCEPTS, words)), "order": rng.choice(ORDERS),
            "adjective_after": rng.random() < 0.5}


def _book_words(lang: dict) -> list[str]:
    entries = " ; ".join(f"{concept} = {word}" for concept, word in lang["lexicon"].items())
    rule = f"order = {' '.join(lang['order'])} ; adjective = {'after' if lang['adjective_after'] else 'before'} ;"
    return f"book : {entries} ; {rule}".split()


def translate(raw: dict) -> str:
    """The sentence in raw's language (the reference solver)."""
    adjective, subject, verb, obj = raw["sentence"]
    lex = raw["lexicon"]
    subject_phrase = [lex[subject], lex[adjective]] if raw["adjective_after"] else [lex[adjective], lex[subject]]
    noun_phrase = {"s": subject_phrase, "o": [lex[obj]], "v": [lex[verb]]}
    return " ".join(word for part in raw["order"] for word in noun_phrase[part])


def solve(raw: dict) -> list[str]:
    return [translate(raw) + f" {STOP}"]


def generate(options: Options, n: int, seed: int) -> list[Example]:
    """`n` translation examples, deterministic in seed; every example of one Options has the same length."""
    validate.integer("generate.n", n, 0)
    rng = random.Random(seed)
    examples = []
    length = options.window
    for _ in range(n):
        lang = language(options.language + rng.randrange(options.languages))
        subject, obj = rng.sample(NOUNS, 2)
        raw = {**lang, "sentence": [rng.choice(ADJECTIVES), subject, rng.choice(VERBS), obj]}
        adjective, _, verb, _ = raw["sentence"]
        book = _book_words(lang)
        english = f"the {adjective} {subject} {verb} the {obj} {GIVES}"
        pieces = [" ".join(book) if options.context else " ".join([PAD] * len(book)), SEP, english,
                  Answer(solve(raw)[0], ORDERS.index(lang["order"]))]
        used = len(book) + 1 + len(english.split()) + len(solve(raw)[0].split())
        assert used == length + 1, "every example has the same layout"
        examples.append(make_example([" ".join([PAD] * (length + 1 - used)), *pieces], raw, VOCABULARY))
    return examples
