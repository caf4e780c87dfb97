"""Memory levels (spec: sleep-continual.md, "Memory levels"): an MLP kind for lmsleep's blocks.

    MemoryLevels = a chain of k levels,   h_0 = x,   y_ℓ = Level_ℓ(h_{ℓ−1}),   h_ℓ = h_{ℓ−1} + y_ℓ,
                   output Σ_ℓ y_ℓ (the block adds it to x, as it adds an MLP's output; k = 1 is one level).
    Level        = router + base expert(s) + a pool of low-rank experts, masked until a sleep unlocks one:
                   Level(x) = Σ_{e ∈ routed} p_e · Base_e(x)  +  Σ_{j active} g_j · B_j (A_j x)

Base experts are SwiGLU MLPs, or one existing module passed as `base=` (a pretrained model's MLP, held
as it is: no weights copied; continual.attach); with one base expert there is nothing to route and
Level(x) = Base(x) exactly, so a model with one level and no unlocked expert computes what a plain SwiGLU
block (or the pretrained MLP) computes. With no base expert (base_experts=0) a level is its pool alone:
Level(x) = Σ_{j active} g_j · B_j (A_j x), zero until an expert is unlocked and trained. With several base
experts, the router sends each token to its top-1 base expert, weighted by its softmax probability
(Switch-style, so the router learns). While `dreaming` (sleep stage 2), every router additionally sends
each token to one random other base expert.

Low-rank experts have static shapes: A [pool, r, d] and B [pool, d, r] are allocated up front and an
`active` mask says which run. A masked expert is never computed, so it changes no output and receives no
gradient. `unlock` draws A ~ N(0, 0.02²) and leaves B = 0 (unlocking changes no output); `reset` zeroes
the slot and masks it again, restoring the masked state exactly.

Gates g_j (spec Decision, "revised after measuring": experts need an off path):
    "sigmoid" (default)  g_j(x) = σ(GATE_SCALE · r_j · x − CLOSED_OFFSET): each expert has its own gate, closed
                         (σ(−4) ≈ 0.02) until seeding trains r_j to open it on the content it consolidates;
                         it stays closed on inputs it was not trained to open on
    "sum"                g_j = 1: every active expert adds its output to every token (ablation)
    "softmax"            a softmax over the active experts' logits r_j · x: sums to 1, never all off (ablation;
                         unlocking changes no output only in a level with no trained expert: a new expert
                         beside trained ones takes a share of the mass)
An expert "opens" on a token when g_j > 0.5 (`last_gates` keeps the gates of the last call).

While `dreaming` (a generator), every router additionally runs one random expert per token: one of the
other base experts or one of the active low-rank experts (forced open, g_j = 1), so that this works with
one base expert per level (the default): the pool takes part. `last_routed` / `last_gates` say what ran.
"""
from __future__ import annotations

import torch
from torch import nn

from .mlp import SwiGLU

GATINGS = ("sigmoid", "sum", "softmax")
INIT_STD = 0.02  # A's initialisation when unlocked (spec Decision)
CLOSED_OFFSET = 4.0  # a sigmoid gate starts at σ(−4) ≈ 0.018: closed
OPEN = 0.5  # a gate above this is open
_TRUE = torch.ones((), dtype=torch.bool)  # last_routed of a level with one base expert: this, expanded
GATE_SCALE = 4.0  # the sigmoid gate's logit is GATE_SCALE · r_j · x − CLOSED_OFFSET (4: measured, results/continual.md)


class ExpertPoolExhausted(ValueError):
    """Every pre-allocated low-rank expert of a level is in use."""


class MemoryLevel(nn.Module):
    """hidden: the SwiGLU base experts' width (unused with `base` or base_experts=0); base: an existing module
    [..., d] → [..., d] to hold as the single base expert instead; device / dtype: of the pool tensors."""

    def __init__(self, d_model: int, hidden: int | None, *, base_experts: int = 1, rank: int = 4, pool: int = 4,
                 gating: str = "sigmoid", base: nn.Module | None = None, device=None, dtype=None):
        super().__init__()
        if gating not in GATINGS:
            raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}")
        if base is not None and base_experts != 1:
            raise ValueError(f"a level given a base module has exactly one base expert, got base_experts={base_experts}")
        if base is not None:
            self.base = nn.ModuleList([base])
        else:
            self.base = nn.ModuleList(SwiGLU(d_model, hidden) for _ in range(base_experts))
        self.router = nn.Linear(d_model, base_experts, bias=False, device=device, dtype=dtype) if base_experts > 1 else None
        # Not nn.Linear, so the model's weight initialisation leaves them at zero: the masked state.
        like = dict(device=device, dtype=dtype)
        self.A = nn.Parameter(torch.zeros(pool, rank, d_model, **like))
        self.B = nn.Parameter(torch.zeros(pool, d_model, rank, **like))
        self.pool_router = nn.Parameter(torch.zeros(pool, d_model, **like))  # gate weights r_j of the low-rank experts
        self.register_buffer("active", torch.zeros(pool, dtype=torch.bool, device=device))
        self._slots_cache: tuple | None = None  # (mask, its version, its active slots): see _slots
        # Routers and low-rank factors are not hidden matrices for Muon (SleepLM.optimizer_groups reads this).
        for p in (self.A, self.B, self.pool_router, *([self.router.weight] if self.router is not None else [])):
            p.optimizer_group = "adamw"
        self.gating = gating
        self.dreaming: torch.Generator | None = None  # set (to a generator) while dreaming
        self.last_routed = None  # [..., base experts]: which ran per token, last call (see the property)
        self.last_gates: tuple[list[int], torch.Tensor] | None = None  # (active slots, g [..., slots]), last call

    @property
    def last_routed(self) -> torch.Tensor | None:
        """[..., base experts] (bool): which base experts ran on each token in the last call. A level with one
        base expert (or none) ran it on every token: kept as the shape, expanded from one True when read (a
        view, read, never written), so that a forward that nobody asks makes no tensor."""
        routed = self.__dict__["_routed"]
        if isinstance(routed, tuple):
            shape, experts = routed
            return _TRUE.expand(*shape, experts)
        return routed

    @last_routed.setter
    def last_routed(self, value: torch.Tensor | None) -> None:
        self.__dict__["_routed"] = value

    # ----- the expert pool -----

    @property
    def pool_size(self) -> int:
        return self.active.numel()

    def free_slots(self) -> list[int]:
        return (~self.active).nonzero().flatten().tolist()

    def active_slots(self) -> list[int]:
        return list(self._slots())

    def _slots(self) -> tuple[int, ...]:
        """The active slots, read off the mask once per change of it: every forward asks (a decode step's
        forward is many small ops, and reading the mask is one op and one copy to Python per level). The mask
        changes in place (unlock, reset, load_state_dict: its version counter moves) or is replaced (.to())."""
        if torch.compiler.is_compiling():
            return tuple(self.active.nonzero().flatten().tolist())
        cached = self._slots_cache
        if cached is None or cached[0] is not self.active or cached[1] != self.active._version:
            cached = (self.active, self.active._version, tuple(self.active.nonzero().flatten().tolist()))
            self._slots_cache = cached
        return cached[2]

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
        """Views of one low-rank expert's parameters (A_j, B_j and its gate row r_j)."""
        return [self.A[slot], self.B[slot], self.pool_router[slot]]

    @property
    def pool_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The tensors every low-rank expert has one row of (A, B, the gate weights)."""
        return self.A, self.B, self.pool_router

    @torch.no_grad()
    def keep_only_gradient_of(self, slot: int) -> None:
        """Zero the gradient of every pool row but `slot`'s (the slots share their tensors), so that an
        optimizer over the pool tensors moves one expert only."""
        for p in self.pool_tensors:
            if p.grad is not None:
                keep = p.grad[slot].clone()
                p.grad.zero_()
                p.grad[slot] = keep

    @torch.no_grad()
    def keep_masked(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Masked slots stay exactly zero, and `optimizer` keeps no state for them (Adam's moments would
        otherwise move a pruned slot)."""
        masked = ~self.active
        for p in self.pool_tensors:
            p[masked] = 0
            if optimizer is not None:
                for value in optimizer.state.get(p, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == p.shape:
                        value[masked] = 0

    @torch.no_grad()
    def opening(self, x: torch.Tensor) -> dict[int, float]:
        """{slot: share of the tokens of x [..., d] on which active expert `slot` opens (g_j > 0.5)}."""
        slots = self.active_slots()
        if not slots:
            return {}
        gates = self._gates(x, torch.tensor(slots, device=x.device))
        return {slot: float((gates[..., i] > OPEN).float().mean()) for i, slot in enumerate(slots)}

    # ----- forward -----

    def _mix(self, x: torch.Tensor, probs: torch.Tensor, routed: torch.Tensor) -> torch.Tensor:
        weights = probs * routed
        y = x.new_zeros(x.shape)
        for e in range(probs.shape[-1]):
            if bool(routed[..., e].any()):  # only experts some token uses are computed
                y = y + weights[..., e : e + 1] * self.base[e](x)
        return y

    def _gates(self, x: torch.Tensor, index: torch.Tensor | slice) -> torch.Tensor:
        """g [..., a] of the active slots `index` (a tensor of slots, or a slice of contiguous ones; see the
        module docstring)."""
        if self.gating == "sum":
            count = index.stop - index.start if isinstance(index, slice) else index.numel()
            return x.new_ones(*x.shape[:-1], count)
        rows = self.pool_router[index] if isinstance(index, slice) else self.pool_router.index_select(0, index)
        logits = x @ rows.t()
        return logits.softmax(-1) if self.gating == "softmax" else torch.sigmoid(logits.mul(GATE_SCALE).sub_(CLOSED_OFFSET))

    def _random_extra(self, x: torch.Tensor, slots: list[int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """While dreaming: per token one random expert among the other base experts and the active low-rank
        ones. Returns (extra base expert [..., experts] or None, forced low-rank slot [..., a] or None)."""
        others = max(len(self.base) - 1, 0)
        candidates = others + len(slots)
        if candidates == 0:
            return None, None
        pick = torch.randint(0, candidates, x.shape[:-1], generator=self.dreaming).to(x.device)
        extra_base = None
        if others:
            chosen = self.last_routed.float().argmax(-1)  # the routed base expert
            other = (chosen + 1 + pick.clamp(max=others - 1)) % len(self.base)
            extra_base = torch.zeros_like(self.last_routed).scatter(-1, other[..., None], True) & (pick < others)[..., None]
        forced = None
        if slots:
            forced = torch.arange(len(slots), device=x.device) == (pick - others)[..., None]
        return extra_base, forced

    def _remember(self, **values) -> None:
        """Set plain attributes (last_routed, last_gates: never parameters, buffers or modules) without
        nn.Module.__setattr__'s registration checks: a level sets two per call, which were ~5% of a decode step."""
        self.__dict__.update(values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slots = self._slots()
        if not self.base:  # the pool alone: y = 0, added below only where nothing else is
            self._remember(_routed=(x.shape[:-1], 0))
            y = None
            probs = None
        elif self.router is None:
            self._remember(_routed=(x.shape[:-1], 1))
            y = self.base[0](x)
            probs = None
        else:
            probs = self.router(x).softmax(-1)  # [..., experts]
            routed = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, probs.argmax(-1, keepdim=True), True)
            self._remember(_routed=routed)
        extra_base, forced = self._random_extra(x, slots) if self.dreaming is not None else (None, None)
        if probs is not None:
            if extra_base is not None:
                self._remember(_routed=self.last_routed | extra_base)
            y = self._mix(x, probs, self.last_routed)
        return self.with_pool(x, slots, y, forced)

    def with_pool(self, x: torch.Tensor, slots: tuple[int, ...], y: torch.Tensor | None,
                  forced: torch.Tensor | None = None) -> torch.Tensor:
        """The level's output: y (what its base experts gave, None for none) plus the gated terms of the
        active low-rank experts `slots` (forced [..., a]: gates set open while dreaming, or None)."""
        if not slots:
            self._remember(last_gates=None)
            return x.new_zeros(x.shape) if y is None else y
        if len(slots) == 1 and forced is None and self.gating == "sigmoid" and not torch.is_grad_enabled():
            # one expert, no grad (a decode step: many small ops): its rows as views and two matmuls, the
            # numbers of the general path below (a sum over one expert is its term; tests/test_levels.py)
            slot = slots[0]
            deltas = torch.matmul(torch.matmul(x, self.A[slot].t()), self.B[slot].t())  # [..., d]
            gates = self._gates(x, slice(slot, slot + 1))  # [..., 1]
            self._remember(last_gates=(list(slots), gates))
            term = gates * deltas
            return term if y is None else y + term
        if slots[-1] - slots[0] + 1 == len(slots):  # contiguous slots (the usual case): views, no copies
            index = slice(slots[0], slots[-1] + 1)
            A, B = self.A[index], self.B[index]  # [a, r, d], [a, d, r]
        else:
            index = torch.tensor(slots, device=x.device)
            A, B = self.A.index_select(0, index), self.B.index_select(0, index)
        if torch.is_grad_enabled():
            low_rank = torch.einsum("...d,ard->...ar", x, A)
            deltas = torch.einsum("...ar,adr->...ad", low_rank, B)  # [..., a, d]
        else:  # the same numbers as the einsums (tests/test_levels.py) in fewer ops: a decode step is many small ones
            low_rank = torch.matmul(x, A.flatten(0, 1).t()).unflatten(-1, A.shape[:2])
            if A.shape[0] == 1:
                deltas = torch.matmul(low_rank[..., 0, :], B[0].t()).unsqueeze(-2)
            else:
                deltas = torch.einsum("...ar,adr->...ad", low_rank, B)
        gates = self._gates(x, index)
        if forced is not None:
            gates = torch.where(forced, torch.ones_like(gates), gates)
        self._remember(last_gates=(list(slots), gates.detach() if gates.requires_grad else gates))
        if len(slots) == 1:  # a sum over one expert is that expert's term, bit for bit (one op fewer)
            term = gates[..., :1] * deltas[..., 0, :]
        else:
            term = (gates[..., None] * deltas).sum(-2)
        return term if y is None else y + term  # 0 + term is term (but for the sign of a zero): two ops fewer


class MemoryLevels(nn.Module):
    """A chain of k memory levels in a block's MLP slot (see the module docstring), fast → slow.

    base: an existing MLP (a pretrained model's) to hold, not copy, as the base expert of the slowest level;
    the faster levels then have no base expert (their pool alone), so the chain computes base(x) exactly until
    an expert is unlocked and trained. Why the slowest: a pretrained transformer is one frozen level (spec),
    the longest-term memory; the levels added in front of it are new, faster memories."""

    def __init__(self, d_model: int, hidden: int | None, levels: int, *, base: nn.Module | None = None,
                 **level_options):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        if base is None:
            chain = [MemoryLevel(d_model, hidden, **level_options) for _ in range(levels)]
        else:
            fast = {**level_options, "base_experts": 0}
            chain = [MemoryLevel(d_model, hidden, **fast) for _ in range(levels - 1)]
            chain.append(MemoryLevel(d_model, hidden, base=base, **level_options))
        self.levels = nn.ModuleList(chain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, out = x, None
        last = len(self.levels) - 1
        for i, level in enumerate(self.levels):
            y = level(h)
            out = y if out is None else out + y
            if i < last:  # the last level's h is not read
                h = h + y
        return out
