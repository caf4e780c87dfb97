"""Continual-learning metrics (spec: sleep-continual.md, last section; GEM, Lopez-Paz & Ranzato 2017;
Chaudhry et al. 2018), as pure functions of an accuracy matrix.

R[i][j] is the accuracy on task j after learning tasks 1..i (row i, 0-based here: after task i + 1), for T
tasks; b[j] is the accuracy of the model before any of them.

    ACC = mean_j R[T, j]
    BWT = Σ_{j<T} (R[T, j] − R[j, j]) / (T − 1)          backward transfer (negative: forgetting)
    FWT = Σ_{j≥2} (R[j−1, j] − b_j) / (T − 1)            forward transfer
    f_j = max_{l<T} R[l, j] − R[T, j]  (j < T)           forgetting of task j; `forgetting` is their mean
"""
from __future__ import annotations

from collections.abc import Sequence

from .. import validate


def _matrix(R: Sequence[Sequence[float]]) -> list[list[float]]:
    if not isinstance(R, (list, tuple)) or not R:
        raise ValueError("R must be a non-empty T × T accuracy matrix (a list of rows)")
    size = len(R)
    rows = []
    for i, row in enumerate(R):
        if not isinstance(row, (list, tuple)) or len(row) != size:
            raise ValueError(f"R must be square (T = {size}): row {i} has {len(row) if isinstance(row, (list, tuple)) else row!r}")
        rows.append([validate.number(f"R[{i}][{j}]", value) for j, value in enumerate(row)])
    return rows


def accuracy(R) -> float:
    """ACC: mean accuracy over all tasks after the last one."""
    R = _matrix(R)
    return sum(R[-1]) / len(R)


def backward_transfer(R) -> float:
    """BWT: how learning later tasks changed the earlier ones (T ≥ 2)."""
    R = _matrix(R)
    T = len(R)
    if T < 2:
        raise ValueError("backward transfer needs at least 2 tasks")
    return sum(R[-1][j] - R[j][j] for j in range(T - 1)) / (T - 1)


def forward_transfer(R, b: Sequence[float]) -> float:
    """FWT: how learning earlier tasks helped a task before it was learnt, against the untrained b (T ≥ 2)."""
    R = _matrix(R)
    T = len(R)
    if T < 2:
        raise ValueError("forward transfer needs at least 2 tasks")
    if not isinstance(b, (list, tuple)) or len(b) != T:
        raise ValueError(f"b must hold one accuracy per task ({T}), got {b!r}")
    b = [validate.number(f"b[{j}]", value) for j, value in enumerate(b)]
    return sum(R[j - 1][j] - b[j] for j in range(1, T)) / (T - 1)


def forgetting_per_task(R) -> list[float]:
    """f_j for every task but the last: its best accuracy before the end minus its accuracy at the end."""
    R = _matrix(R)
    T = len(R)
    return [max(R[l][j] for l in range(T - 1)) - R[-1][j] for j in range(T - 1)]


def forgetting(R) -> float:
    """Mean forgetting over the tasks before the last (T ≥ 2)."""
    per_task = forgetting_per_task(R)
    if not per_task:
        raise ValueError("forgetting needs at least 2 tasks")
    return sum(per_task) / len(per_task)
