"""One decoder layer of a transformers Gated-DeltaNet hybrid run on lmsleep's memory of it.

transformers' decoder layers read and write their state through a cache object passed as `cache`: an
attention layer calls `update(keys, values, layer_idx)` and attends over what it returns; a GatedDeltaNet
layer reads its recurrent state and continues its convolution through `get_recurrent_state`,
`update_conv_state` and `update_recurrent_state`. `LayerCache` answers those calls from one layer's lmsleep
memory, so the layer's own forward (its norms, projections, gates, MLP, residuals: the pretrained modules
as they are) runs on the sleep's memory:

    attention layer   WindowKV: lmsleep's AttentionMemory (this window's keys/values, plus the previous
                      window's last L − 1 when sliding) and `start`, the window's first position
    GatedDeltaNet     lmsleep's FastWeightMemory: S and the convolution's tail (None at a window start:
                      the convolution is zero-padded there, every pass, as the spec decides)

Keys are cached as the layer gives them, rotated at their positions in the stream (start + index), so keys
retained from the previous window keep their positions; the mask lets query i see key j iff
0 ≤ position(i) − position(j) ≤ L − 1 (causal within the window; a sliding window of L over retained keys).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layers import AttentionMemory, FastWeightMemory

ATTENTION, FAST_WEIGHTS = "full_attention", "linear_attention"  # transformers' layer_types


@dataclass
class WindowKV:
    """An attention layer's memory: kv (keys/values [batch, kv_heads, tokens, head_dim], rotated) and
    start [batch], the stream position of this window's first token (None: 0)."""

    kv: AttentionMemory
    start: torch.Tensor | None = None

    def seen(self) -> int:
        """Tokens of this window whose keys are cached."""
        return 0 if self.kv.keys is None else self.kv.keys.shape[2]

    def retained(self) -> int:
        return 0 if self.kv.retained_keys is None else self.kv.retained_keys.shape[2]

    def positions(self, batch: int, new: int, device) -> torch.Tensor:
        """Stream positions [batch, new] of the next `new` tokens of this window."""
        start = torch.zeros(batch, dtype=torch.long, device=device) if self.start is None else self.start
        return start[:, None] + self.seen() + torch.arange(new, device=device)

    def next_pass(self) -> "WindowKV":
        """A further sleep pass over the same window: same positions and retained keys, window keys recomputed."""
        return WindowKV(self.kv.next_pass(), self.start)

    def evict(self, retain: int) -> "WindowKV":
        """End of window: the next window starts after this one's tokens; keep the last `retain` keys/values."""
        start = self.start
        if self.kv.keys is not None:
            start = (0 if start is None else start) + self.seen()
            if not isinstance(start, torch.Tensor):
                start = torch.full((self.kv.keys.shape[0],), start, dtype=torch.long, device=self.kv.keys.device)
        return WindowKV(self.kv.evict(retain), start)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**self.kv.tensors(), **({} if self.start is None else {"start": self.start})}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "WindowKV":
        tensors = dict(tensors)
        start = tensors.pop("start", None)
        return cls(AttentionMemory.from_tensors(tensors), start)


def window_mask(memory: WindowKV, new: int, window: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The additive attention mask [1, 1, new, retained + seen + new] of the next `new` queries: 0 where
    0 ≤ position(query) − position(key) ≤ L − 1, the dtype's lowest value elsewhere."""
    seen, retained = memory.seen(), memory.retained()
    query = torch.arange(seen, seen + new, device=device)
    key = torch.arange(-retained, seen + new, device=device)
    distance = query[:, None] - key[None, :]
    visible = (distance >= 0) & (distance <= window - 1)
    mask = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill(~visible, torch.finfo(dtype).min)
    return mask[None, None]


class LayerCache:
    """The transformers cache calls of one layer's forward, answered from (and recorded into) `memory`."""

    def __init__(self, memory: WindowKV | FastWeightMemory, window: int):
        self.memory = memory
        self.window = window

    # ----- attention layers -----

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Append this call's keys/values [batch, kv_heads, new, dim]; return every key/value the window's
        queries may see, retained ones first."""
        kv = self.memory.kv.append(key_states, value_states, self.window)
        self.memory = WindowKV(kv, self.memory.start)
        if kv.retained_keys is None or kv.retained_keys.shape[2] == 0:
            return kv.keys, kv.values
        return torch.cat([kv.retained_keys, kv.keys], dim=2), torch.cat([kv.retained_values, kv.values], dim=2)

    # ----- GatedDeltaNet layers -----

    def get_recurrent_state(self, layer_idx, state_idx=0):
        return self.memory.state

    def get_conv_state(self, layer_idx, state_idx=0):
        return None  # the convolution continues through update_conv_state, which keeps the tail functional

    def update_conv_state(self, hidden_states, layer_idx, state_idx=0, conv_kernel_size=None, **kwargs):
        """hidden_states [batch, channels, new] with the window's previous conv_kernel_size − 1 inputs before
        them (zeros at a window start); the layer convolves this and keeps the last `new` outputs."""
        width = conv_kernel_size - 1
        tail = self.memory.conv_tail  # [batch, width, channels]
        if tail is None:
            tail = hidden_states.new_zeros(hidden_states.shape[0], width, hidden_states.shape[1])
        padded = torch.cat([tail.transpose(1, 2).to(hidden_states.dtype), hidden_states], dim=-1)
        self.memory = FastWeightMemory(self.memory.state, padded[:, :, padded.shape[-1] - width:].transpose(1, 2))
        return padded

    def get_recurrent_states_to_keep(self, layer_idx):
        return 0

    def update_recurrent_state(self, state, layer_idx, *args, **kwargs):
        self.memory = FastWeightMemory(state, self.memory.conv_tail)

    def is_recording_past(self, layer_idx) -> bool:
        return False


def run_layer(layer, kind: str, h: torch.Tensor, memory, window: int, rotary):
    """Layer `layer` (a transformers decoder layer of `kind`) on h [batch, new, hidden] continuing `memory`;
    returns (h, memory). `rotary(h, position_ids)` gives the layer's position embeddings (None: no RoPE)."""
    cache = LayerCache(memory, window)
    batch, new, _ = h.shape
    if kind == ATTENTION:
        positions = memory.positions(batch, new, h.device)
        mask = window_mask(memory, new, window, h.dtype, h.device)
        h = layer(h, position_embeddings=rotary(h, positions), attention_mask=mask, position_ids=positions, cache=cache)
    else:
        h = layer(h, position_embeddings=None, attention_mask=None, cache=cache)
    return h, cache.memory
