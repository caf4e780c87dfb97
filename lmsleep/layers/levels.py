"""Memory levels (spec: sleep-continual.md, "Memory levels"): an MLP kind for lmsleep's blocks.

    MemoryLevels = a chain of k levels,   h_0 = x,   y_ℓ = Level_ℓ(h_{ℓ−1}),   h_ℓ = h_{ℓ−1} + y_ℓ,
                   output Σ_ℓ y_ℓ (the block adds it to x, as it adds an MLP's output; k = 1 is one level).
    Level        = router + base expert(s) + a pool of low-rank experts, masked until a sleep unlocks one:
                   Level(x) = Σ_{e ∈ routed} p_e · Base_e(x)  +  Σ_{j active} g_j · B_j (A_j x)

Base experts are SwiGLU MLPs; with one base expert there is nothing to route and Level(x) = Base(x)
exactly, so a model with one level and no unlocked expert computes what a plain SwiGLU block computes.
With several, the router sends each token to its top-1 base expert, weighted by its softmax probability
(Switch-style, so the router learns). While `dreaming` (sleep stage 2), every router additionally sends
each token to one random other base expert.

Low-rank experts have static shapes: A [pool, r, d] and B [pool, d, r] are allocated up front and an
`active` mask says which run. A masked expert is never computed, so it changes no output and receives no
gradient. `unlock` draws A ~ N(0, 0.02²) and leaves B = 0 (unlocking changes no output); `reset` zeroes
the slot and masks it again, restoring the masked state exactly. g_j = 1 ("sum", the default) or a
softmax over the active experts' router logits ("softmax").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import SwiGLU

GATINGS = ("sum", "softmax")
INIT_STD = 0.02  # A's initialisation when unlocked (spec Decision)


class ExpertPoolExhausted(ValueError):
    """Every pre-allocated low-rank expert of a level is in use."""


class MemoryLevel(nn.Module):
    def __init__(self, d_model: int, hidden: int, *, base_experts: int = 1, rank: int = 4, pool: int = 4,
                 gating: str = "sum"):
        super().__init__()
        if gating not in GATINGS:
            raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}")
        self.base = nn.ModuleList(SwiGLU(d_model, hidden) for _ in range(base_experts))
        self.router = nn.Linear(d_model, base_experts, bias=False) if base_experts > 1 else None
        # Not nn.Linear, so the model's weight initialisation leaves them at zero: the masked state.
        self.A = nn.Parameter(torch.zeros(pool, rank, d_model))
        self.B = nn.Parameter(torch.zeros(pool, d_model, rank))
        self.pool_router = nn.Parameter(torch.zeros(pool, d_model))  # logits of the low-rank experts ("softmax")
        self.register_buffer("active", torch.zeros(pool, dtype=torch.bool))
        # Routers and low-rank factors are not hidden matrices for Muon (SleepLM.optimizer_groups reads this).
        for p in (self.A, self.B, self.pool_router, *([self.router.weight] if self.router is not None else [])):
            p.optimizer_group = "adamw"
        self.gating = gating
        self.dreaming: torch.Generator | None = None  # set (to a generator) while dreaming
        self.last_routed: torch.Tensor | None = None  # [..., base experts]: which ran per token, last call

    # ----- the expert pool -----

    @property
    def pool_size(self) -> int:
        return self.active.numel()

    def free_slots(self) -> list[int]:
        return [j for j in range(self.pool_size) if not self.active[j]]

    def active_slots(self) -> list[int]:
        return [j for j in range(self.pool_size) if self.active[j]]

    @torch.no_grad()
    def unlock(self, generator: torch.Generator | None = None) -> int:
        """Unlock the first free low-rank expert: A ~ N(0, 0.02²), B = 0; returns its slot."""
        free = self.free_slots()
        if not free:
            raise ExpertPoolExhausted(
                f"all {self.pool_size} low-rank experts of this level are in use; enlarge SleepConfig.expert_pool "
                "(a model built with a larger pool) or reset (prune) experts before unlocking more"
            )
        slot = free[0]
        noise = torch.randn(self.A.shape[1:], generator=generator, dtype=torch.float64).to(self.A)
        self.A[slot] = INIT_STD * noise
        self.B[slot] = 0
        self.pool_router[slot] = 0
        self.active[slot] = True
        return slot

    @torch.no_grad()
    def reset(self, slot: int) -> None:
        """Synaptic pruning: zero the slot and mask it again (exactly the state before it was unlocked)."""
        if not 0 <= slot < self.pool_size:
            raise ValueError(f"expert slot must be in [0, {self.pool_size - 1}], got {slot}")
        self.A[slot] = 0
        self.B[slot] = 0
        self.pool_router[slot] = 0
        self.active[slot] = False

    def expert_parameters(self, slot: int) -> list[torch.Tensor]:
        """Views of one low-rank expert's parameters (A_j, B_j and its router logit row)."""
        return [self.A[slot], self.B[slot], self.pool_router[slot]]

    # ----- forward -----

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        if self.router is None:
            self.last_routed = torch.ones(*x.shape[:-1], 1, dtype=torch.bool)
            return self.base[0](x)
        probs = self.router(x).softmax(-1)  # [..., experts]
        experts = probs.shape[-1]
        chosen = probs.argmax(-1, keepdim=True)
        routed = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, chosen, True)
        if self.dreaming is not None:  # per token, one random expert other than its routed one
            offset = torch.randint(1, experts, chosen.shape, generator=self.dreaming).to(chosen.device)
            routed = routed.scatter(-1, (chosen + offset) % experts, True)
        self.last_routed = routed
        weights = probs * routed
        y = x.new_zeros(x.shape)
        for e in range(experts):
            if bool(routed[..., e].any()):  # only experts some token uses are computed
                y = y + weights[..., e : e + 1] * self.base[e](x)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._base(x)
        slots = self.active_slots()
        if not slots:
            return y
        index = torch.tensor(slots, device=x.device)
        A, B = self.A.index_select(0, index), self.B.index_select(0, index)  # [a, r, d], [a, d, r]
        low_rank = torch.einsum("...d,ard->...ar", x, A)
        deltas = torch.einsum("...ar,adr->...ad", low_rank, B)  # [..., a, d]
        if self.gating == "softmax":
            gates = (x @ self.pool_router.index_select(0, index).t()).softmax(-1)  # [..., a]
            return y + (gates[..., None] * deltas).sum(-2)
        return y + deltas.sum(-2)


class MemoryLevels(nn.Module):
    """A chain of k memory levels in a block's MLP slot (see the module docstring)."""

    def __init__(self, d_model: int, hidden: int, levels: int, **level_options):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        self.levels = nn.ModuleList(MemoryLevel(d_model, hidden, **level_options) for _ in range(levels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, out = x, None
        for level in self.levels:
            y = level(h)
            out = y if out is None else out + y
            h = h + y
        return out
