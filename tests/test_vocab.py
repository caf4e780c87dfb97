"""Vocabularies: the paper-1 character vocabulary unchanged, word vocabularies, and the identity a model records."""
import json
import types
from dataclasses import dataclass

import pytest

from lmsleep import SleepConfig, SleepLM
from lmsleep.io import load_model, save_model
from lmsleep.tasks import TASKS, check_model_vocabulary, vocabulary
from lmsleep.tasks import vocab as vocab_module
from lmsleep.tasks.example import make_example, Answer
from lmsleep.tasks.vocab import CHARACTERS, CharVocabulary, WordVocabulary, check_vocabulary
from lmsleep.train import TrainConfig, initial_weights

from test_train import TINY_MODEL, tiny_train_config

WORDS = ["<pad>", "?", "the", "cat", "sat", "on", "mat", "who"]


# ----- the character vocabulary stays exactly as it was -----


def test_the_character_vocabulary_keeps_its_ids_and_records_as_chars():
    assert CHARACTERS.identity == "chars"  # what every saved config without the field means
    assert "".join(CHARACTERS.tokens) == "_|0123456789>,:;?=+-*abcdefghijklmnopqrstuvwxyz"
    assert (CHARACTERS.size, vocab_module.VOCAB_SIZE, vocab_module.PAD_ID, vocab_module.SEP_ID) == (47, 47, 0, 1)
    assert vocab_module.encode("_|09>*az") == [0, 1, 2, 11, 12, 20, 21, 46]
    assert vocab_module.decode([0, 1, 2, 11, 12, 20, 21, 46]) == "_|09>*az"
    assert vocab_module.CHARS == "".join(CHARACTERS.tokens)


def test_every_task_declares_its_vocabulary_and_writes_its_examples_in_it():
    for name, module in TASKS.items():
        declared = vocabulary(name)
        assert declared is module.VOCABULARY
        assert (declared is CHARACTERS) == (name in ("rule110", "depo", "math", "puzzles"))  # the rest: words
        example = module.generate(module.Options(), 2, seed=0)[0]
        assert declared.encode(example.input_text) == example.tokens
    with pytest.raises(ValueError, match="unknown task 'chess'"):
        vocabulary("chess")


# ----- word vocabularies -----


def test_word_vocabulary_encodes_whitespace_separated_words():
    words = WordVocabulary("toy", WORDS)
    assert words.size == 8
    ids = words.encode("  the cat\tsat\non the mat ")
    assert ids == [2, 3, 4, 5, 2, 6]
    assert words.decode(ids) == "the cat sat on the mat"
    assert words.index("who") == 7
    with pytest.raises(ValueError, match=r"word 'dog' is not in the task vocabulary 'toy' \(8 words\)"):
        words.encode("the dog sat")
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 7\]"):
        words.decode([8])
    with pytest.raises(TypeError, match="encode takes a string"):
        words.encode(["the"])


def test_identity_is_the_name_and_a_hash_of_the_token_list():
    words = WordVocabulary("toy", WORDS)
    assert words.identity.startswith("toy-") and len(words.identity) == len("toy-") + 12
    assert WordVocabulary("toy", list(WORDS)).identity == words.identity  # stable: a pure function of the tokens
    assert WordVocabulary("toy", WORDS[::-1]).identity != words.identity  # same words, other ids
    assert WordVocabulary("toy", WORDS + ["dog"]).identity != words.identity
    assert WordVocabulary("other", WORDS).identity != words.identity
    assert CharVocabulary("digits", "0123456789").identity != CharVocabulary("digits", "0123456798").identity


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: WordVocabulary("toy", ["a", "b", "a"]), r"more than once: \['a'\]"),
        (lambda: WordVocabulary("toy", ["a b"]), "cannot contain whitespace"),
        (lambda: WordVocabulary("toy", ["a", ""]), "non-empty string"),
        (lambda: WordVocabulary("toy", []), "has no tokens"),
        (lambda: WordVocabulary("my toy", ["a"]), "name must be a non-empty string without whitespace"),
        (lambda: WordVocabulary("", ["a"]), "name must be"),
        (lambda: CharVocabulary("c", ["ab"]), "string of length 1"),
    ],
)
def test_bad_vocabularies_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_task_can_write_its_examples_in_words():
    words = WordVocabulary("toy", WORDS)
    example = make_example(["the cat sat on the mat who sat on the mat ?", Answer("the cat", bucket=1)], {}, words)
    assert example.input_text == "the cat sat on the mat who sat on the mat ? the"
    assert example.targets[-2:] == [2, 3] and example.loss_mask[-2:] == [1, 1] and sum(example.loss_mask) == 2
    assert example.target_text == "the cat"


# ----- what a model records and the checks on it -----


def test_an_old_config_without_the_field_reads_as_chars():
    config = SleepConfig()
    data = json.loads(config.to_json())
    assert data.pop("vocabulary") == "chars"
    assert SleepConfig.from_json(json.dumps(data)) == config
    with pytest.raises(ValueError, match="SleepConfig.vocabulary must be a non-empty string"):
        SleepConfig(vocabulary="")


def test_a_model_of_another_vocabulary_is_refused_with_a_clear_message():
    check_vocabulary("chars", "chars")
    with pytest.raises(ValueError, match="model m was trained with vocabulary 'toy-1', task t uses 'chars'"):
        check_vocabulary("toy-1", "chars", model="model m", user="task t")
    check_model_vocabulary(SleepConfig(vocab_size=47), "rule110")
    with pytest.raises(ValueError, match="was trained with vocabulary 'toy-1', task 'depo' uses 'chars'"):
        check_model_vocabulary(SleepConfig(vocab_size=47, vocabulary="toy-1"), "depo")
    with pytest.raises(ValueError, match="vocab_size 32, fewer than the 47 tokens"):
        check_model_vocabulary(SleepConfig(vocab_size=32), "math")


@pytest.fixture
def word_task(monkeypatch):
    """A one-option task written in words, registered beside the paper-1 tasks."""

    @dataclass(frozen=True)
    class Options:
        window: int = 8

    module = types.SimpleNamespace(Options=Options, VOCABULARY=WordVocabulary("toy", WORDS))
    monkeypatch.setitem(TASKS, "toy", module)
    return module


def test_train_config_fills_the_vocabulary_from_the_task(word_task):
    chars = tiny_train_config().model_config()
    assert (chars.vocabulary, chars.vocab_size) == ("chars", 47)
    words = TrainConfig(task="toy", model=TINY_MODEL).model_config()
    assert (words.vocabulary, words.vocab_size) == (word_task.VOCABULARY.identity, 8)
    assert tiny_train_config(model={**TINY_MODEL, "vocabulary": "chars"}).model_config() == chars
    with pytest.raises(ValueError, match="TrainConfig.model.vocabulary is 'toy-x', but task 'rule110' is written in"):
        tiny_train_config(model={**TINY_MODEL, "vocabulary": "toy-x"})


def test_init_from_refuses_a_model_of_another_vocabulary(tmp_path, word_task):
    config = tiny_train_config().model_config()
    other = config.replace(vocabulary=word_task.VOCABULARY.identity)
    save_model(SleepLM(other), tmp_path / "words")
    assert load_model(tmp_path / "words").config.vocabulary == word_task.VOCABULARY.identity  # recorded on disk
    message = rf"init_from: the model at .*words was trained with vocabulary '{other.vocabulary}', this run's task uses 'chars'"
    with pytest.raises(ValueError, match=message):
        initial_weights(tmp_path / "words", config)
    save_model(SleepLM(config), tmp_path / "chars")
    assert set(initial_weights(tmp_path / "chars", config)) == set(SleepLM(config).state_dict())
