"""Chunked fast path for the gated delta rule (matches `naive.recurrent_gated_delta_rule`).

Within a chunk of C tokens the delta-rule updates are solved together (the WY / UT form): with
Γ_i = exp(Σ_{j≤i} g_j) the cumulative decay from the chunk start and S0 the state entering the chunk,
the pseudo-values U written into the state satisfy

    (I + L) U = β·V − (β·Γ·K) S0,      L[i, j] = β_i (Γ_i / Γ_j) k_i·k_j  for j < i,

so U = u − w S0 with u = (I + L)⁻¹ β·V and w = (I + L)⁻¹ β·Γ·K, both computed for every chunk at once
by a unit-lower-triangular solve. The sequential part is then three matmuls per chunk:

    O   = (q·Γ) S0 + tril(q kᵀ · Γ_i/Γ_j) U
    S_C = Γ_C S0 + (k · Γ_C/Γ_j)ᵀ U

Every decay ratio used is ≤ 1, so nothing overflows. T need not be a multiple of C: the tail is padded
with g = 0, β = 0, k = v = 0, which leaves the state untouched.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_SIZE = 64  # the default: this path is for reading and testing, not tuned


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same arguments and result as the recurrent reference, plus `chunk_size`."""
    batch, time, heads, key_dim = k.shape
    value_dim = v.shape[-1]
    chunk = min(chunk_size, time)
    pad = (-time) % chunk
    # [batch, heads, time, dim] layout for the matmuls.
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    g, beta = (x.transpose(1, 2) for x in (g, beta))
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    n_chunks = (time + pad) // chunk
    q, k, v = (x.reshape(batch, heads, n_chunks, chunk, -1) for x in (q, k, v))
    g, beta = (x.reshape(batch, heads, n_chunks, chunk) for x in (g, beta))

    log_decay = g.cumsum(-1)  # log Γ_i, [batch, heads, chunks, C]
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    # Γ_i / Γ_j for j ≤ i, zero above the diagonal (masked before exp so it cannot overflow).
    pair_decay = (log_decay[..., :, None] - log_decay[..., None, :]).masked_fill(~causal, float("-inf")).exp()

    k_beta = k * beta[..., None]
    lower = (k_beta @ k.transpose(-1, -2)) * pair_decay
    system = lower.tril(-1) + torch.eye(chunk, dtype=q.dtype, device=q.device)
    u = torch.linalg.solve_triangular(system, v * beta[..., None], upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(system, k_beta * log_decay.exp()[..., None], upper=False, unitriangular=True)

    q = q * scale
    intra = (q @ k.transpose(-1, -2)) * pair_decay  # tril(q kᵀ · Γ_i/Γ_j)
    q_decayed = q * log_decay.exp()[..., None]
    k_to_end = k * (log_decay[..., -1:] - log_decay).exp()[..., None]
    chunk_decay = log_decay[..., -1].exp()[..., None, None]  # Γ_C, [batch, heads, chunks, 1, 1]

    state = q.new_zeros(batch, heads, key_dim, value_dim) if initial_state is None else initial_state
    outputs = []
    for c in range(n_chunks):
        pseudo_values = u[:, :, c] - w[:, :, c] @ state
        outputs.append(q_decayed[:, :, c] @ state + intra[:, :, c] @ pseudo_values)
        state = chunk_decay[:, :, c] * state + k_to_end[:, :, c].transpose(-1, -2) @ pseudo_values
    out = torch.stack(outputs, dim=2).reshape(batch, heads, n_chunks * chunk, value_dim)
    return out[:, :, :time].transpose(1, 2), state
