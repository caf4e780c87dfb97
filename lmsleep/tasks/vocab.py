"""The one character vocabulary all three tasks share, so one model can be trained on any of them.

Every token is one character, so a sequence's text and its token ids map one to one:

    id 0        "_"  PAD (left padding, so that a section ends on a window boundary)
    id 1        "|"  SEP (opens a prediction chunk)
    ids 2-11    "0".."9"  digits: bits, hop counts, values mod p
    ids 12-20   ">,:;?=+-*"  separators and operators
    ids 21-46   "a".."z"  node and variable names

VOCAB_SIZE is 47 and does not depend on any task option.
"""
from __future__ import annotations

PAD, SEP = "_", "|"
DIGITS = "0123456789"
SYMBOLS = ">,:;?=+-*"
LETTERS = "abcdefghijklmnopqrstuvwxyz"

CHARS = PAD + SEP + DIGITS + SYMBOLS + LETTERS
VOCAB_SIZE = len(CHARS)
PAD_ID, SEP_ID = CHARS.index(PAD), CHARS.index(SEP)
_ID_OF = {char: index for index, char in enumerate(CHARS)}


def encode(text: str) -> list[int]:
    """Token ids of `text`, one per character; refuses characters outside the vocabulary."""
    try:
        return [_ID_OF[char] for char in text]
    except KeyError as error:
        raise ValueError(f"character {error.args[0]!r} is not in the task vocabulary {CHARS!r}") from None


def decode(ids) -> str:
    """The text of token ids (any iterable of ints, e.g. a list or a 1-D tensor's .tolist())."""
    ids = [int(i) for i in ids]
    if any(not 0 <= i < VOCAB_SIZE for i in ids):
        raise ValueError(f"token ids must be in [0, {VOCAB_SIZE - 1}], got {ids!r}")
    return "".join(CHARS[i] for i in ids)


def left_pad(text: str, multiple: int) -> str:
    """`text` with PAD prepended up to the next multiple of `multiple` tokens (a whole number of windows)."""
    return PAD * (-len(text) % multiple) + text
