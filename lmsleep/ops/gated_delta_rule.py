"""Public entry point of the fast-weight op, with input checks.

Same calling convention as flash-linear-attention's `chunk_gated_delta_rule`, so the two can be swapped:
tensors are [batch, time, heads, dim]; q and k are used as given (the layer L2-normalises them).
It runs `chunk_fast` (hand-written backward; a forward that needs no gradient runs in the native library of
`native.py` where it builds); `chunk.chunk_gated_delta_rule` stays the readable chunked path and
`naive.recurrent_gated_delta_rule` the reference, all tested against each other.
"""
from __future__ import annotations

import torch

from .chunk import chunk_gated_delta_rule
from .chunk_fast import fast_chunk_gated_delta_rule
from .naive import recurrent_gated_delta_rule

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_inputs(q, k, v, g, beta, initial_state, chunk_size) -> None:
    names = {"q": q, "k": k, "v": v, "g": g, "beta": beta}
    for name, x in names.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"gated_delta_rule: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"gated_delta_rule: {name} must be a floating tensor, got dtype {x.dtype}")
    for name in ("q", "k", "v"):
        if names[name].dim() != 4:
            raise ValueError(
                f"gated_delta_rule: {name} must be [batch, time, heads, dim], got shape {tuple(names[name].shape)}"
            )
    if q.shape != k.shape:
        raise ValueError(f"gated_delta_rule: q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"gated_delta_rule: v must share [batch, time, heads] with q, got {tuple(v.shape)} vs {tuple(q.shape)}"
        )
    for name in ("g", "beta"):
        if names[name].shape != q.shape[:3]:
            raise ValueError(
                f"gated_delta_rule: {name} must be [batch, time, heads] = {tuple(q.shape[:3])}, "
                f"got {tuple(names[name].shape)}"
            )
    dtypes = {x.dtype for x in names.values()}
    if len(dtypes) != 1:
        raise TypeError(f"gated_delta_rule: q, k, v, g, beta must share one dtype, got {sorted(map(str, dtypes))}")
    batch, _, heads, key_dim = q.shape
    if initial_state is not None:
        expected = (batch, heads, key_dim, v.shape[-1])
        if tuple(initial_state.shape) != expected:
            raise ValueError(
                f"gated_delta_rule: initial_state must be [batch, heads, K, V] = {expected}, "
                f"got {tuple(initial_state.shape)}"
            )
        if initial_state.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"gated_delta_rule: initial_state must be floating, got dtype {initial_state.dtype}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"gated_delta_rule: chunk_size must be a positive int or None, got {chunk_size!r}")


def gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    *,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int | None = None,
    reference: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule  S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,  o_t = scale · S_tᵀ q_t.

    Args:
        q, k: [batch, time, heads, K]; v: [batch, time, heads, V] (K ≠ V allowed).
        g: log-decay log α_t ≤ 0, [batch, time, heads]. beta: write strength β_t, [batch, time, heads].
        scale: query scale, default K^-1/2. initial_state: [batch, heads, K, V] or None (zeros).
        output_final_state: also return the state after the last token.
        chunk_size: at most this many tokens are solved together by the chunked path, which cuts the
            sequence into ⌈T / chunk_size⌉ chunks of equal length; any time length works. None picks what
            is fastest on a CPU: 16 for the native op (64 for K > 64 with a gradient), 32 for K ≤ 64 and 64
            above on the torch path (results differ only by rounding).
        reference: run the token-by-token reference instead of the chunked path.
    Returns:
        (out [batch, time, heads, V] in the input dtype, final state [batch, heads, K, V] or None).
    Half-precision inputs are computed in float32; float32 and float64 are computed as given.
    """
    _check_inputs(q, k, v, g, beta, initial_state, chunk_size)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    in_dtype = q.dtype
    compute_dtype = torch.float32 if in_dtype in (torch.float16, torch.bfloat16) else in_dtype
    q, k, v, g, beta = (x.to(compute_dtype) for x in (q, k, v, g, beta))
    if initial_state is not None:
        initial_state = initial_state.to(compute_dtype)
    if q.shape[1] == 0:
        out = v.new_zeros(v.shape)
        state = initial_state if initial_state is not None else q.new_zeros(
            q.shape[0], q.shape[2], q.shape[3], v.shape[3]
        )
    elif reference or q.shape[1] == 1:  # one token (streaming): the recurrence is a handful of small ops
        out, state = recurrent_gated_delta_rule(q, k, v, g, beta, scale, initial_state)
    else:
        out, state = fast_chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, chunk_size)
    return out.to(in_dtype), (state if output_final_state else None)
