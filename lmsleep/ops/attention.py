"""Rotary embeddings and causal attention over one window, with optional keys retained from the previous one.

The attention context of a window is [retained keys (sliding eviction: the previous window's last L−1),
keys of this window so far]. Positions are window-local, so nothing drifts however long the stream runs:
key i of this window sits at position `offset + i`, where offset = L − 1 in sliding mode and 0 otherwise,
and the R retained keys just before it, at offset − R .. offset − 1 (R = L − 1 after a full window, fewer
after a window a sleep on demand ended early). Rotary embeddings are relative, so only these differences
matter: the last retained key is always one token before the window's first.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


_ROTARY_TABLES: dict = {}  # (half, theta, dtype, device) → (cos, sin) [positions, 2·half], grown on demand


def _frequencies(half: int, theta: float, device) -> torch.Tensor:
    return theta ** (-torch.arange(half, device=device, dtype=torch.float64) / half)


def _rotary_table(length: int, half: int, theta: float, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotation's factors for positions 0..length−1 (or more), computed once in float64 (see _rotate:
    [cos, cos] and [−sin, sin] of the rotary angles).
    Streaming asks for every position of the window at every token; recomputing them was most of a
    long-context decode step. The table is an ordinary tensor even when first asked for under
    torch.inference_mode (a decode loop may run in it), so that training can use it afterwards."""
    key = (half, theta, dtype, device if isinstance(device, torch.device) else torch.device(device))
    table = _ROTARY_TABLES.get(key)
    if table is None or table[0].shape[0] < length:
        size = max(length, 2 * table[0].shape[0] if table is not None else 512)
        with torch.inference_mode(False):
            angles = torch.arange(size, device=device, dtype=torch.float64)[:, None] * _frequencies(half, theta, device)[None, :]
            table = _factors(angles.cos().to(dtype), angles.sin().to(dtype))
        _ROTARY_TABLES[key] = table
    return table


def rotary(x: torch.Tensor, positions: torch.Tensor | int, theta: float) -> torch.Tensor:
    """Rotate pairs of features of x [batch, heads, time, dim] by position-dependent angles
    (positions: [time], non-negative integers; or an int p: the positions p .. p + time − 1, read off the
    table as a slice, with no gather and no look at a tensor's values: a decode step's common case)."""
    half = x.shape[-1] // 2
    if not isinstance(positions, torch.Tensor):  # a start (an int, or a symbolic one while compiling)
        if torch.compiler.is_compiling():
            positions = torch.arange(positions, positions + x.shape[-2], device=x.device)
        else:
            cos, sin = _rotary_table(positions + x.shape[-2], half, theta, x.dtype, x.device)
            return _rotate(x, cos[positions : positions + x.shape[-2]], sin[positions : positions + x.shape[-2]])
    if torch.compiler.is_compiling():  # the table's size depends on the positions' values: computed here instead
        angles = positions.to(torch.float64)[:, None] * _frequencies(half, theta, x.device)[None, :]
        cos, sin = _factors(angles.cos().to(x.dtype), angles.sin().to(x.dtype))
    else:
        length = int(positions.max()) + 1 if positions.numel() else 0
        cos, sin = _rotary_table(length, half, theta, x.dtype, x.device)
        cos, sin = cos[positions], sin[positions]  # [time, 2·half]
    return _rotate(x, cos, sin)


def _factors(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[cos, cos] and [−sin, sin] [..., 2·half] of the angles' cos and sin [..., half]."""
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x rotated: its halves x1, x2 become [x1·cos − x2·sin, x1·sin + x2·cos], computed as
    x·[cos, cos] + [x2, x1]·[−sin, sin] (cos, sin: the factors of _factors): the same numbers bit for bit
    (x2·(−sin) is −(x2·sin) exactly, a + (−b) is a − b, and a sum does not depend on its order), in four ops
    instead of seven (five for a non-contiguous x: the result is contiguous, as the concatenation made it,
    since attention's backward rounds differently on other layouts)."""
    half = cos.shape[-1] // 2
    if 2 * half != x.shape[-1]:  # an odd trailing feature is not rotated
        return torch.cat([_rotate(x[..., : 2 * half], cos, sin), x[..., 2 * half :]], dim=-1)
    x = x.contiguous()
    swapped = x.roll(half, -1)  # [x2, x1] (a roll: ~4× faster than flipping the halves, forward and backward)
    return x * cos + swapped * sin


def window_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    retained_keys: torch.Tensor | None,
    retained_values: torch.Tensor | None,
    offset: int,
    theta: float,
    keys_rotated: bool = False,
    query_rotated: bool = False,
) -> torch.Tensor:
    """Causal softmax attention of the last q.shape[2] tokens of a window.

    q: [batch, heads, new, dim] (unrotated) for window positions keys.shape[2]-new .. keys.shape[2]-1.
    keys, values: [batch, heads, seen, dim], every key of this window so far (unrotated, or already rotated at
    their positions when keys_rotated: a stream's cache rotates each key once), new ones last.
    query_rotated: q is already rotated at its positions (a stream rotates a new key and its query together).
    retained_*: [batch, heads, R ≤ offset, dim] kept from the previous window (unrotated) or None. Window
    query i sees a retained key iff its position is ≥ i (a sliding window of offset + 1 tokens) and window
    keys j ≤ i.
    """
    new, seen = q.shape[2], keys.shape[2]
    device = q.device
    if not query_rotated:
        q = rotary(q, seen - new + offset, theta)
    if not keys_rotated:
        keys = rotary(keys, offset, theta)
    if new == 1 and (retained_keys is None or retained_keys.shape[2] == 0):
        # One query that sees every key (a decode step): no mask to build; a mask of all True adds 0 to
        # every score, so the result is the same.
        return F.scaled_dot_product_attention(q, keys, values)
    query_pos = torch.arange(seen - new, seen, device=device)
    key_pos = torch.arange(seen, device=device)
    mask = key_pos[None, :] <= query_pos[:, None]  # [new, seen]
    if retained_keys is not None and retained_keys.shape[2] > 0:
        retained = retained_keys.shape[2]
        assert retained <= offset, "retained keys are at most the offset (L − 1)"
        retained_pos = torch.arange(offset - retained, offset, device=device)
        keys = torch.cat([rotary(retained_keys, offset - retained, theta), keys], dim=2)
        values = torch.cat([retained_values, values], dim=2)
        mask = torch.cat([retained_pos[None, :] >= query_pos[:, None], mask], dim=1)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
