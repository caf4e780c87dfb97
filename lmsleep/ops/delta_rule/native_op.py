"""The native op registered with `torch.library` (`lmsleep::gated_delta_rule_native` and its backward), so that
`torch.compile(..., fullgraph=True)` and `torch.export` trace through it as one opaque node.

Eager calls run the autograd Function of `native.py` (the same C calls, without the dispatcher's overhead);
`native.native_chunk_gated_delta_rule` switches to these ops while torch.compile or torch.export traces. The
two compute the same numbers: both cut the (batch row, head) pairs into the same ranges and call
`library.forward_range` / `backward_range`.

The forward op returns, beside (out, final state), what the backward needs (the states entering each chunk
and U, `library.saved_buffers`; empty when `keep` is False), as outputs without gradients: a custom op
cannot keep private state between its forward and backward, and the compiler must know their sizes, which
`saved_sizes` gives (the C library's `lmsleep_gdr_saved_sizes`, written out so fake tensors and symbolic
shapes can be sized without the library).

Upgrading: torch's on-disk compile caches do not key on a custom op's fake implementation, so a graph
compiled by a version of lmsleep whose saved buffers had other sizes can be replayed and fail with a shape
error; clear inductor's cache (TORCHINDUCTOR_CACHE_DIR, by default /tmp/torchinductor_$USER) after upgrading.
"""
from __future__ import annotations

import torch

from . import library
from .common import chunking, even_slices, map_blocks

LANES = 16  # csrc/gated_delta_rule.c pads K, V and the chunk length to whole vectors of 16 floats
STATE_SPAN = 64  # and keeps the state entering a chunk once per this many tokens (its SPAN)


def _round_up(n):
    return (n + LANES - 1) // LANES * LANES


def saved_sizes(time, key_dim, value_dim, length) -> tuple:
    """How many float32 values the forward keeps per (batch row, head): (states, U), as the C library says
    (`library.saved_sizes`; a test checks they agree). Works on symbolic sizes."""
    chunks = (time + length - 1) // length
    stride = STATE_SPAN // length if length < STATE_SPAN else 1  # a state kept every `stride` chunks
    states = (chunks + stride - 1) // stride * _round_up(key_dim) * _round_up(value_dim)
    return states, chunks * _round_up(length) * _round_up(value_dim)


def _ranges(pairs: int, threads: int) -> list[slice]:
    return even_slices(pairs, threads) or [slice(0, 0)]  # an empty batch: one empty range


def _layout(q, k, v, g, beta) -> tuple:
    """The inputs as the library takes them: q, k, v with a contiguous last dimension (g, beta any strides)."""
    return tuple(x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v)) + (g, beta)


@torch.library.custom_op("lmsleep::gated_delta_rule_native", mutates_args=(), device_types="cpu")
def gated_delta_rule_native(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    initial_state: torch.Tensor | None, scale: float, length: int, threads: int, keep: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, final state, saved states, saved U) of the native forward in chunks of `length` tokens, on
    `threads` ranges of (batch row, head) pairs; the last two are empty [0, 0] unless `keep`."""
    batch, time, heads, key_dim = q.shape
    inputs = _layout(q, k, v, g, beta)
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    out = v.new_empty(v.shape)
    final_state = q.new_empty(batch, heads, key_dim, v.shape[-1])
    if keep:
        saved_states, saved_u = library.saved_buffers(batch * heads, time, key_dim, v.shape[-1], length)
    else:
        saved_states, saved_u = q.new_empty(0, 0), q.new_empty(0, 0)  # outputs never alias each other
    map_blocks(lambda pairs: library.forward_range(
        inputs, initial_state, final_state, out, scale, length, pairs,
        saved_states if keep else None, saved_u if keep else None), _ranges(batch * heads, threads), "cpu")
    return out, final_state, saved_states, saved_u


@gated_delta_rule_native.register_fake
def _(q, k, v, g, beta, initial_state, scale, length, threads, keep):
    batch, time, heads, key_dim = q.shape
    value_dim = v.shape[-1]
    if keep:
        states, pseudo = saved_sizes(time, key_dim, value_dim, length)
        saved_states, saved_u = q.new_empty(batch * heads, states), q.new_empty(batch * heads, pseudo)
    else:
        saved_states, saved_u = q.new_empty(0, 0), q.new_empty(0, 0)
    return v.new_empty(v.shape), q.new_empty(batch, heads, key_dim, value_dim), saved_states, saved_u


@torch.library.custom_op("lmsleep::gated_delta_rule_native_backward", mutates_args=(), device_types="cpu")
def gated_delta_rule_native_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    saved_states: torch.Tensor, saved_u: torch.Tensor, grad_out: torch.Tensor, grad_final_state: torch.Tensor | None,
    scale: float, length: int, threads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of (q, k, v, g, beta, initial state) from those of out and the final state (None: zeros)."""
    return backward_blocks(_layout(q, k, v, g, beta), saved_states, saved_u, grad_out, grad_final_state, scale,
                           length, _ranges(q.shape[0] * q.shape[2], threads))


def backward_blocks(inputs, saved_states, saved_u, grad_out, grad_final_state, scale: float, length: int,
                    ranges: list[slice]) -> tuple:
    """The C backward over the (batch row, head) `ranges` (laid-out inputs q, k, v, g, beta): gradients of q, k,
    v, g, beta and the initial state. Shared by this op and the eager autograd Function (native.py)."""
    q, _, v, g, _ = inputs
    grad_out = grad_out.contiguous()
    if grad_final_state is not None:
        grad_final_state = grad_final_state.contiguous()
    grads = [q.new_empty(q.shape), q.new_empty(q.shape), v.new_empty(v.shape), g.new_empty(g.shape),
             g.new_empty(g.shape)]
    grad_initial = q.new_empty(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    map_blocks(lambda pairs: library.backward_range(
        inputs, saved_states, saved_u, grad_out, grad_final_state, grads, grad_initial, scale, length, pairs),
        ranges, "cpu")
    return (*grads, grad_initial)


@gated_delta_rule_native_backward.register_fake
def _(q, k, v, g, beta, saved_states, saved_u, grad_out, grad_final_state, scale, length, threads):
    return (q.new_empty(q.shape), q.new_empty(q.shape), v.new_empty(v.shape), g.new_empty(g.shape),
            g.new_empty(g.shape), q.new_empty(q.shape[0], q.shape[2], q.shape[3], v.shape[3]))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, g, beta, initial_state, scale, length, threads, keep = inputs
    _, _, saved_states, saved_u = output
    ctx.save_for_backward(q, k, v, g, beta, saved_states, saved_u)
    ctx.config = (scale, length, threads, keep, initial_state is not None)


def _backward(ctx, grad_out, grad_final_state, _grad_saved_states, _grad_saved_u):
    scale, length, threads, keep, has_initial_state = ctx.config
    if not keep:
        raise RuntimeError("lmsleep::gated_delta_rule_native: called with keep=False, so it kept nothing for a "
                           "backward; call it with keep=True when a gradient is needed")
    q, k, v, g, beta, saved_states, saved_u = ctx.saved_tensors
    if grad_out is None:
        grad_out = v.new_zeros(v.shape)
    *grads, grad_initial = gated_delta_rule_native_backward(
        q, k, v, g, beta, saved_states, saved_u, grad_out, grad_final_state, scale, length, threads)
    return (*grads, grad_initial if has_initial_state else None, None, None, None, None)


gated_delta_rule_native.register_autograd(_backward, setup_context=_setup_context)


def traced_chunk_gated_delta_rule(q, k, v, g, beta, scale: float, initial_state, chunk_size: int, threads: int,
                                  keep: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, final state) through the registered op: what `native.native_chunk_gated_delta_rule` runs while
    torch.compile or torch.export traces. keep: whether a gradient will be asked for."""
    _, length = chunking(q.shape[1], chunk_size)
    out, final_state, _, _ = gated_delta_rule_native(q, k, v, g, beta, initial_state, float(scale), length,
                                                     threads, keep)
    return out, final_state
