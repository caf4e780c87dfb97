"""The paper's three tasks, each a module with the same interface (spec: sleep-recurrence.md, Tasks):

    Options(...)                 frozen dataclass of difficulty options; bad values raise ValueError
    Options().window             L, the window the task is laid out for
    generate(options, n, seed)   -> list[Example], deterministic in seed, all of one length T
    solve(raw)                   -> list[str], the answers recomputed from Example.raw alone

All tasks share one vocabulary (tasks.vocab, VOCAB_SIZE tokens); `batch` stacks examples into tensors
and `score` turns predicted tokens into exact / per-answer / per-bucket accuracies (tasks.example).
"""
from . import depo, rule110, symbolic_math
from .example import Answer, Example, batch, masked_targets, score
from .vocab import VOCAB_SIZE, decode, encode

TASKS = {"rule110": rule110, "depo": depo, "math": symbolic_math}

__all__ = [
    "TASKS", "Answer", "Example", "VOCAB_SIZE", "batch", "decode", "depo", "encode", "masked_targets", "rule110",
    "score", "symbolic_math",
]
