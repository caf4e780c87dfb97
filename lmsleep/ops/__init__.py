"""Pure tensor functions: the fast-weight rule (recurrent reference, chunked torch paths, native C op in
`native.py`) and windowed attention."""
from .gated_delta_rule import gated_delta_rule
from .naive import recurrent_gated_delta_rule
from .chunk import chunk_gated_delta_rule
from .chunk_fast import fast_chunk_gated_delta_rule

__all__ = ["gated_delta_rule", "recurrent_gated_delta_rule", "chunk_gated_delta_rule", "fast_chunk_gated_delta_rule"]
