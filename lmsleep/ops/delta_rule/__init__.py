"""The gated delta rule (the fast-weight op): one implementation per file, one dispatcher that picks.

    dispatch.py    gated_delta_rule (the public op: checks inputs, picks a backend), auto_backend, BACKENDS
    naive.py       recurrent_gated_delta_rule: the reference, token by token, the spec's equation
    chunk.py       chunk_gated_delta_rule: the readable chunked algorithm (autograd through torch ops)
    chunk_fast.py  fast_chunk_gated_delta_rule: the same in torch ops with a hand-written backward
    native.py      native_chunk_gated_delta_rule: the same in C, float32 on a CPU (an autograd Function)
    native_op.py   the native op registered with torch.library (what torch.compile / torch.export trace)
    library.py     builds csrc/gated_delta_rule.c on first use, loads it, calls it through ctypes
    choice.py      whether auto runs the native op here: timed once against the torch path, kept beside the build
    fla.py         fla_chunk_gated_delta_rule: flash-linear-attention's kernel (CUDA, optional import)
    common.py      what the two fast paths share: chunk lengths, threads over (batch row, head) blocks

The package is named `delta_rule`, not `gated_delta_rule`, so that `lmsleep.ops.gated_delta_rule` is the
public function and never hides a package of the same name.
"""
from .chunk import chunk_gated_delta_rule
from .chunk_fast import fast_chunk_gated_delta_rule
from .dispatch import BACKENDS, auto_backend, gated_delta_rule
from .fla import fla_chunk_gated_delta_rule
from .naive import recurrent_gated_delta_rule
from .native import native_chunk_gated_delta_rule

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
