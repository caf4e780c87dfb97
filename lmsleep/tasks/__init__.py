"""The tasks, each a module with the same interface (spec: sleep-recurrence.md, Tasks):

    Options(...)                 frozen dataclass of difficulty options; bad values raise ValueError
    Options().window             L, the window the task is laid out for
    VOCABULARY                   the tasks.vocab.Vocabulary its text is written in
    generate(options, n, seed)   -> list[Example], deterministic in seed, all of one length T
    solve(raw)                   -> list[str], the answers recomputed from Example.raw alone

The paper-1 tasks (rule110, depo, math) share one character vocabulary (tasks.vocab.CHARACTERS, VOCAB_SIZE
tokens); the paper-2 world `facts` is written in words (its own WordVocabulary); `batch` stacks
examples into tensors and `score` turns predicted tokens into exact / per-answer / per-bucket accuracies
(tasks.example). A model records the identity of the vocabulary it was trained with; `check_model_vocabulary`
refuses to pair it with a task written in another.
"""
from . import depo, facts, languages, puzzles, rule110, symbolic_math
from .example import Answer, Example, answer_accuracy, batch, masked_targets, score
from .vocab import VOCAB_SIZE, CharVocabulary, Vocabulary, WordVocabulary, check_vocabulary, decode, encode

TASKS = {"rule110": rule110, "depo": depo, "math": symbolic_math, "facts": facts, "languages": languages, "puzzles": puzzles}


def vocabulary(task: str) -> Vocabulary:
    """The vocabulary task `task` (a key of TASKS) is written in."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {sorted(TASKS)}")
    return TASKS[task].VOCABULARY


def check_model_vocabulary(config, task: str, model: str = "the model") -> None:
    """Refuse a model (its SleepConfig `config`) trained with another vocabulary than task `task`'s, or
    whose embedding has fewer rows than that vocabulary has tokens."""
    expected = vocabulary(task)
    check_vocabulary(config.vocabulary, expected.identity, model=model, user=f"task {task!r}")
    if config.vocab_size < expected.size:
        raise ValueError(
            f"{model} has vocab_size {config.vocab_size}, fewer than the {expected.size} tokens of task {task!r}'s "
            f"vocabulary {expected.identity!r}"
        )


__all__ = [
    "TASKS", "Answer", "CharVocabulary", "Example", "VOCAB_SIZE", "Vocabulary", "WordVocabulary", "batch",
    "answer_accuracy", "check_model_vocabulary", "check_vocabulary", "decode", "depo", "facts", "encode", "masked_targets", "rule110", "score",
    "symbolic_math", "vocabulary",
]
