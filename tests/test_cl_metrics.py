"""Continual-learning metrics against hand-computed values."""
import pytest

from lmsleep.continual.metrics import (accuracy, backward_transfer, forgetting, forgetting_per_task,
                                       forward_transfer)

R = [[0.9, 0.2, 0.1],
     [0.6, 0.8, 0.3],
     [0.5, 0.7, 0.9]]
b = [0.1, 0.1, 0.2]


def test_metrics_by_hand():
    assert accuracy(R) == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert backward_transfer(R) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert forward_transfer(R, b) == pytest.approx(((0.2 - 0.1) + (0.3 - 0.2)) / 2)
    assert forgetting_per_task(R) == pytest.approx([0.9 - 0.5, 0.8 - 0.7])
    assert forgetting(R) == pytest.approx(0.25)


def test_no_forgetting_when_nothing_is_lost():
    perfect = [[1.0, 0.0], [1.0, 1.0]]
    assert backward_transfer(perfect) == 0 and forgetting(perfect) == 0 and accuracy(perfect) == 1


def test_forgetting_takes_the_best_earlier_row_not_the_diagonal():
    R2 = [[0.4, 0.0, 0.0], [0.8, 0.5, 0.0], [0.6, 0.5, 0.7]]  # task 1 improved after task 2, then fell
    assert forgetting_per_task(R2) == pytest.approx([0.2, 0.0])
    assert backward_transfer(R2) == pytest.approx(((0.6 - 0.4) + 0.0) / 2)


@pytest.mark.parametrize("bad,message", [([], "non-empty"), ([[0.1, 0.2]], "square"), ([[float("nan")]], r"R\[0\]\[0\]"),
                                         ([[0.1, "x"], [0.2, 0.3]], r"R\[0\]\[1\]")])
def test_bad_matrices_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        accuracy(bad)


def test_transfer_needs_two_tasks_and_one_b_per_task():
    with pytest.raises(ValueError, match="2 tasks"):
        backward_transfer([[0.5]])
    with pytest.raises(ValueError, match="one accuracy per task"):
        forward_transfer(R, [0.1])
