"""Which dreams to keep (spec: Sleep stage 2 — Dreaming, step 2).

**Decision** (spec): a dream's importance is the cosine between its SFT gradient and the gradient of the
loss on the task context C, both over the parameters of one fresh LoRA adapter (A and B; with B = 0 the
gradient w.r.t. A is zero, so in practice the score is carried by B's gradient). This is the LESS / GREATS
score without GREATS' greedy correction. Keep the top k dreams plus b others drawn at random.

    scores = importance(model, dreams, context)          # [m], each in [-1, 1]
    kept = select(scores, k=5, b=2, generator=g)          # indices: the top 5, then 2 random others
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import validate
from .lora import SIGMA, LoRAAdapters, attached, check_datasets, group_losses


def importance(model: nn.Module, dreams: Sequence, context, *, rank: int = 8, alpha: float = 16.0,
               targets: Sequence[str] | None = None, sigma: float = SIGMA, seed: int = 0) -> torch.Tensor:
    """[m]: cos(∇ loss(dream i), ∇ loss(C)) over the parameters of one fresh adapter (seeded by `seed`).

    dreams: m datasets (tokens, targets, loss_mask) [n_i, T_i], a dream's SFT data; context: one such
    dataset, the loss on C. All m + 1 gradients come from one batched forward and backward (copy g of
    the adapter sees only its own data, lora.group_losses). The model is never modified."""
    data = check_datasets(list(dreams) + [context])
    count = len(data) - 1
    adapters = LoRAAdapters.init(model, 1, rank=rank, alpha=alpha, targets=targets, sigma=sigma, seed=seed)
    adapters = adapters.repeat(count + 1)  # every dream and C at the same starting point
    for tensor in adapters.parameters():
        tensor.requires_grad_(True)
    with attached(model, adapters) as router:
        per_copy = group_losses(model, router, data, list(range(count + 1)))
        grads = torch.autograd.grad(per_copy.sum(), adapters.parameters())
    flat = torch.cat([grad.reshape(count + 1, -1) for grad in grads], dim=1)  # [m + 1, adapter size]
    return F.cosine_similarity(flat[:count], flat[count:], dim=1)


def select(scores: torch.Tensor, k: int, b: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of the dreams to keep: the k highest scores (highest first; ties to the lower index), then
    b drawn uniformly without replacement from the rest (in the order drawn). Exactly k + b distinct
    indices, or every index when there are no more than k + b dreams."""
    validate.non_negative_int("k", k)
    validate.non_negative_int("b", b)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a 1-D tensor, one score per dream, got {got}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores must be finite, got NaN or infinity")
    order = torch.sort(scores.detach().cpu(), descending=True, stable=True).indices
    top, rest = order[:k], order[k:].sort().values
    drawn = rest[torch.randperm(len(rest), generator=generator)[:b]]
    return torch.cat([top, drawn])
