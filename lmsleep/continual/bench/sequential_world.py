"""The world of the `sequential` and `levels` benchmarks: small invented languages (tasks.languages), how
each language's sentences are split into training and test rows, the accuracy asked of them, and the
world's pretrained base (its recipe and its gate).

WORLD: 4 nouns, 2 verbs, 2 adjectives, word order and adjective rule, each language named; the name is
written before the sentence, so that closed-book it says which language is asked. An example is the book,
SEP, the name and the English sentence, then the translation: "book NAME : cat = ka lu ; … | NAME : the
big cat sees the dog > TRANSLATION ." (closed-book: padding where the book was).

The base (1 memory level) is pretrained with the book in context on languages 1000..1999, until it
translates from a book; its in-context accuracy on unseen languages (500..) is its gate.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import asdict, replace

import torch

from ... import validate
from ...config import SleepConfig
from ...model import SleepLM
from ...tasks import batch, languages
from ...train import TrainConfig
from ..base import pretrained
from ..levels import set_expert_gating
from ..seeds import derive

WORLD = {"nouns": 4, "verbs": 2, "adjectives": 2, "named": 1, "english_loss": 1}
PRETRAIN = languages.Options(language=1000, languages=1000, **WORLD)
HELD_OUT_FIRST, HELD_OUT_SEED = 500, 2**31 - 5  # unseen languages for the base's gate
VALIDATION = (100, 101)  # the tuning sequence (its first --validation languages); test languages are 0..T−1
MODEL = {"layout": "AAA", "eviction": "none", "d_model": 64, "memory_levels": 1, "expert_pool": 8, "expert_rank": 8}
TRAINING = {"batch_size": 32, "lr": 0.008, "adamw_lr": 0.012, "warmup": 30, "min_lr_ratio": 1.0}
BASE_STEPS = 3000
GATE = 0.9  # the aim for in-context accuracy
GATING = next(f.default for f in dataclasses.fields(SleepConfig) if f.name == "expert_gating")  # the model's default

PAD = languages.VOCABULARY.encode(languages.PAD)[0]
SEP = languages.VOCABULARY.encode(languages.SEP)  # the replay prompt: a sentence after the book
BOOK = languages.VOCABULARY.encode("book")  # how every example starts: the prompt of unrelated replay


def options(language: int, context: int) -> languages.Options:
    return languages.Options(language=language, context=context, **WORLD)


def examples(language: int, n: int, seed: int, context: int) -> dict:
    return batch(languages.generate(options(language, context), n, seed))


def example_length() -> int:
    """Tokens of one whole example (book, sentence and translation)."""
    return options(0, 1).window + 1


def space() -> list[tuple[str, str, str, str]]:
    """Every sentence of WORLD (48: 2 adjectives × 4·3 ordered noun pairs × 2 verbs)."""
    return languages.sentences(options(0, 0))


def split(language: int, seed: int, train: int, test: int) -> tuple[list, list]:
    """(training sentences, test sentences) of `language`: the sentence space shuffled by (seed, language)
    and cut in two, so that no test sentence is ever trained on (each set has no repeats)."""
    sentences = space()
    if train + test > len(sentences):
        raise ValueError(f"--train {train} + --test {test} = {train + test} sentences, but a language of this world "
                         f"has only {len(sentences)} distinct ones (test sentences must not be trained on)")
    random.Random(derive(seed, "split", language)).shuffle(sentences)
    return sentences[test : test + train], sentences[:test]


def language_sets(language: int, seed: int, train: int, test: int) -> dict:
    """The language's training and test examples, closed-book and with its book in context."""
    train_sentences, test_sentences = split(language, seed, train, test)
    render = lambda sentences, context: batch(languages.render(options(language, context), sentences))
    return {"train": render(train_sentences, 0), "in_context": render(train_sentences, 1),
            "closed": render(test_sentences, 0), "test_in_context": render(test_sentences, 1)}


def book_length() -> int:
    """Tokens before SEP (the book, or its padding): what the learner reads as its context."""
    ids = examples(0, 1, 0, 1)["tokens"][0].tolist()
    return ids.index(SEP[0])


def accuracy(model: SleepLM, data: dict) -> float:
    """Fraction of translation syllables predicted right (teacher-forced), "." excluded."""
    stop = languages.VOCABULARY.encode(languages.STOP)[0]
    scored = (data["answer_id"] >= 0) & (data["targets"] != stop)
    with torch.no_grad():
        predicted = torch.cat([model(data["tokens"][i : i + 128]).argmax(-1) for i in range(0, len(data["tokens"]), 128)])
    return ((predicted == data["targets"]) & scored).sum().item() / max(1, scored.sum().item())


def with_book(data: dict, book: dict) -> dict:
    """`data`'s sentences after `book`'s book (every position before SEP taken from `book`)."""
    cut = book_length()
    out = dict(data)
    out["tokens"] = torch.cat([book["tokens"][: len(data["tokens"]), :cut], data["tokens"][:, cut:]], dim=1)
    return out


# ----- the base -----

def base_config(steps: int = BASE_STEPS) -> TrainConfig:
    validate.positive_int("base_steps", steps)
    return TrainConfig(task="languages", task_options=asdict(PRETRAIN), model=dict(MODEL), steps=steps, seed=0,
                       eval_every=max(1, steps // 30), eval_size=128, checkpoint_every=steps,
                       log_every=max(1, steps // 60), **TRAINING)


def measure_base(model: SleepLM, n: int = 256) -> dict:
    """The gate: accuracy on unseen languages with the book in context, and closed-book."""
    model.eval()
    result = {}
    for name, context in (("in_context", 1), ("closed_book", 0)):
        data = batch(languages.generate(replace(options(HELD_OUT_FIRST, context), languages=100), n, HELD_OUT_SEED))
        result[name] = round(accuracy(model, data), 4)
    return result


def base(args, progress: bool = False) -> tuple[SleepLM, dict]:
    """The world's base for args.base_steps (trained once, with a progress bar when `progress`, then cached)."""
    return pretrained(base_config(args.base_steps), measure_base, args.cache_dir, progress=progress)


POOL_TENSORS = ("A", "B", "pool_router", "active")  # a level's low-rank experts (each grown model has its own)


def with_levels(model: SleepLM, levels: int, pool: int, gating: str = GATING) -> SleepLM:
    """A copy of the 1-level `model` with `levels` memory levels, `pool` experts per level and experts gated
    by `gating`: level 1 is the base's, the others start empty (their MLP's output projection zero), so it
    computes exactly what the base computes. One base thus serves every level count and every gating (a
    cached base keeps the gating it was saved with; the gating only matters once an expert is trained)."""
    if model.config.memory_levels != 1:
        raise ValueError(f"with_levels extends a 1-level base, got memory_levels = {model.config.memory_levels}")
    validate.positive_int("levels", levels)
    grown = SleepLM(replace(model.config, memory_levels=levels, expert_pool=pool))
    state = {k: v for k, v in model.state_dict().items() if k.split(".")[-1] not in POOL_TENSORS}
    missing, unexpected = grown.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(".levels." in k and (".levels.0." not in k or k.split(".")[-1] in POOL_TENSORS) for k in missing), missing
    with torch.no_grad():
        for block in grown.blocks:
            for level in block.mlp.levels[1:]:
                for expert in level.base:
                    expert.down.weight.zero_()
    return set_expert_gating(grown, gating).eval()
