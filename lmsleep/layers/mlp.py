"""SwiGLU feed-forward."""
from __future__ import annotations

import torch
from torch import nn

from ..ops.swiglu import gated_silu


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(gated_silu(self.gate_up(x)))
