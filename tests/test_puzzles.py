"""The 1-D puzzles world: rules against hand-worked rows, the solver, the split, the layout, the CLI."""
import json

import pytest

from lmsleep.cli import main
from lmsleep.tasks import batch, puzzles
from lmsleep.tasks.example import masked_targets


@pytest.mark.parametrize("rule,params,row,expected", [
    ("shift", {"k": 2}, [1, 2, 0, 3, 0], [3, 0, 1, 2, 0]),
    ("reverse", {}, [1, 2, 0, 3], [3, 0, 2, 1]),
    ("recolor", {"a": 2, "b": 3}, [2, 1, 2, 0], [3, 1, 3, 0]),
    ("gravity", {"side": 0}, [0, 2, 0, 1], [2, 1, 0, 0]),
    ("gravity", {"side": 1}, [0, 2, 0, 1], [0, 0, 2, 1]),
    ("fill", {}, [0, 2, 0, 0, 2, 1, 0, 1], [0, 2, 2, 2, 2, 1, 1, 1]),
    ("fill", {}, [2, 0, 1, 0, 2], [2, 0, 1, 0, 2]),
    ("mirror", {}, [1, 2, 0, 0, 3, 3], [1, 2, 0, 0, 2, 1]),
])
def test_rules_by_hand(rule, params, row, expected):
    assert puzzles.apply(rule, params, row) == expected


def test_examples_are_deterministic_solvable_and_of_one_length():
    options = puzzles.Options()
    examples = puzzles.generate(options, 40, seed=3)
    assert [e.tokens for e in examples] == [e.tokens for e in puzzles.generate(options, 40, seed=3)]
    assert {len(e) for e in examples} == {options.window}
    for e in examples:
        answer = puzzles.solve(e.raw)
        assert answer == [e.target_text]
        assert puzzles.VOCABULARY.decode(masked_targets(e)) == answer[0]
        assert e.input_text.split("|")[1].startswith(e.raw["test"][0] + ">")
    batch(examples)


def test_training_and_held_out_tasks_are_disjoint():
    train = puzzles.tasks(puzzles.Options(split=1))
    held_out = puzzles.tasks(puzzles.Options(split=2))
    key = lambda task: (task[0], tuple(sorted(task[1].items())))  # noqa: E731
    assert held_out and train and not {key(t) for t in train} & {key(t) for t in held_out}
    assert len(train) + len(held_out) == len(puzzles.tasks(puzzles.Options(split=0)))
    seen = {key((e.raw["rule"], e.raw["params"])) for e in puzzles.generate(puzzles.Options(split=2), 60, 0)}
    assert seen <= {key(t) for t in held_out}


def test_a_tampered_demonstration_is_caught_by_the_solver():
    raw = puzzles.generate(puzzles.Options(), 1, seed=1)[0].raw
    raw["demos"][0][1] = "9" + raw["demos"][0][1][1:]
    with pytest.raises(ValueError, match="does not follow"):
        puzzles.solve(raw)


@pytest.mark.parametrize("field,value", [("demos", 0), ("colors", 2), ("split", 3), ("length", "8")])
def test_bad_options_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        puzzles.Options(**{field: value})


def test_data_cli_prints_puzzles(capsys):
    assert main(["data", "puzzles", "--n", "2", "--demos", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and {"rule", "params", "demos", "test"} <= set(lines[0]["raw"])
