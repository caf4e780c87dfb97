"""tuning.choose, the one rule by which the paper-2 benchmarks pick a learning rate."""
import pytest

from lmsleep.continual.bench.tuning import choose


def test_best_score_within_the_forgetting_budget():
    tried = {1e-4: [(0.5, 0.0), (0.7, 0.0)], 1e-3: [(0.9, 0.05), (0.9, 0.05)], 1e-2: [(1.0, 0.3), (1.0, 0.3)]}
    assert choose(tried, 0.10) == 1e-3  # 1e-2 scores more but forgets 0.3
    assert choose(tried, 0.5) == 1e-2


def test_ties_go_to_less_forgetting_then_the_smaller_rate():
    assert choose({1e-4: [(0.8, 0.02)], 1e-3: [(0.8, 0.01)]}, 0.1) == 1e-3
    assert choose({1e-3: [(0.8, 0.01)], 1e-4: [(0.8, 0.01)]}, 0.1) == 1e-4


def test_nothing_within_the_budget_takes_the_least_forgetting():
    assert choose({1e-4: [(0.1, 0.4)], 1e-3: [(0.9, 0.2)], 1e-2: [(1.0, 0.2)]}, 0.1) == 1e-3


def test_a_rate_without_outcomes_is_an_error():
    with pytest.raises(ValueError, match="at least one outcome"):
        choose({1e-3: []}, 0.1)
    with pytest.raises(ValueError, match="at least one outcome"):
        choose({}, 0.1)
