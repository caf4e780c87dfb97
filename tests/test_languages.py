"""The invented-languages world: translations against a hand-worked one, the solver, one layout, languages
that differ, closed-book padding."""
import pytest

from lmsleep.tasks import batch, languages
from lmsleep.tasks.example import masked_targets


def test_a_translation_by_hand():
    raw = {"lexicon": {"red": "pa su", "goat": "te yi", "finds": "te ha", "cat": "zi se"}, "order": "sov",
           "adjective_after": False, "sentence": ["red", "goat", "finds", "cat"]}
    assert languages.translate(raw) == "pa su te yi zi se te ha"
    raw.update(order="vos", adjective_after=True)
    assert languages.translate(raw) == "te ha zi se te yi pa su"


def test_examples_are_deterministic_solvable_and_of_one_length():
    options = languages.Options(language=2, languages=4)
    examples = languages.generate(options, 30, seed=1)
    assert [e.tokens for e in examples] == [e.tokens for e in languages.generate(options, 30, seed=1)]
    assert {len(e) for e in examples} == {options.window}
    assert {e.raw["language"] for e in examples} <= {2, 3, 4, 5} and len({e.raw["language"] for e in examples}) > 1
    for e in examples:
        assert languages.solve(e.raw) == [e.target_text]
        assert languages.VOCABULARY.decode(masked_targets(e)) == e.target_text
    batch(examples)


def test_languages_differ_and_are_fixed_by_their_number():
    first, second = languages.language(0), languages.language(1)
    assert first == languages.language(0)
    assert first["lexicon"] != second["lexicon"]
    assert len(set(first["lexicon"].values())) == len(languages.CONCEPTS)  # one word per concept
    orders = {languages.language(n)["order"] for n in range(30)}
    assert len(orders) > 3


def test_closed_book_pads_where_the_book_was():
    with_book = languages.generate(languages.Options(context=1), 1, seed=4)[0]
    without = languages.generate(languages.Options(context=0), 1, seed=4)[0]
    assert len(with_book) == len(without) and "book" in with_book.input_text and "book" not in without.input_text
    assert with_book.targets[-9:] == without.targets[-9:]


@pytest.mark.parametrize("field,value", [("language", -1), ("languages", 0), ("context", 2)])
def test_bad_options_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        languages.Options(**{field: value})


def test_the_sentence_space_and_rendering_given_sentences():
    small = languages.Options(language=7, nouns=4, verbs=2, adjectives=2, named=1)
    space = languages.sentences(small)
    assert len(space) == len(set(space)) == 2 * 4 * 3 * 2 and all(s[1] != s[3] for s in space)
    examples = languages.render(small, space[:5])
    assert [tuple(e.raw["sentence"]) for e in examples] == space[:5]
    assert {e.raw["language"] for e in examples} == {7} and {len(e) for e in examples} == {small.window}
    assert all(languages.solve(e.raw) == [e.target_text] for e in examples)
    drawn = languages.generate(small, 20, seed=3)  # generate draws from the same space
    assert {tuple(e.raw["sentence"]) for e in drawn} <= set(space)
    with pytest.raises(ValueError, match="not in this world"):
        languages.render(small, [("big", "cat", "sees", "cat")])
    with pytest.raises(ValueError, match="not in this world"):
        languages.render(small, [("big", "horse", "sees", "cat")])
