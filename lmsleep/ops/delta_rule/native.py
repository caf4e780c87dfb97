"""The native gated delta rule: the algorithm and backward of `chunk_fast.py` in C (`csrc/gated_delta_rule.c`,
built and loaded by `library.py`), float32 on a CPU only, as a torch autograd Function.

It computes what `chunk_fast.fast_chunk_gated_delta_rule` computes (so it matches the recurrent reference
`naive.recurrent_gated_delta_rule`), one (batch row, head) at a time in cache. The dispatcher picks it for
float32 CPU tensors whenever the library builds. While torch.compile or torch.export traces, the same C calls
run through the op registered with torch.library (`native_op.py`); eager calls keep the Function, which
measured faster per call (2.3 ms against 6.1 ms forward + backward at the training shape (32, 8, 1, 64),
117 ms against 135 ms at (16, 384, 4, 64), one thread).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import library, native_op
from .common import chunking, even_slices, map_blocks, thread_count

SPLIT_MIN_ELEMENTS = 2**15  # below this many values in q, the native forward runs on one thread
CHUNK_SIZE = 16  # the native op's default chunk (see default_chunk_size)


class _NativeChunkGatedDeltaRule(torch.autograd.Function):
    """The op in the native library: (batch row, head) pairs cut into `threads` ranges, each run on a thread
    of its own. When a gradient is needed the forward also keeps each chunk's U and the state entering a
    chunk once per 64 tokens, from which the native backward recomputes the rest chunk by chunk."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, initial_state, scale, length, threads):
        batch, time, heads, key_dim = q.shape
        inputs = tuple(x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v)) + (g, beta)
        if initial_state is not None:
            initial_state = initial_state.contiguous()
        out = v.new_empty(v.shape)
        final_state = q.new_empty(batch, heads, key_dim, v.shape[-1])
        saved_states = saved_u = None
        if any(ctx.needs_input_grad[:6]):
            saved_states, saved_u = library.saved_buffers(batch * heads, time, key_dim, v.shape[-1], length)
            ctx.save_for_backward(*inputs, saved_states, saved_u)
        ranges = even_slices(batch * heads, threads) or [slice(0, 0)]  # an empty batch: one empty range
        map_blocks(lambda pairs: library.forward_range(
            inputs, initial_state, final_state, out, scale, length, pairs, saved_states, saved_u), ranges, "cpu")
        ctx.config = (scale, length, ranges, initial_state is not None)
        return out, final_state

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_final_state):
        scale, length, ranges, has_initial_state = ctx.config
        *inputs, saved_states, saved_u = ctx.saved_tensors
        v = inputs[2]
        grad_out = v.new_zeros(v.shape) if grad_out is None else grad_out
        *grads, grad_initial = native_op.backward_blocks(inputs, saved_states, saved_u, grad_out, grad_final_state,
                                                         scale, length, ranges)
        return (*grads, grad_initial if has_initial_state else None, None, None, None)


def default_chunk_size(key_dim: int, needs_grad: bool) -> int:
    """What measured fastest on 2 cores: chunks of 16, but 64 for K > 64 when a gradient is needed (as fast
    there, and the states it keeps for the backward, K·V per chunk, take a quarter of the memory)."""
    return 64 if needs_grad and key_dim > 64 else CHUNK_SIZE


def unavailable_reason(*tensors, dtype: torch.dtype | None = None) -> str | None:
    """Why the native op cannot take these tensors (None when it can): it needs float32 CPU tensors and
    the library built and loaded. dtype: the one they will be computed in, if not their own (the
    dispatcher computes half precision in float32)."""
    for x in tensors:  # a loop, not any(...): this runs on every call of the op, which can be tiny
        if x is not None and ((dtype or x.dtype) != torch.float32 or not x.is_cpu):
            kinds = sorted({f"{dtype or y.dtype} on {y.device.type}" for y in tensors if y is not None})
            return f"it takes float32 CPU tensors only, got {', '.join(kinds)}"
    if not library.available():
        return f"the native library is unavailable ({library.error()})"
    return None


def native_chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    chunk_size: int | None = None,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same arguments and result as `chunk_fast.fast_chunk_gated_delta_rule` (float32 CPU tensors only; a
    RuntimeError saying why otherwise); differentiable in every tensor argument.

    chunk_size: None picks what measured fastest (`default_chunk_size`).
    threads: how many ranges of (batch row, head) pairs run side by side on threads of their own; None is
    torch.get_num_threads(), or 1 for inputs under SPLIT_MIN_ELEMENTS values.
    """
    threads = thread_count(threads, q.numel(), SPLIT_MIN_ELEMENTS, "native_chunk_gated_delta_rule")
    tensors = (q, k, v, g, beta, initial_state)
    reason = unavailable_reason(*tensors)
    if reason is not None:
        raise RuntimeError(f"native_chunk_gated_delta_rule: the native op cannot run: {reason}")
    needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors)
    if chunk_size is None:  # results differ only by rounding
        chunk_size = default_chunk_size(q.shape[-1], needs_grad)
    if torch.compiler.is_compiling():  # the registered op: one node torch.compile and torch.export can trace
        return native_op.traced_chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, chunk_size, threads,
                                                       needs_grad)
    _, length = chunking(q.shape[1], chunk_size)
    return _NativeChunkGatedDeltaRule.apply(q, k, v, g, beta, initial_state, scale, length, threads)
