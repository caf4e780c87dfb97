"""RMSNorm and the SiLU-gated RMSNorm used on the fast-weight output."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight · x / sqrt(mean(x²) + eps) over the last dimension. mean(x²) + eps as torch computes a mean (a
    sum, then divided in place), with the scalars applied in place: the same numbers, forward and backward,
    without the copy each out-of-place op with a Python number makes of it (~10 µs of a norm's ~20 at a
    decode step's size; tests/test_layers.py)."""
    return weight * x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True).div_(x.shape[-1]).add_(eps))


class GatedRMSNorm(RMSNorm):
    """RMSNorm(x) · SiLU(gate): the gated output norm of Gated DeltaNet."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x) * F.silu(gate)
