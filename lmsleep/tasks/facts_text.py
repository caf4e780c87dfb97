"""The words of the `facts` world: names, attributes, the sentence templates that state a fact, the
question templates that ask for one, the vocabulary they are written in, and the parser that reads facts
back out of text (the exact checker a judge uses).

Names are pronounceable and made of syllables (consonant + vowel), written one syllable per word
("kalu" is written "ka lu"), so a name the model has never seen is a new combination of known tokens.
Each fact is (name, attribute, value). Half the statement templates put the value first ("the red one
is named ka lu ."), and questions always ask name-first ("what color is ka lu ? red ."), so fitting the
passage's next tokens literally does not answer them (a reversal).
"""
from __future__ import annotations

import re

from .vocab import WordVocabulary

PAD, SEP, STOP, ASK = "_", "|", ".", "?"

CONSONANTS, VOWELS = "bdgklmnr", "aeiou"
SYLLABLES = tuple(c + v for c in CONSONANTS for v in VOWELS)  # 40 two-letter syllables: 1600 names
NAME_SYLLABLES = 2

# attribute -> its values (a closed set of single words); Options.attributes takes the first k attributes,
# Options.values the first v values of each.
ATTRIBUTES = {
    "color": ("red", "blue", "green", "yellow", "black", "white", "pink", "brown"),
    "city": ("rome", "paris", "oslo", "lima", "cairo", "delhi", "tokyo", "berlin"),
    "pet": ("cat", "dog", "fox", "owl", "frog", "horse", "goat", "snake"),
    "food": ("rice", "bread", "soup", "cheese", "plum", "apple", "fish", "cake"),
}

# Statements: X is the name, V the value. Value-first templates are listed in VALUE_FIRST.
STATEMENTS = {
    "color": ("X is V", "the color of X is V", "V is the color of X", "the V one is named X"),
    "city": ("X lives in V", "the city of X is V", "V is home to X", "the one in V is named X"),
    "pet": ("X has a V", "the pet of X is a V", "the V is owned by X", "the one with a V is named X"),
    "food": ("X eats V", "the food of X is V", "V is eaten by X", "the one who eats V is named X"),
}
# Questions about X; the answer V follows the ASK token.
QUESTIONS = {
    "color": ("what color is X", "what is the color of X", "which color does X have"),
    "city": ("where does X live", "what is the city of X", "which city is home to X"),
    "pet": ("what pet does X have", "what is the pet of X", "which animal is owned by X"),
    "food": ("what does X eat", "what is the food of X", "which food is eaten by X"),
}


def value_first(template: str) -> bool:
    """Whether a statement template states the value before the name."""
    return template.index("V") < template.index("X")


def spell(name: str) -> str:
    """The words of a name: its syllables ("kalu" -> "ka lu")."""
    return " ".join(name[i : i + 2] for i in range(0, len(name), 2))


def statement(attribute: str, template: int, name: str, value: str) -> str:
    """One fact stated with STATEMENTS[attribute][template], ending in STOP."""
    return _fill(STATEMENTS[attribute][template], name, value) + f" {STOP}"


def question(attribute: str, template: int, name: str) -> str:
    """The question QUESTIONS[attribute][template] about `name`, ending in ASK (the answer comes next)."""
    return _fill(QUESTIONS[attribute][template], name, "") + f" {ASK}"


def _fill(template: str, name: str, value: str) -> str:
    words = [spell(name) if word == "X" else value if word == "V" else word for word in template.split()]
    return " ".join(word for word in words if word)


def _words(template: str) -> int:
    return sum(NAME_SYLLABLES if word == "X" else 1 for word in template.split())


def statement_length(attributes) -> int:
    """Tokens of the longest statement of any of `attributes` (its STOP included)."""
    return max(_words(t) for a in attributes for t in STATEMENTS[a]) + 1


def question_length(attributes) -> int:
    """Tokens of the longest question-and-answer "q ? V ." of any of `attributes`."""
    return max(_words(t) for a in attributes for t in QUESTIONS[a]) + 3


def _all_words() -> list[str]:
    words = [PAD, SEP, STOP, ASK]
    for attribute, values in ATTRIBUTES.items():
        words += [attribute, *values]
        for template in STATEMENTS[attribute] + QUESTIONS[attribute]:
            words += [w for w in template.split() if w not in ("X", "V")]
    # a template word spelled like a syllable would make names ambiguous to read back
    assert not set(words) & set(SYLLABLES), sorted(set(words) & set(SYLLABLES))
    return list(dict.fromkeys(words + list(SYLLABLES)))  # first occurrence order, duplicates dropped


# Every word any Options can produce, fixed across seeds and options: one model reads any facts world.
VOCABULARY = WordVocabulary("facts", _all_words())


# ----- reading facts back out of text -----

_NAME = r"((?:[%s][%s] ){1,%d})" % (CONSONANTS, VOWELS, NAME_SYLLABLES)  # "ka lu " (spelled, trailing space)


def _pattern(template: str, values: tuple[str, ...], ending: str) -> re.Pattern:
    value = "(" + "|".join(values) + ")"
    parts = [_NAME if w == "X" else value + " " if w == "V" else re.escape(w) + " " for w in template.split()]
    return re.compile("".join(parts) + re.escape(ending))


_READERS = [  # (pattern, attribute, does the name come first among the groups)
    (_pattern(t, values, STOP), attribute, not value_first(t))
    for attribute, values in ATTRIBUTES.items() for t in STATEMENTS[attribute]
] + [
    (_pattern(t + " " + ASK + " V", values, STOP), attribute, True)
    for attribute, values in ATTRIBUTES.items() for t in QUESTIONS[attribute]
]


def read_facts(text: str) -> set[tuple[str, str, str]]:
    """Every (name, attribute, value) that `text` states, either as a statement or as an answered question,
    name joined ("kalu"). Words that form no complete sentence are ignored."""
    text = " ".join(text.split())
    found = set()
    for sentence in _sentences(text):
        for pattern, attribute, name_first in _READERS:
            match = pattern.fullmatch(sentence)
            if match:
                name, value = match.groups() if name_first else match.groups()[::-1]
                found.add(("".join(name.split()), attribute, value))
                break
    return found


def _sentences(text: str) -> list[str]:
    """Cut text after every STOP; a question and its answer stay one sentence ("q ? V .")."""
    sentences, current = [], []
    for word in text.split():
        if word in (PAD, SEP):
            current = []
            continue
        current.append(word)
        if word == STOP:
            sentences.append(" ".join(current))
            current = []
    return sentences


def same_facts(completion: str, reference: str) -> bool:
    """The judge's test: both texts state the same non-empty set of facts (paraphrases count as equal)."""
    facts = read_facts(reference)
    return bool(facts) and read_facts(completion) == facts
