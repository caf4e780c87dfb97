"""Plain recurrent reference for the gated delta rule: one token at a time, exactly the spec's equation.

    S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ        o_t = scale · S_tᵀ q_t

with S stored as [key_dim, value_dim] per head and α_t = exp(g_t). Slow and obviously right; every fast
path is tested against it.
"""
from __future__ import annotations

import torch


def recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: [batch, time, heads, K]; v: [batch, time, heads, V]; g, beta: [batch, time, heads];
    initial_state: [batch, heads, K, V] or None. Returns (out [batch, time, heads, V], final state)."""
    batch, time, heads, key_dim = k.shape
    value_dim = v.shape[-1]
    if initial_state is None:
        state = q.new_zeros(batch, heads, key_dim, value_dim)
    else:
        state = initial_state
    outputs = []
    for t in range(time):
        q_t, k_t, v_t = q[:, t], k[:, t], v[:, t]  # [batch, heads, dim]
        decay = g[:, t].exp()[..., None, None]
        write_strength = beta[:, t][..., None]
        state = decay * state
        predicted = torch.einsum("bhkv,bhk->bhv", state, k_t)
        correction = write_strength * (v_t - predicted)
        state = state + torch.einsum("bhk,bhv->bhkv", k_t, correction)
        outputs.append(scale * torch.einsum("bhkv,bhk->bhv", state, q_t))
    return torch.stack(outputs, dim=1), state
