"""Causal softmax attention whose short-term memory is the KV cache of the current window."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..ops.attention import rotary, window_attention


@dataclass
class AttentionMemory:
    """Keys/values of the current window so far, plus those retained from the previous window (sliding).

    All tensors are [batch, heads, tokens, head_dim], stored before rotary embedding.
    """

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    retained_keys: torch.Tensor | None = None
    retained_values: torch.Tensor | None = None
    # Streaming only: keys/values are views of these preallocated buffers, so appending a token copies
    # one row instead of the whole cache. Rows past keys.shape[2] are free; nothing before them is written.
    key_buffer: torch.Tensor | None = None
    value_buffer: torch.Tensor | None = None
    # Streaming only: this window's keys after rotary embedding (a view of rotated_buffer, rows valid as far
    # as it reaches), so that a decode step rotates its new key instead of every key of the window.
    rotated_keys: torch.Tensor | None = None
    rotated_buffer: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor, limit: int | None) -> "AttentionMemory":
        """The memory with k, v [batch, heads, new, dim] appended after this window's keys."""
        if self.keys is None:
            return AttentionMemory(k, v, self.retained_keys, self.retained_values)
        seen, new = self.keys.shape[2], k.shape[2]
        if torch.is_grad_enabled():  # training: keep the graph simple
            keys, values = torch.cat([self.keys, k], dim=2), torch.cat([self.values, v], dim=2)
            return AttentionMemory(keys, values, self.retained_keys, self.retained_values)
        key_buffer, value_buffer = self.key_buffer, self.value_buffer
        if key_buffer is None or key_buffer.shape[2] < seen + new or not _is_prefix_view(self.keys, key_buffer):
            capacity = max(64, 2 * (seen + new))
            capacity = min(capacity, limit) if limit else capacity
            capacity = max(capacity, seen + new)
            key_buffer = self.keys.new_empty(*self.keys.shape[:2], capacity, self.keys.shape[3])
            value_buffer = self.values.new_empty(*self.values.shape[:2], capacity, self.values.shape[3])
            key_buffer.narrow(2, 0, seen).copy_(self.keys)
            value_buffer.narrow(2, 0, seen).copy_(self.values)
        key_buffer.narrow(2, seen, new).copy_(k)
        value_buffer.narrow(2, seen, new).copy_(v)
        return AttentionMemory(
            key_buffer.narrow(2, 0, seen + new), value_buffer.narrow(2, 0, seen + new),
            self.retained_keys, self.retained_values, key_buffer, value_buffer, self.rotated_keys, self.rotated_buffer,
        )

    def with_room(self, tokens: int) -> "AttentionMemory":
        """This memory (the same values) with buffers that hold `tokens` more keys of this window without
        growing: a decode of a known length (replay.continue_from) allocates once, and no more than it needs."""
        if self.keys is None or torch.is_grad_enabled():
            return self
        seen = self.keys.shape[2]
        key_buffer = self.keys.new_empty(*self.keys.shape[:2], seen + tokens, self.keys.shape[3])
        value_buffer = self.values.new_empty(*self.values.shape[:2], seen + tokens, self.values.shape[3])
        key_buffer.narrow(2, 0, seen).copy_(self.keys)
        value_buffer.narrow(2, 0, seen).copy_(self.values)
        return AttentionMemory(key_buffer.narrow(2, 0, seen), value_buffer.narrow(2, 0, seen), self.retained_keys,
                               self.retained_values, key_buffer, value_buffer)

    def with_rotated_keys(self, offset: int, theta: float, new_rotated: torch.Tensor | None = None) -> "AttentionMemory":
        """This memory with `rotated_keys` covering every key of the window: the rows not yet rotated are
        rotated at their window positions (offset + i), exactly as window_attention rotates them.
        new_rotated: the last new_rotated.shape[2] keys already rotated (Attention rotates a decode step's
        new key together with its query), copied instead of rotated again."""
        seen = self.keys.shape[2]
        done = 0 if self.rotated_keys is None else self.rotated_keys.shape[2]
        buffer = self.rotated_buffer
        if (buffer is None or buffer.shape[2] < seen or buffer.shape[:2] != self.keys.shape[:2]
                or (self.rotated_keys is not None and not _is_prefix_view(self.rotated_keys, buffer))):
            capacity = max(seen, self.key_buffer.shape[2] if self.key_buffer is not None else 2 * seen)
            buffer = self.keys.new_empty(*self.keys.shape[:2], capacity, self.keys.shape[3])
            if done:
                buffer.narrow(2, 0, done).copy_(self.rotated_keys)
        given = 0 if new_rotated is None else new_rotated.shape[2]
        if done < seen - given:
            buffer.narrow(2, done, seen - given - done).copy_(rotary(self.keys[:, :, done : seen - given], done + offset, theta))
        if given:
            buffer.narrow(2, seen - given, given).copy_(new_rotated)
        return AttentionMemory(self.keys, self.values, self.retained_keys, self.retained_values, self.key_buffer,
                               self.value_buffer, buffer.narrow(2, 0, seen), buffer)

    def appended_rotated(self, k: torch.Tensor, v: torch.Tensor, rotated_k: torch.Tensor, limit: int | None,
                         offset: int, theta: float) -> "AttentionMemory":
        """append(k, v, limit).with_rotated_keys(offset, theta, rotated_k): a streaming step's new keys, values
        and rotated keys. In a decode's steady state (buffers with room, every key already rotated) the three
        rows are written in place and one memory made, which is what the two calls do there."""
        key_buffer, value_buffer, buffer = self.key_buffer, self.value_buffer, self.rotated_buffer
        if key_buffer is not None and buffer is not None and self.rotated_keys is not None:
            seen, new = self.keys.shape[2], k.shape[2]
            if (self.rotated_keys.shape[2] == seen and key_buffer.shape[2] >= seen + new
                    and buffer.shape[:3] == key_buffer.shape[:3] and not torch.is_grad_enabled()
                    and _is_prefix_view(self.keys, key_buffer) and _is_prefix_view(self.values, value_buffer)
                    and _is_prefix_view(self.rotated_keys, buffer)):
                key_buffer.narrow(2, seen, new).copy_(k)
                value_buffer.narrow(2, seen, new).copy_(v)
                buffer.narrow(2, seen, new).copy_(rotated_k)
                return AttentionMemory(key_buffer.narrow(2, 0, seen + new), value_buffer.narrow(2, 0, seen + new),
                                       self.retained_keys, self.retained_values, key_buffer, value_buffer,
                                       buffer.narrow(2, 0, seen + new), buffer)
        return self.append(k, v, limit).with_rotated_keys(offset, theta, rotated_k)

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
        names = ("keys", "values", "retained_keys", "retained_values")  # not the buffers: views suffice
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "AttentionMemory":
        return cls(**tensors)


def _is_prefix_view(view: torch.Tensor, buffer: torch.Tensor) -> bool:
    return view.data_ptr() == buffer.data_ptr() and view.stride() == buffer.stride()


class Attention(nn.Module):
    """Causal multi-head softmax attention with rotary embeddings over the current window's KV cache.

    d_model: model width; n_heads × head_dim: attention width (head_dim even, for rotary embeddings).
    retained_tokens: keys/values carried into the next window (L − 1 with sliding eviction, else 0); they
    set where this window's positions start. window: the most keys a window holds (None: no limit).
    """

    Memory = AttentionMemory

    def __init__(self, d_model: int, n_heads: int, head_dim: int, *, rope_theta: float = 10000.0,
                 retained_tokens: int = 0, window: int | None = None):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.theta = rope_theta
        self.offset = retained_tokens
        self.limit = window
        inner = n_heads * head_dim
        self.qkv = nn.Linear(d_model, 3 * inner, bias=False)
        self.out = nn.Linear(inner, d_model, bias=False)

    def extra_flops_per_token(self, context: int) -> float:
        """Forward FLOPs per token beyond the weights: scores and weighted sum over `context` keys."""
        return 4 * context * self.n_heads * self.head_dim

    def forward(self, x: torch.Tensor, memory: AttentionMemory | None) -> tuple[torch.Tensor, AttentionMemory]:
        """x: [batch, new, d_model], the next tokens of the current window."""
        memory = memory or AttentionMemory()
        batch, new, _ = x.shape
        qkv = self.qkv(x).view(batch, new, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if torch.is_grad_enabled():  # training: rotate every key in the graph
            q, k, v = qkv.unbind(0)
            memory = memory.append(k, v, self.limit)
            y = window_attention(q, memory.keys, memory.values, memory.retained_keys, memory.retained_values,
                                 self.offset, self.theta)
        else:
            y, memory = stream_attention(qkv, memory, self.offset, self.limit, self.theta)
        return self.out(y.transpose(1, 2).reshape(batch, new, -1)), memory


def stream_attention(qkv: torch.Tensor, memory: AttentionMemory, offset: int, limit: int | None,
                     theta: float) -> tuple[torch.Tensor, AttentionMemory]:
    """Attention's streaming step (no grad): qkv [3, batch, heads, new, dim] of the next tokens → (y [batch,
    heads, new, dim], memory). Each key is rotated once, when it arrives, together with its query (the same
    values: rotary is per row and per position, and a new key sits at its query's position)."""
    _, k, v = qkv.unbind(0)
    start = (0 if memory.keys is None else memory.keys.shape[2]) + offset
    rotated_q, rotated_k = rotary(qkv[:2], start, theta).unbind(0)
    memory = memory.appended_rotated(k, v, rotated_k, limit, offset, theta)
    y = window_attention(rotated_q, memory.rotated_keys, memory.values, memory.retained_keys, memory.retained_values,
                         offset, theta, keys_rotated=True, query_rotated=True)
    return y, memory
