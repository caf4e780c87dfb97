"""The public entry point of the fast-weight op: checks its inputs and picks the implementation (backend).

Same calling convention as flash-linear-attention's `chunk_gated_delta_rule`, so the two can be swapped:
tensors are [batch, time, heads, dim]; q and k are used as given (the layer L2-normalises them).

Backends, each in a file of its own beside this one and each tested against the reference:

    "reference"  naive.py       the recurrence token by token, the spec's equation (slow, obviously right)
    "chunk"      chunk.py       the readable chunked algorithm, autograd through torch ops
    "torch"      chunk_fast.py  the chunked algorithm in torch ops with a hand-written backward
    "native"     native.py      the same in C (library.py builds csrc/ on first use): float32 on a CPU only
    "fla"        fla.py         flash-linear-attention's Triton kernel: CUDA only, when fla is installed
    "auto"       the default; `auto_backend` says what it picks, in this order:
                 fla for CUDA tensors when fla is installed; the reference for one token (streaming: the
                 recurrence is a handful of small ops); native when the op is computed in float32 on a CPU,
                 the library builds (not with LMSLEEP_NATIVE=0) and it measured no slower than the torch
                 path on this machine (`choice.py`: timed once, kept beside the build); the torch path
                 otherwise. `choice.reason()` says which, and why.
"""
from __future__ import annotations

import torch

from . import choice, fla, native
from .chunk import CHUNK_SIZE, chunk_gated_delta_rule
from .chunk_fast import fast_chunk_gated_delta_rule
from .naive import recurrent_gated_delta_rule

BACKENDS = ("auto", "reference", "chunk", "torch", "native", "fla")
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


def _check_one_dtype(q, k, v, g, beta) -> None:
    dtypes = {x.dtype for x in (q, k, v, g, beta)}
    if len(dtypes) != 1:
        raise TypeError(f"gated_delta_rule: q, k, v, g, beta must share one dtype, got {sorted(map(str, dtypes))}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half precision is computed in float32; float32 and float64 as given (fla excepted: it takes the
    inputs as they are)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _backend_name(backend, reference) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"gated_delta_rule: backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if reference:
        if backend not in ("auto", "reference"):
            raise ValueError(f"gated_delta_rule: reference=True asks for the reference, but backend={backend!r}")
        return "reference"
    return backend


def auto_backend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    *,
    allow_fla: bool = True,
) -> str:
    """The backend `gated_delta_rule(..., backend="auto")` runs for these tensors (see the module's docstring
    for the order). allow_fla=False: the choice with fla left out (what a layer with use_fla off runs)."""
    tensors = (q, k, v, g, beta, initial_state)
    if allow_fla and fla.unavailable_reason(*tensors) is None:
        return "fla"
    if q.shape[1] == 1:
        return "reference"
    if native.unavailable_reason(*tensors, dtype=_compute_dtype(q.dtype)) is None and choice.prefers_native():
        return "native"
    return "torch"


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
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule  S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,  o_t = scale · S_tᵀ q_t.

    Args:
        q, k: [batch, time, heads, K]; v: [batch, time, heads, V] (K ≠ V allowed).
        g: log-decay log α_t ≤ 0, [batch, time, heads]. beta: write strength β_t, [batch, time, heads].
        scale: query scale, default K^-1/2. initial_state: [batch, heads, K, V] or None (zeros).
        output_final_state: also return the state after the last token.
        chunk_size: at most this many tokens are solved together by a chunked backend, which cuts the
            sequence into ⌈T / chunk_size⌉ chunks of equal length; any time length works. None picks each
            backend's default: what is fastest on a CPU for the native op (16, or 64 for K > 64 with a
            gradient) and the torch path (32 for K ≤ 64, 64 above), 64 for "chunk". Results differ only
            by rounding. The reference ignores it, and so does fla (its kernel fixes its own).
        reference: run the token-by-token reference (the same as backend="reference").
        backend: which implementation runs, one of BACKENDS (see the module's docstring); "auto" picks
            (`auto_backend`). "native" or "fla" where they cannot run is a RuntimeError saying why.
    Returns:
        (out [batch, time, heads, V] in the input dtype, final state [batch, heads, K, V] or None).
    Half-precision inputs are computed in float32; float32 and float64 are computed as given. fla takes
    the inputs as they are (its kernel has its own precision rules), and they need not share one dtype.
    An empty sequence (time 0) returns zeros and the initial state, whichever backend is named.
    """
    _check_inputs(q, k, v, g, beta, initial_state, chunk_size)
    backend = _backend_name(backend, reference)
    if backend == "auto":
        backend = auto_backend(q, k, v, g, beta, initial_state)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if backend == "fla":
        reason = fla.unavailable_reason(q, k, v, g, beta, initial_state)
        if reason is not None:
            raise RuntimeError(f"gated_delta_rule: backend='fla' cannot run: {reason}")
        if q.shape[1] > 0:
            return fla.fla_chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state)
    else:
        _check_one_dtype(q, k, v, g, beta)
    in_dtype = q.dtype
    compute_dtype = _compute_dtype(in_dtype) if backend != "fla" else in_dtype
    q, k, v, g, beta = (x.to(compute_dtype) for x in (q, k, v, g, beta))
    if initial_state is not None:
        initial_state = initial_state.to(compute_dtype)
    if backend == "native" and (reason := native.unavailable_reason(q, k, v, g, beta, initial_state)) is not None:
        raise RuntimeError(f"gated_delta_rule: backend='native' cannot run: {reason}")
    if q.shape[1] == 0:
        out = v.new_zeros(v.shape)
        state = initial_state if initial_state is not None else q.new_zeros(
            q.shape[0], q.shape[2], q.shape[3], v.shape[3]
        )
    elif backend == "reference":
        out, state = recurrent_gated_delta_rule(q, k, v, g, beta, scale, initial_state)
    elif backend == "chunk":
        out, state = chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, chunk_size or CHUNK_SIZE)
    elif backend == "native":
        out, state = native.native_chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, chunk_size)
    else:
        assert backend == "torch", backend
        out, state = fast_chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, chunk_size)
    return out.to(in_dtype), (state if output_final_state else None)
