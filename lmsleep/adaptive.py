"""Adaptive sleep: a window's sleep runs passes until the fast state has converged, not a fixed N.

    Adaptive(tolerance=ε, max_passes=N_max)

After each sleep pass n ≥ 2 (the wake pass is pass 1), a batch row whose fast state has converged,

    ‖S_n − S_{n−1}‖ < ε · ‖S_n‖,

stops there and keeps what pass n left (S_n, the pass's keys/values, its features); the other rows go on,
up to N_max passes in all. ‖·‖ is the Frobenius norm of one batch row over every looped fast-weight block's
state together, ‖S‖² = Σ_blocks Σ_{head, K, V} S² (blocks outside the looped range do not change between
passes, so they have nothing to say). A row whose state is zero and unchanged counts as converged.

Convergence is measured between two passes, so an adaptive sleep runs at least 2 passes when N_max ≥ 2:
a huge ε gives N = 2, a tiny ε gives N = N_max, and N_max = 1 never sleeps (N = 1). Rows stop one by one
(a row's result never depends on the rest of its batch); the batch stops computing when every row has.
Models whose looped range has no fast-weight block have nothing to measure and refuse `Adaptive`.
(The idea of stopping a recurrence when its state settles is Huginn's adaptive exit.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import validate


@dataclass(frozen=True)
class Adaptive:
    """Sleep until the fast state changes by less than `tolerance` (ε, relative), at most `max_passes`."""

    tolerance: float
    max_passes: int

    def __post_init__(self) -> None:
        validate.positive_number("Adaptive.tolerance (ε)", self.tolerance)
        validate.positive_int("Adaptive.max_passes (N_max)", self.max_passes)

    def converged(self, previous: list[torch.Tensor], current: list[torch.Tensor]) -> torch.Tensor:
        """[batch] bool: rows whose states `current` (S_n) changed by less than ε from `previous` (S_{n−1})."""
        return relative_change(previous, current) < self.tolerance

    def to_dict(self) -> dict:
        return {"tolerance": self.tolerance, "max_passes": self.max_passes}


Passes = int | Adaptive  # what every `passes` argument takes: a fixed N, or adaptive


def max_passes(passes: Passes) -> int:
    """The most passes a window's sleep may run (the wake pass included)."""
    return passes.max_passes if isinstance(passes, Adaptive) else passes


def relative_change(previous: list[torch.Tensor], current: list[torch.Tensor]) -> torch.Tensor:
    """‖current − previous‖ / ‖current‖ per batch row [batch], each norm the Frobenius norm over all the
    given states (tensors [batch, ...]) together; 0 where both are zero, inf where only `current` is."""
    assert current and len(previous) == len(current)
    change = sum(_squares(c - p) for p, c in zip(previous, current)).sqrt()
    norm = sum(_squares(c) for c in current).sqrt()
    ratio = change / norm.clamp_min(torch.finfo(norm.dtype).tiny)
    return torch.where(norm > 0, ratio, torch.where(change > 0, math.inf, 0.0))


def _squares(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t.pow(2).flatten(1).sum(1)
