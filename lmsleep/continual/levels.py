"""When memory levels learn (spec: sleep-continual.md, "Memory levels", Eq. 2 and its Decisions).

    every wake step i:   .grad of every learning level += ∇ next-token loss        (accumulate)
    level ℓ is due at i when C_ℓ > 0 and i mod C_ℓ = 0:
        θ_ℓ ← θ_ℓ − η · Σ_{t = i−C_ℓ+1}^{i} ∇_ℓ L_t                                 (apply, then clear)

The sum has exactly C_ℓ terms (the paper's lower limit i − C_ℓ counts C_ℓ + 1: an off-by-one not
reproduced). Each level is one optimizer (parameter group) over its parameters in every block: plain SGD is
exactly Eq. 2 (the default); Adam on the summed gradient is an option. Periods are non-decreasing, each
divisible by the previous one; period 0 freezes a level. Nothing outside the levels learns while awake
(embeddings, mixers, norms and head keep their values: the context is attention's memory).
"""
from __future__ import annotations

import torch

from .. import validate
from ..layers.levels import MemoryLevel
from ..model import SleepLM

OPTIMIZERS = ("sgd", "adam")


def check_periods(periods, levels: int) -> list[int]:
    """The update periods C_1..C_k of a model with `levels` levels (k = levels), or a clear error."""
    if not isinstance(periods, (list, tuple)) or len(periods) != levels:
        raise ValueError(f"periods must list one period per memory level ({levels}), got {periods!r}")
    previous = None
    for i, period in enumerate(periods):
        validate.non_negative_int(f"periods[{i}]", period)
        if period and previous and (period < previous or period % previous):
            raise ValueError(f"periods must grow, each divisible by the previous learning level's: periods[{i}] = "
                             f"{period} after {previous} (inconsistent periods {list(periods)})")
        previous = period or previous
    return list(periods)


def set_expert_gating(model: SleepLM, gating: str) -> SleepLM:
    """Switch every level's expert gating (layers.levels.GATINGS) in place, config included: the weights do
    not depend on it until a sleep trains an expert, so a base trained once serves every gating."""
    from dataclasses import replace

    from ..layers.levels import GATINGS

    validate.one_of("expert_gating", gating, GATINGS)
    model.config = replace(model.config, expert_gating=gating)
    for module in model.modules():
        if isinstance(module, MemoryLevel):
            module.gating = gating
    return model


def level_modules(model: SleepLM, level: int) -> list[MemoryLevel]:
    """Level ℓ (0-based) of every block."""
    return [block.mlp.levels[level] for block in model.blocks]


class LevelUpdates:
    """Accumulates the wake gradient in every learning level and applies a level's sum at its boundary."""

    def __init__(self, model: SleepLM, periods, *, lr: float = 1e-2, optimizer: str = "sgd"):
        if model.config.memory_levels < 1:
            raise ValueError("the model has no memory levels (SleepConfig.memory_levels = 0)")
        self.model = model
        self.periods = check_periods(periods, model.config.memory_levels)
        validate.positive_number("lr", lr)
        validate.one_of("optimizer", optimizer, OPTIMIZERS)
        for p in model.parameters():
            p.requires_grad_(False)
        self.optimizers: list[torch.optim.Optimizer | None] = []
        for level, period in enumerate(self.periods):
            params = [p for m in level_modules(model, level) for p in m.parameters()]
            for p in params:
                p.requires_grad_(period > 0)
            make = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
            self.optimizers.append(make(params, lr=lr) if period > 0 else None)
        self.step = 0  # wake steps taken

    def accumulate(self, loss: torch.Tensor) -> list[int]:
        """One wake step: add ∇loss to every learning level's running sum. Returns the levels now due,
        fast → slow (the caller consolidates each, then calls `apply`)."""
        loss.backward()
        self.step += 1
        return self.due()

    def due(self) -> list[int]:
        return [level for level, period in enumerate(self.periods) if period and self.step % period == 0]

    @torch.no_grad()
    def apply(self, level: int) -> None:
        """Apply level ℓ's summed gradient once and clear the sum."""
        optimizer = self.optimizers[level]
        if optimizer is None:
            raise ValueError(f"level {level} is frozen (period 0): it never applies an update")
        for p in optimizer.param_groups[0]["params"]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        for module in level_modules(self.model, level):
            module.keep_masked(optimizer)

    def forget_pool_state(self, level: int) -> None:
        """After slots of `level` were pruned or freed: no optimizer moment may move them again."""
        optimizer = self.optimizers[level] if level < len(self.optimizers) else None
        for module in level_modules(self.model, level):
            module.keep_masked(optimizer)

    def clear(self, level: int) -> None:
        """Drop level ℓ's running sum without applying it."""
        optimizer = self.optimizers[level]
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=False)
