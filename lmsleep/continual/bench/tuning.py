"""The one rule by which the paper-2 benchmarks pick a learning rate on validation passages."""
from __future__ import annotations


def choose(tried: dict[float, list[tuple[float, float]]], budget: float) -> float:
    """The rate of `tried` ({rate: [(score, forgetting) per validation passage]}) with the best mean score
    whose mean forgetting stays within `budget`; ties go to less forgetting, then to the smaller rate. When no
    rate stays within the budget: the rate that forgot least."""
    if not tried or any(not outcomes for outcomes in tried.values()):
        raise ValueError(f"choose: every rate needs at least one outcome, got {tried!r}")
    means = [(sum(o[0] for o in outcomes) / len(outcomes), sum(o[1] for o in outcomes) / len(outcomes), rate)
             for rate, outcomes in tried.items()]
    within = [m for m in means if m[1] <= budget]
    if within:
        return max(within, key=lambda m: (m[0], -m[1], -m[2]))[2]
    return min(means, key=lambda m: (m[1], m[2]))[2]
