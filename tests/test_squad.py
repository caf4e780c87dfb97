"""SQuAD loading (layout checked, errors naming the file) and scoring against the v1.1 definitions."""
import json

import pytest

from lmsleep.tasks import squad


def test_normalisation_drops_case_punctuation_articles_and_extra_spaces():
    assert squad.normalize("The  Denver Broncos!") == "denver broncos"
    assert squad.normalize("an apple, a pear") == "apple pear"
    assert squad.normalize("Theatre") == "theatre"  # an article only as a whole word


def test_exact_match_and_f1_by_their_definitions():
    assert squad.exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    assert squad.exact_match("Broncos", "Denver Broncos") == 0.0
    # prediction tokens {denver, broncos, won}, gold {denver, broncos}: P = 2/3, R = 1, F1 = 0.8
    assert squad.f1("Denver Broncos won", "Denver Broncos") == pytest.approx(0.8)
    assert squad.f1("x b b", "b b c") == pytest.approx(2 / 3)  # multiplicity: 2 common of 3 and 3
    assert squad.f1("a b b", "b b c") == pytest.approx(0.8)  # the article goes: 2 of 2 and 2 of 3
    assert squad.f1("", "Denver") == 0.0 and squad.f1("the", "the") == 0.0  # nothing left after normalising


def test_loads_the_shared_file():
    path = squad.default_path()
    if not path.is_file():
        pytest.skip(f"{path} is not here (../shared is beside the repository in CI)")
    passages = squad.load()
    assert len(passages) == 2067 and passages[0].title == "Super Bowl 50"
    assert passages[0].questions[0].answer == "Denver Broncos"


@pytest.mark.parametrize("content,message", [
    ("not json", "is not JSON"),
    (json.dumps({"data": []}), "official nested layout"),
    (json.dumps([{"context": "x"}]), "passage 0: expected an object"),
    (json.dumps([{"context": "x", "questions": [{"question": "q"}]}]), "string 'question' and 'answer'"),
])
def test_a_file_of_another_layout_is_named(tmp_path, content, message):
    path = tmp_path / "other.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        squad.load(path)
    assert str(path) in str(error.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        squad.load(tmp_path / "nowhere.json")
