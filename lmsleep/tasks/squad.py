"""SQuAD v1.1 passages and their scoring: the real-text knowledge-incorporation setting (SEAL's layout, the
one paper 2's Table 3 uses): read a passage, sleep or fine-tune, answer its questions without it.

    load(path)                -> list[Passage]: the grouped file, checked (a file of another layout is a
                                 one-line ValueError naming the file and what is wrong)
    normalize(text)           SQuAD's answer normalisation: lower case, punctuation and the articles
                              a / an / the removed, whitespace collapsed
    exact_match(pred, gold)   1.0 when the normalised strings are equal, else 0.0
    f1(pred, gold)            token F1 of the normalised strings (tokens counted with multiplicity)

The scoring follows the definitions of the official v1.1 evaluation (Rajpurkar et al., 2016), with one
reference answer per question as the grouped file holds. The data's licence and source:
../shared/data/squad/README.md (CC BY-SA 4.0).
"""
from __future__ import annotations

import collections
import json
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parents[3] / "shared" / "data" / "squad" / "squad_val.json"
ENVIRONMENT = "LMSLEEP_SQUAD"  # where the grouped file is, if not DEFAULT_PATH


@dataclass(frozen=True)
class Question:
    question: str
    answer: str


@dataclass(frozen=True)
class Passage:
    title: str
    context: str
    questions: tuple[Question, ...]


def default_path() -> Path:
    """$LMSLEEP_SQUAD, else ../shared/data/squad/squad_val.json beside the repository."""
    return Path(os.environ.get(ENVIRONMENT) or DEFAULT_PATH)


def load(path: str | os.PathLike | None = None) -> list[Passage]:
    """The passages of a grouped SQuAD file: [{"title", "context", "questions": [{"question", "answer"}]}]."""
    path = Path(path) if path is not None else default_path()
    if not path.is_file():
        raise FileNotFoundError(f"SQuAD file {path} not found (set ${ENVIRONMENT} or pass its path)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"SQuAD file {path} is not JSON: {error}") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"SQuAD file {path}: expected a non-empty JSON list of passages (SEAL's grouped layout), "
                         f"got {type(data).__name__}{' (the official nested layout?)' if isinstance(data, dict) else ''}")
    passages = []
    for index, item in enumerate(data):
        where = f"SQuAD file {path}, passage {index}"
        if not isinstance(item, dict) or not isinstance(item.get("context"), str) \
                or not isinstance(item.get("questions"), list):
            raise ValueError(f"{where}: expected an object with a string 'context' and a list 'questions'")
        questions = []
        for q in item["questions"]:
            if not isinstance(q, dict) or not isinstance(q.get("question"), str) or not isinstance(q.get("answer"), str):
                raise ValueError(f"{where}: every question needs string 'question' and 'answer' fields, got {q!r:.80}")
            questions.append(Question(q["question"], q["answer"]))
        passages.append(Passage(str(item.get("title", "")), item["context"], tuple(questions)))
    return passages


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize(prediction) == normalize(gold))


def f1(prediction: str, gold: str) -> float:
    predicted, reference = normalize(prediction).split(), normalize(gold).split()
    common = sum((collections.Counter(predicted) & collections.Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(reference)
    return 2 * precision * recall / (precision + recall)
