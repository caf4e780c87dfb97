"""nn.Modules that own projections and call the ops."""
from .attention import Attention, AttentionMemory
from .block import Block, BlockMemory
from .gated_deltanet import FastWeightMemory, GatedDeltaNet
from .mlp import SwiGLU
from .norm import GatedRMSNorm, RMSNorm

__all__ = [
    "Attention", "AttentionMemory", "Block", "BlockMemory", "FastWeightMemory", "GatedDeltaNet", "SwiGLU",
    "GatedRMSNorm", "RMSNorm",
]
