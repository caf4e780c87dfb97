"""flash-linear-attention's Triton kernel for the gated delta rule, on CUDA only, when fla is installed.

fla is an optional dependency: nothing here imports it until asked. Its `chunk_gated_delta_rule` shares
our calling convention (tensors [batch, time, heads, dim], g = log α_t, β; it picks its own chunk size and
computes in the inputs' precision), so it is called with the same tensors as the other backends.
"""
from __future__ import annotations

import functools

import torch


@functools.cache
def _load() -> tuple[object | None, str | None]:
    """(fla's chunk_gated_delta_rule, None), or (None, why it cannot be imported). Tried once."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as error:  # noqa: BLE001 - any import failure (missing, no Triton, ...) means "not available"
        return None, f"flash-linear-attention cannot be imported ({type(error).__name__}: {error})"
    return chunk_gated_delta_rule, None


def unavailable_reason(*tensors) -> str | None:
    """Why fla's kernel cannot take these tensors (None when it can): it needs CUDA tensors and fla installed."""
    for x in tensors:
        if x is not None and not x.is_cuda:
            return "fla's kernel runs on CUDA tensors only"
    return _load()[1]


def fla_chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fla's chunked kernel with our arguments (a RuntimeError saying why when it cannot run)."""
    reason = unavailable_reason(q, k, v, g, beta, initial_state)
    if reason is not None:
        raise RuntimeError(f"fla_chunk_gated_delta_rule: {reason}")
    kernel = _load()[0]
    return kernel(q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state)
