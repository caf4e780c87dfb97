"""Causal softmax attention whose short-term memory is the KV cache of the current window."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import SleepConfig
from ..ops.attention import window_attention


@dataclass
class AttentionMemory:
    """Keys/values of the current window so far, plus those retained from the previous window (sliding).

    All tensors are [batch, heads, tokens, head_dim], stored before rotary embedding.
    """

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    retained_keys: torch.Tensor | None = None
    retained_values: torch.Tensor | None = None

    def next_pass(self) -> "AttentionMemory":
        """The memory a further sleep pass starts from: same retained keys, window keys recomputed."""
        return AttentionMemory(retained_keys=self.retained_keys, retained_values=self.retained_values)

    def evict(self, retain: int) -> "AttentionMemory":
        """End of window: drop the cache, keeping its last `retain` keys/values (sliding eviction)."""
        if retain == 0 or self.keys is None:
            return AttentionMemory()
        return AttentionMemory(
            retained_keys=self.keys[:, :, -retain:], retained_values=self.values[:, :, -retain:]
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        names = ("keys", "values", "retained_keys", "retained_values")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "AttentionMemory":
        return cls(**tensors)


class Attention(nn.Module):
    def __init__(self, config: SleepConfig):
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.theta = config.rope_theta
        self.offset = config.retained_tokens
        inner = config.n_heads * config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * inner, bias=False)
        self.out = nn.Linear(inner, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, memory: AttentionMemory | None) -> tuple[torch.Tensor, AttentionMemory]:
        """x: [batch, new, d_model], the next tokens of the current window."""
        memory = memory or AttentionMemory()
        batch, new, _ = x.shape
        q, k, v = self.qkv(x).view(batch, new, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        keys = k if memory.keys is None else torch.cat([memory.keys, k], dim=2)
        values = v if memory.values is None else torch.cat([memory.values, v], dim=2)
        y = window_attention(
            q, keys, values, memory.retained_keys, memory.retained_values, self.offset, self.theta
        )
        y = self.out(y.transpose(1, 2).reshape(batch, new, -1))
        return y, AttentionMemory(keys, values, memory.retained_keys, memory.retained_values)
