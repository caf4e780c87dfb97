"""Invented languages (issue 13, world 2): each language is a lexicon and a word order, given as a short
"grammar book" in context; the model translates new English sentences into it. Languages are generated
from their number, so a learner can meet language 0, then 1, 2, 3, … one after another.

A sentence is "the ADJ NOUN VERB the NOUN" (subject, verb, object). A language has
    - a lexicon: every concept word ↦ an invented word of two syllables ("cat" ↦ "ka lu"),
    - an order of subject, verb and object (one of the six), and whether adjectives follow their noun.

Layout (context = 1):

    book : cat = ka lu ; dog = me bo ; … ; order = s o v ; adjective = after ;  |  the big cat sees the dog > TRANSLATION .

loss on the translation (its words and the closing "."); context = 0 puts padding where the book was (the
language must be known already). Smaller worlds keep the first `nouns`, `verbs` and `adjectives` concepts
(shorter books read sooner). named = 1 gives each language a two-syllable name, written after "book" and
before the sentence ("| wo pe : the big cat …"), so that closed-book the name says which language is asked;
english_loss = 1 also trains (without scoring) the text after SEP, so a model learns to write whole
examples (replay and dreams). Bucket: the language's order index. Raw: {"language", "lexicon",
"order", "adjective_after", "sentence": [adj, subject, verb, object]}; `solve(raw)` translates from them.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .. import validate
from .example import Answer, Example, Trained, make_example
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
    nouns: int = len(NOUNS)
    verbs: int = len(VERBS)
    adjectives: int = len(ADJECTIVES)
    named: int = 0
    english_loss: int = 0

    def __post_init__(self) -> None:
        validate.integer("languages.Options.language", self.language, 0)
        validate.integer("languages.Options.languages", self.languages, 1, 1000)
        validate.integer("languages.Options.context", self.context, 0, 1)
        validate.integer("languages.Options.nouns", self.nouns, 2, len(NOUNS))  # subject and object differ
        validate.integer("languages.Options.verbs", self.verbs, 1, len(VERBS))
        validate.integer("languages.Options.adjectives", self.adjectives, 1, len(ADJECTIVES))
        validate.integer("languages.Options.named", self.named, 0, 1)
        validate.integer("languages.Options.english_loss", self.english_loss, 0, 1)

    @property
    def concepts(self) -> tuple[str, ...]:
        return NOUNS[: self.nouns] + VERBS[: self.verbs] + ADJECTIVES[: self.adjectives]

    @property
    def window(self) -> int:
        """Input tokens of every example: the book, SEP, the name and ":" (named), the English sentence
        (7 words with ">") and the translation (4 words of 2 syllables each, after "the … the" is dropped,
        and "."), less one."""
        return len(_book_words(language(0), self)) + 1 + 3 * self.named + 7 + (2 * 4 + 1) - 1


def language(number: int) -> dict:
    """The language numbered `number`: {"language", "lexicon", "order", "adjective_after"}, deterministic."""
    rng = random.Random(f"language-{number}")
    words = rng.sample([a + " " + b for a in SYLLABLES for b in SYLLABLES], len(CONCEPTS))
    return {"language": number, "lexicon": dict(zip(CONCEPTS, words)), "order": rng.choice(ORDERS),
            "adjective_after": rng.random() < 0.5}


def name(number: int) -> str:
    """Language `number`'s name (two syllables; used when Options.named = 1)."""
    rng = random.Random(f"language-name-{number}")
    return " ".join(rng.choice(SYLLABLES) for _ in range(2))


def _book_words(lang: dict, options: Options = Options()) -> list[str]:
    entries = " ; ".join(f"{concept} = {lang['lexicon'][concept]}" for concept in options.concepts)
    rule = f"order = {' '.join(lang['order'])} ; adjective = {'after' if lang['adjective_after'] else 'before'} ;"
    title = f"book {name(lang['language'])} :" if options.named else "book :"
    return f"{title} {entries} ; {rule}".split()


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
    for _ in range(n):
        number = options.language + rng.randrange(options.languages)
        subject, obj = rng.sample(NOUNS[: options.nouns], 2)
        examples.append(_example(options, number, (rng.choice(ADJECTIVES[: options.adjectives]), subject,
                                                   rng.choice(VERBS[: options.verbs]), obj)))
    return examples


def sentences(options: Options) -> list[tuple[str, str, str, str]]:
    """Every (adjective, subject, verb, object) of the world, in a fixed order: a benchmark splits this space
    so that no test sentence is also a training sentence."""
    return [(adjective, subject, verb, obj) for adjective in ADJECTIVES[: options.adjectives]
            for subject in NOUNS[: options.nouns] for verb in VERBS[: options.verbs]
            for obj in NOUNS[: options.nouns] if obj != subject]


def render(options: Options, sentences_: list[tuple[str, str, str, str]]) -> list[Example]:
    """One example per given sentence, in language `options.language` (options.languages is not used)."""
    return [_example(options, options.language, tuple(sentence)) for sentence in sentences_]


def _example(options: Options, number: int, sentence: tuple[str, str, str, str]) -> Example:
    adjective, subject, verb, obj = sentence
    if subject == obj or adjective not in ADJECTIVES[: options.adjectives] or verb not in VERBS[: options.verbs] \
            or {subject, obj} - set(NOUNS[: options.nouns]):
        raise ValueError(f"sentence {sentence} is not in this world (distinct nouns of the first {options.nouns}, "
                         f"the first {options.verbs} verbs, the first {options.adjectives} adjectives)")
    lang = language(number)
    lang = {**lang, "lexicon": {c: lang["lexicon"][c] for c in options.concepts}}
    raw = {**lang, "sentence": [adjective, subject, verb, obj]}
    book = _book_words(lang, options)
    english = f"the {adjective} {subject} {verb} the {obj} {GIVES}"
    if options.named:
        english = f"{name(lang['language'])} : {english}"
    pieces = [" ".join(book) if options.context else " ".join([PAD] * len(book)), SEP,
              Trained(english) if options.english_loss else english,
              Answer(solve(raw)[0], ORDERS.index(lang["order"]))]
    length = options.window
    used = len(book) + 1 + len(english.split()) + len(solve(raw)[0].split())
    assert used == length + 1, "every example has the same layout"
    return make_example([" ".join([PAD] * (length + 1 - used)), *pieces], raw, VOCABULARY)
