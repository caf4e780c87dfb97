"""transformers' Gated-DeltaNet layers computed by lmsleep's op (`lmsleep.ops.gated_delta_rule`).

Qwen3.5, Qwen3-Next and OLMo-Hybrid's GatedDeltaNet layers call two functions of their modeling module,
`torch_chunk_gated_delta_rule` (a window at once) and `torch_recurrent_gated_delta_rule` (one token with a
state), both with fla's calling convention. `routed(modules)` points those names at `transformers_gated_delta_rule`
(lmsleep's op behind the same signature) while a sleeping hybrid runs its layers, and puts the originals back
after, so a model used outside lmsleep is left as transformers made it. lmsleep's op picks its backend
("auto": the native op or the torch path on a CPU, fla's kernel on CUDA when installed).

The names are module globals, so routing is process-wide for its duration: a thread running the same
architecture at that moment also computes through lmsleep's op (the same rule, so the same results up to
rounding).
"""
from __future__ import annotations

from contextlib import contextmanager
from types import ModuleType

import torch

from ..ops import gated_delta_rule

ROUTED_FUNCTIONS = ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule")


def _l2_normalised(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(Σx² + eps) over the last dim: fla's (and transformers') in-kernel q/k normalisation."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def transformers_gated_delta_rule(query, key, value, g, beta, chunk_size=None, initial_state=None,
                                  output_final_state=False, use_qk_l2norm_in_kernel=False, cu_seqlens=None,
                                  **kwargs):
    """transformers' `torch_{chunk,recurrent}_gated_delta_rule` computed by lmsleep's op: query, key
    [batch, time, k_heads, K], value [batch, time, v_heads, V] (each key head serves v_heads / k_heads
    consecutive value heads), g (log-decay) and beta [batch, time, v_heads], initial_state [batch, v_heads,
    K, V]. Returns (out [batch, time, v_heads, V] in query's dtype, final state or None). Computed in float32
    (float64 inputs in float64), as transformers computes it."""
    if cu_seqlens is not None:
        raise ValueError("sleep_hybrid does not take packed sequences (cu_seqlens): give one sequence per batch row")
    out_dtype = query.dtype
    groups = value.shape[2] // key.shape[2]
    if groups > 1:
        query, key = query.repeat_interleave(groups, dim=2), key.repeat_interleave(groups, dim=2)
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    query, key, value, g, beta = (x.to(dtype) for x in (query, key, value, g, beta))
    if use_qk_l2norm_in_kernel:
        query, key = _l2_normalised(query), _l2_normalised(key)
    state = None if initial_state is None else initial_state.to(dtype)
    out, final = gated_delta_rule(query, key, value, g, beta, initial_state=state, output_final_state=True)
    return out.to(out_dtype), (final if output_final_state else None)


@contextmanager
def routed(modules: list[ModuleType]):
    """Within the block, the modeling modules' gated-delta-rule functions are `transformers_gated_delta_rule`."""
    saved = [(module, name, getattr(module, name)) for module in modules for name in ROUTED_FUNCTIONS]
    try:
        for module, name, _ in saved:
            setattr(module, name, transformers_gated_delta_rule)
        yield
    finally:
        for module, name, original in reversed(saved):
            setattr(module, name, original)
