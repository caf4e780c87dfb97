"""Pre-norm residual block: x + Mixer(Norm(x)), then x + MLP(Norm(x))."""
from __future__ import annotations

import torch
from torch import nn

from ..config import SleepConfig
from .attention import Attention, AttentionMemory
from .gated_deltanet import FastWeightMemory, GatedDeltaNet
from .mlp import SwiGLU
from .norm import RMSNorm

BlockMemory = AttentionMemory | FastWeightMemory


class Block(nn.Module):
    def __init__(self, kind: str, config: SleepConfig):
        super().__init__()
        self.kind = kind
        self.mixer_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = Attention(config) if kind == "A" else GatedDeltaNet(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.mlp_hidden)

    def empty_memory(self) -> BlockMemory:
        return AttentionMemory() if self.kind == "A" else FastWeightMemory()

    def forward(self, x: torch.Tensor, memory: BlockMemory | None) -> tuple[torch.Tensor, BlockMemory]:
        mixed, memory = self.mixer(self.mixer_norm(x), memory)
        x = x + mixed
        return x + self.mlp(self.mlp_norm(x)), memory
