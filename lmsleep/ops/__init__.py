"""Pure tensor functions: the fast-weight rule (package `delta_rule/`: the reference, the chunked torch
paths, the native C op, fla's kernel on CUDA, and the dispatcher that picks among them) and windowed attention."""
from .delta_rule import (
    BACKENDS,
    auto_backend,
    chunk_gated_delta_rule,
    fast_chunk_gated_delta_rule,
    fla_chunk_gated_delta_rule,
    gated_delta_rule,
    native_chunk_gated_delta_rule,
    recurrent_gated_delta_rule,
)

__all__ = [
    "BACKENDS",
    "auto_backend",
    "gated_delta_rule",
    "recurrent_gated_delta_rule",
    "chunk_gated_delta_rule",
    "fast_chunk_gated_delta_rule",
    "native_chunk_gated_delta_rule",
    "fla_chunk_gated_delta_rule",
]
