"""Vocabularies: how a task's text maps to token ids, and the name a model records of the one it learned.

A `Vocabulary` is a list of token strings (the id of a token is its index) and a rule that splits text
into tokens: `CharVocabulary` (one token per character) or `WordVocabulary` (whitespace-separated words,
for worlds written in words). Its `identity` is what a model's config records (SleepConfig.vocabulary):
the name and a short hash of the token list, so a model is never paired with a vocabulary whose ids mean
other tokens (`check_vocabulary`).

The paper-1 tasks share one character vocabulary, CHARACTERS, so one model can be trained on any of them:

    id 0        "_"  PAD (left padding, so that a section ends on a window boundary)
    id 1        "|"  SEP (opens a prediction chunk)
    ids 2-11    "0".."9"  digits: bits, hop counts, values mod p
    ids 12-20   ">,:;?=+-*"  separators and operators
    ids 21-46   "a".."z"  node and variable names

VOCAB_SIZE is 47 and does not depend on any task option. Its identity is plain "chars": models saved
before vocabularies were recorded have no such field, and the config reads the missing field as "chars".
The module-level CHARS, VOCAB_SIZE, PAD_ID, SEP_ID, encode and decode are this vocabulary's.
"""
from __future__ import annotations

import hashlib
import json
from typing import Sequence


class Vocabulary:
    """Token strings by id; subclasses say how text splits into tokens and how tokens join into text."""

    unit = "token"  # what one token is, for error messages

    def __init__(self, name: str, tokens: Sequence[str], *, identity: str | None = None):
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ValueError(f"vocabulary name must be a non-empty string without whitespace, got {name!r}")
        tokens = tuple(tokens)
        if not tokens:
            raise ValueError(f"vocabulary {name!r} has no tokens")
        for token in tokens:
            self._check_token(name, token)
        duplicates = sorted({t for t in tokens if tokens.count(t) > 1})
        if duplicates:
            raise ValueError(f"vocabulary {name!r} lists {self.unit}s more than once: {duplicates}")
        self.name, self.tokens = name, tokens
        self._id_of = {token: index for index, token in enumerate(tokens)}
        digest = hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:12]
        self.identity = identity if identity is not None else f"{name}-{digest}"

    @property
    def size(self) -> int:
        return len(self.tokens)

    def split(self, text: str) -> list[str]:
        raise NotImplementedError

    def join(self, tokens: list[str]) -> str:
        raise NotImplementedError

    def _check_token(self, name: str, token) -> None:
        if not isinstance(token, str) or not token:
            raise ValueError(f"vocabulary {name!r}: every {self.unit} must be a non-empty string, got {token!r}")

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; refuses a token outside the vocabulary."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a string, got {type(text).__name__}")
        try:
            return [self._id_of[token] for token in self.split(text)]
        except KeyError as error:
            raise ValueError(f"{self.unit} {error.args[0]!r} is not in the task vocabulary {self._shown()}") from None

    def decode(self, ids) -> str:
        """The text of token ids (any iterable of ints, e.g. a list or a 1-D tensor's .tolist())."""
        ids = [int(i) for i in ids]
        if any(not 0 <= i < self.size for i in ids):
            raise ValueError(f"token ids must be in [0, {self.size - 1}], got {ids!r}")
        return self.join([self.tokens[i] for i in ids])

    def index(self, token: str) -> int:
        """The id of one token."""
        if token not in self._id_of:
            raise ValueError(f"{self.unit} {token!r} is not in the task vocabulary {self._shown()}")
        return self._id_of[token]

    def _shown(self) -> str:
        return f"{self.name!r} ({self.size} {self.unit}s)"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and (other.identity, other.tokens) == (self.identity, self.tokens)

    def __hash__(self) -> int:
        return hash((self.identity, self.tokens))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.size} {self.unit}s, identity={self.identity!r})"


class CharVocabulary(Vocabulary):
    """One token per character: text and token ids map one to one."""

    unit = "character"

    def split(self, text: str) -> list[str]:
        return list(text)

    def join(self, tokens: list[str]) -> str:
        return "".join(tokens)

    def _check_token(self, name: str, token) -> None:
        if not isinstance(token, str) or len(token) != 1:
            raise ValueError(f"vocabulary {name!r}: every character must be a string of length 1, got {token!r}")

    def _shown(self) -> str:
        return f"{self.name!r}: {''.join(self.tokens)!r}"


class WordVocabulary(Vocabulary):
    """One token per whitespace-separated word; decoding joins the words with single spaces."""

    unit = "word"

    def split(self, text: str) -> list[str]:
        return text.split()

    def join(self, tokens: list[str]) -> str:
        return " ".join(tokens)

    def _check_token(self, name: str, token) -> None:
        super()._check_token(name, token)
        if any(c.isspace() for c in token):
            raise ValueError(f"vocabulary {name!r}: a word cannot contain whitespace, got {token!r}")


def check_vocabulary(recorded: str, expected: str, *, model: str = "the model", user: str = "the task") -> None:
    """Refuse a model whose recorded vocabulary identity is not `expected` (both as SleepConfig.vocabulary
    holds them): its token ids would mean other tokens."""
    if recorded != expected:
        raise ValueError(
            f"{model} was trained with vocabulary {recorded!r}, {user} uses {expected!r}; "
            "its token ids mean other tokens, so it cannot be used here"
        )


# ----- the paper-1 character vocabulary -----

PAD, SEP = "_", "|"
DIGITS = "0123456789"
SYMBOLS = ">,:;?=+-*"
LETTERS = "abcdefghijklmnopqrstuvwxyz"

CHARS = PAD + SEP + DIGITS + SYMBOLS + LETTERS
CHARACTERS = CharVocabulary("chars", CHARS, identity="chars")  # "chars": what configs without the field mean
VOCAB_SIZE = CHARACTERS.size
PAD_ID, SEP_ID = CHARACTERS.index(PAD), CHARACTERS.index(SEP)
encode, decode = CHARACTERS.encode, CHARACTERS.decode


def left_pad(text: str, multiple: int) -> str:
    """`text` with PAD prepended up to the next multiple of `multiple` tokens (a whole number of windows)."""
    return PAD * (-len(text) % multiple) + text
