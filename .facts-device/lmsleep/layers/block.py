"""Pre-norm residual block: x + Mixer(Norm(x)), then x + MLP(Norm(x)), built from the mixer and MLP given."""
from __future__ import annotations

import torch
from torch import nn

from .attention import AttentionMemory
from .gated_deltanet import FastWeightMemory
from .norm import RMSNorm

BlockMemory = AttentionMemory | FastWeightMemory


class Block(nn.Module):
    """mixer: a module `(x [batch, new, d_model], memory) -> (y, memory)` whose class names its memory type
    (`Memory`); mlp: a module `x -> y` of the same width (SwiGLU, or another MLP kind)."""

    def __init__(self, mixer: nn.Module, mlp: nn.Module, d_model: int, norm_eps: float = 1e-6):
        super().__init__()
        # Registration order (norm, mixer, norm, mlp) is the order in which weights are initialised.
        self.mixer_norm = RMSNorm(d_model, norm_eps)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(d_model, norm_eps)
        self.mlp = mlp

    @property
    def memory_type(self) -> type:
        return type(self.mixer).Memory

    def empty_memory(self) -> BlockMemory:
        return self.memory_type()

    def forward(self, x: torch.Tensor, memory: BlockMemory | None) -> tuple[torch.Tensor, BlockMemory]:
        mixed, memory = self.mixer(self.mixer_norm(x), memory)
        x = x + mixed
        return x + self.mlp(self.mlp_norm(x)), memory
