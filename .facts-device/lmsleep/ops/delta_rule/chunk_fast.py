"""Fast path in torch ops for the gated delta rule (tuned on CPUs): the chunked algorithm of `chunk.py` with a
hand-written backward.

Computes what `chunk.chunk_gated_delta_rule` computes (so it matches the recurrent reference
`naive.recurrent_gated_delta_rule`), in the same notation. Per chunk of C tokens, with G = cumsum(g),
Γ = exp(G), D_ij = Γ_i / Γ_j for j ≤ i (0 above the diagonal) and S the state entering the chunk:

    A = (β·K Kᵀ) ⊙ D  (strict lower part)      T = (I + A)⁻¹
    U = T diag(β) (V − Γ·K S)                   (= u − w S with u = T β·V, w = T β·Γ·K)
    O = Γ·q S + P U,  P = (q Kᵀ) ⊙ D             S' = Γ_C S + (K · Γ_C/Γ)ᵀ U

Why it is faster on a CPU than autograd through `chunk.py` or transformers' torch path:
- the inputs are laid out once as [chunk, batch·heads, C, dim] (zero-padded to whole chunks, which
  changes nothing: a padded token has k = v = q = 0, β = 0 and g = 0), so every chunk is a contiguous
  block and nothing is gathered or scattered per chunk;
- everything that does not depend on S (D, A, T, P, T diag(β), the decays) is computed for a group of
  chunks at once (about GROUP_ELEMENTS values per tensor, so temporaries stay in cache), in a few
  batched ops; only the scan itself (4 matmuls per chunk forward, 2 backward) runs chunk by chunk;
- T is formed once by a triangular solve against I, so U is one matmul (u and w are never formed in
  the forward) and the backward needs no second solve: (I + A)⁻ᵀ is Tᵀ. K and q share a buffer, so
  [K; q] S is one matmul; in the backward dO and d(β·V) share one, for the same reason;
- the backward is written out: a scan from the last chunk for dS (dU = Pᵀ dO + (K Γ_C/Γ) dS',
  dS = Γ_C dS' + (Γ·q)ᵀ dO − wᵀ dU), then every other gradient for the group at once from the saved
  S, U, T and P. Two identities keep it short: dA = −(Tᵀ dU) Uᵀ, and the gradient of the log-decays is
  dG_i = q_i·dq_i − k_i·dk_i + 2 k_i·d(β·K)_i (+ ⟨S', dS'⟩ at the chunk's last token), read off
  gradients already computed rather than from row and column sums over C×C tensors;
- D is built with clamp + exp, never exp(−inf), which takes a slow path on CPU (about 15× slower);
- the query scale is applied while q is laid out (and to dq while it is written back), not in a pass
  of its own;
- rows of the batch (or heads) never interact, so large inputs are cut into blocks run side by side on
  threads of their own (`threads`, default torch.get_num_threads()). Measured on 2 cores: a gain at
  (4, 2048, 8, 128), none at (16, 384, 4, 64), a loss for the small windows of training, hence
  SPLIT_MIN_ELEMENTS.

The native op (`native.py`) is the same algorithm and backward in C, one (batch row, head) at a time in
cache; the dispatcher (`dispatch.py`) picks it over this path for float32 on a CPU where it builds.

`chunk_size` is an upper bound (`common.chunking`). Results differ from other chunk sizes only by rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .common import chunking, even_slices, map_blocks, thread_count


def _to_chunks(
    x: torch.Tensor, chunks: int, length: int, out: torch.Tensor | None = None, scale: float | None = None
) -> torch.Tensor:
    """[batch, time, heads, (dim)] → [chunks, batch·heads, length, (dim)], zero-padded at the end of time,
    times `scale` if given (in the same pass). Written into `out` (a view of that shape) when given."""
    batch, time, heads = x.shape[:3]
    tail = x.shape[3:]
    if chunks * length != time:
        x = F.pad(x, (0, 0) * (len(tail) + 1) + (0, chunks * length - time))
    blocked = x.view(batch, chunks, length, heads, *tail).transpose(0, 1).transpose(2, 3)
    if out is None:
        out = x.new_empty(chunks, batch * heads, length, *tail)
    if scale is None:
        out.view(chunks, batch, heads, length, *tail).copy_(blocked)
    else:
        torch.mul(blocked, scale, out=out.view(chunks, batch, heads, length, *tail))
    return out


def _from_chunks(x: torch.Tensor, out: torch.Tensor, scale: float | None = None) -> None:
    """Write [chunks, batch·heads, length, (dim)] (times `scale` if given) into `out` [batch, time, heads, (dim)]
    (time ≤ chunks·length)."""
    chunks, _, length = x.shape[:3]
    batch, time, heads = out.shape[:3]
    blocked = x.view(chunks, batch, heads, length, *x.shape[3:]).transpose(2, 3).transpose(0, 1)
    full = (time // length) * length  # tokens in whole chunks
    pieces = []
    if full:
        pieces.append((out[:, :full].view(batch, full // length, length, heads, *x.shape[3:]), blocked[:, : full // length]))
    if full < time:
        pieces.append((out[:, full:], blocked[:, -1, : time - full]))
    for target, source in pieces:
        if scale is None:
            target.copy_(source)
        else:
            torch.mul(source, scale, out=target)


class _Chunks:
    """Everything of the forward that does not depend on the state, for the chunks of one group at once.
    Shapes: [chunks, batch·heads, C, ·] (C×C for the pair matrices), [chunks, batch·heads, C] for vectors."""

    def __init__(self, q, k, v, g, beta, scale: float, length: int):
        batch, time, heads, key_dim = q.shape
        chunks = -(-time // length)
        self.length = length
        # Keys then scaled queries share one buffer per chunk, so that [K; q] S is a single matmul.
        self.keys_queries = q.new_empty(chunks, batch * heads, 2 * length, key_dim)
        _to_chunks(k, chunks, length, self.keys_queries[:, :, :length])
        _to_chunks(q, chunks, length, self.keys_queries[:, :, length:], scale)
        self.k, self.q = self.keys_queries[:, :, :length], self.keys_queries[:, :, length:]
        self.v = _to_chunks(v, chunks, length)
        self.beta = _to_chunks(beta, chunks, length)
        log_decay = _to_chunks(g, chunks, length).cumsum(-1)  # G
        self.decay = log_decay.exp()  # Γ
        self.to_end = (log_decay[..., -1:] - log_decay).exp_()  # Γ_C / Γ
        self.chunk_decay = self.decay[..., -1, None, None]  # Γ_C, [chunks, batch·heads, 1, 1]
        # D_ij = exp(G_i − G_j) for j ≤ i, 0 above the diagonal. Clamped before exp so the upper part
        # cannot overflow; not masked with −inf, as exp of −inf takes a slow path on CPU (≈ 15× slower).
        pairs = log_decay[..., :, None] - log_decay[..., None, :]
        self.pairs = pairs.clamp_(max=0).exp_().tril_()
        products = torch.matmul(self.keys_queries, self.k.mT)  # [K Kᵀ; q Kᵀ]
        products[:, :, :length].mul_(self.beta[..., None])
        products.view(chunks, -1, 2, length, length).mul_(self.pairs.unsqueeze(2))
        system, self.intra = products[:, :, :length], products[:, :, length:]  # A (strict lower part), P
        eye = torch.eye(length, dtype=q.dtype, device=q.device).expand_as(system)
        # Into a row-major buffer: left to itself, the solve returns T column-major, ≈ 2× slower in all.
        self.inverse = torch.linalg.solve_triangular(  # T
            system, eye, upper=False, unitriangular=True, out=system.new_empty(system.shape))
        self.inverse_beta = self.inverse * self.beta[..., None, :]  # T diag(β)
        self.k_to_end = self.k * self.to_end[..., None]  # K Γ_C/Γ


def _forward(c: _Chunks, state: torch.Tensor, keep: bool):
    """The scan over chunks from `state` [batch·heads, K, V]. Returns the output [chunks, batch·heads, C, V],
    the final state and, when `keep`, (the states entering each chunk and the last, [chunks + 1, ...], U)."""
    chunks, length = c.v.shape[0], c.length
    out = c.v.new_empty(c.v.shape)
    if keep:
        states = state.new_empty(chunks + 1, *state.shape)
        states[0] = state
        pseudo_values = c.v.new_empty(c.v.shape)
    else:
        state = state.clone()  # updated in place below; the caller's tensor is left alone
    for i in range(chunks):
        if keep:
            state = states[i]
        keys_queries_state = torch.matmul(c.keys_queries[i], state)  # [K S; q S]
        k_state, q_state = keys_queries_state[:, :length], keys_queries_state[:, length:]
        # U = u − w S = T diag(β) (V − Γ·K S): one matmul, u and w are never formed.
        residual = torch.addcmul(c.v[i], k_state, c.decay[i, ..., None], value=-1)  # V − Γ·K S
        u_out = pseudo_values[i] if keep else None
        pseudo = torch.matmul(c.inverse_beta[i], residual, out=u_out)
        torch.baddbmm(q_state.mul_(c.decay[i, ..., None]), c.intra[i], pseudo, out=out[i])  # O = Γ·q S + P U
        if keep:
            torch.baddbmm(state * c.chunk_decay[i], c.k_to_end[i].mT, pseudo, out=states[i + 1])
        else:
            state.mul_(c.chunk_decay[i]).baddbmm_(c.k_to_end[i].mT, pseudo)
    if keep:
        return out, states[-1], (states, pseudo_values)
    return out, state, None


def _backward(c: _Chunks, saved, grad_out, grad_state):
    """Gradients of `_forward`: given dO [batch, time, heads, V] and dS of the final state
    [batch·heads, K, V], those of q·scale, k, v, g, beta (chunked layout) and the initial state."""
    states, pseudo_values = saved
    chunks, length = c.v.shape[0], c.length
    # dO and d(β·V) meet the same right factors (Sᵀ, Uᵀ) below, so they share one buffer.
    grads_ov = grad_out.new_empty(chunks, c.v.shape[1], 2 * length, c.v.shape[-1])
    _to_chunks(grad_out, chunks, length, grads_ov[:, :, :length])
    grad_o, grad_v_beta = grads_ov[:, :, :length], grads_ov[:, :, length:]

    # The scan backwards, read with U = u − w S (u = T β·V, w = T β·Γ·K): du = dU = Pᵀ dO + (K Γ_C/Γ) dS',
    # dS = Γ_C dS' + (Γ·q)ᵀ dO − wᵀ dU. Only the dS' terms depend on the scan.
    grad_pseudo = torch.matmul(c.intra.mT, grad_o)  # Pᵀ dO, then dU
    scaled_queries = c.q * c.decay[..., None]  # Γ·q
    grad_state_from_out = torch.matmul(scaled_queries.mT, grad_o)  # (Γ·q)ᵀ dO
    w = torch.matmul(c.inverse_beta, c.k * c.decay[..., None])  # w = T β·Γ·K
    grad_states = torch.empty_like(states)  # dS entering each chunk, then dS' of the last
    grad_states[-1] = grad_state
    for i in reversed(range(chunks)):
        grad_pseudo[i].baddbmm_(c.k_to_end[i], grad_states[i + 1])
        torch.addcmul(grad_state_from_out[i], grad_states[i + 1], c.chunk_decay[i], out=grad_states[i])
        grad_states[i].baddbmm_(w[i].mT, grad_pseudo[i], alpha=-1)
    grad_next_states = grad_states[1:]  # dS' of each chunk

    # Everything else, for all chunks at once (dA = −d(β·V) Uᵀ, d(β·Γ·K) = −d(β·V) Sᵀ).
    grad_v_beta.copy_(torch.matmul(c.inverse.mT, grad_pseudo))  # d(β·V) = Tᵀ dU
    beta_col, decay_col, to_end_col = c.beta[..., None], c.decay[..., None], c.to_end[..., None]
    entering, leaving = states[:-1], states[1:]
    grad_k = torch.matmul(pseudo_values, grad_next_states.mT).mul_(to_end_col)  # through K Γ_C/Γ
    # Every decay inside the chunk also scales S', so G_C gets ⟨S', dS'⟩ in all (see dG below).
    grad_last = torch.linalg.vecdot(leaving.flatten(2), grad_next_states.flatten(2))
    ov_state = torch.matmul(grads_ov, entering.mT)  # [d(Γ·q); −d(β·Γ·K)]
    pair_grads = torch.matmul(grads_ov, pseudo_values.mT)  # [dP; −dA], then ⊙ D
    pair_grads.view(chunks, -1, 2, length, length).mul_(c.pairs.unsqueeze(2))
    pair_grads[:, :, length:].diagonal(dim1=-2, dim2=-1).zero_()  # A is used on its strict lower part
    grad_intra, neg_grad_system = pair_grads[:, :, :length], pair_grads[:, :, length:]
    pairs_k = torch.matmul(pair_grads, c.k)  # [(dP ⊙ D) K; −(dA ⊙ D) K]
    grad_q = ov_state[:, :, :length].mul_(decay_col).add_(pairs_k[:, :, :length])  # d(scaled q)
    # W = −d(β·K)/β, through β·Γ·K and through A's rows.
    neg_grad_k_beta = pairs_k[:, :, length:].addcmul_(ov_state[:, :, length:], decay_col)
    grad_k.add_(torch.matmul(grad_intra.mT, c.q))
    grad_k.sub_(torch.matmul(neg_grad_system.mT, c.k * beta_col))  # (dA ⊙ D)ᵀ β·K
    grad_k.addcmul_(neg_grad_k_beta, beta_col, value=-1)

    grad_beta_k = torch.linalg.vecdot(c.k, neg_grad_k_beta).neg_()
    grad_beta = torch.linalg.vecdot(grad_v_beta, c.v).add_(grad_beta_k)
    grad_v = grad_v_beta * beta_col
    # dG_i = q_i·dq_i − k_i·dk_i + 2 β_i k_i·d(β·K)_i/β_i (every factor exp(G_i − G_j) pairs a row at i
    # with a column at j), plus ⟨S', dS'⟩ at the chunk's last token.
    grad_log_decay = (c.q * grad_q).addcmul_(c.k, grad_k, value=-1).sum(-1)  # q·dq − k·dk in one pass
    grad_log_decay.addcmul_(c.beta, grad_beta_k, value=2)
    grad_log_decay[..., -1] += grad_last
    grad_g = grad_log_decay.flip(-1).cumsum(-1).flip(-1)
    return grad_q, grad_k, grad_v, grad_g, grad_beta, grad_states[0]


GROUP_ELEMENTS = 2**19  # chunks are laid out and solved together in groups of about this many values
SPLIT_MIN_ELEMENTS = 2**20  # below this many values in q, the op runs on the calling thread alone


def _blocks(batch: int, heads: int, threads: int) -> list[tuple[slice, slice]]:
    """Independent (batch rows, heads) blocks, one per thread: the batch is split when it has at least as
    many rows as there are threads (or as heads), else the heads."""
    if batch >= threads or batch >= heads:
        return [(rows, slice(None)) for rows in even_slices(batch, threads)]
    return [(slice(None), cols) for cols in even_slices(heads, threads)]


def _forward_block(q, k, v, g, beta, state, scale: float, chunk_size: int, keep: bool, out):
    """The forward of one independent block of (batch rows, heads), group by group along time: writes `out`
    and returns the final state [rows·heads, K, V] and, when `keep`, what the backward needs."""
    batch, time, heads, key_dim = q.shape
    _, length = chunking(time, chunk_size)
    group = max(1, GROUP_ELEMENTS // (batch * heads * length * max(key_dim, v.shape[-1]))) * length
    saved = []
    for start in range(0, time, group):
        span = slice(start, min(start + group, time))
        chunked = _Chunks(q[:, span], k[:, span], v[:, span], g[:, span], beta[:, span], scale, length)
        chunk_out, state, scan = _forward(chunked, state, keep)
        _from_chunks(chunk_out, out[:, span])
        if keep:
            saved.append((span, chunked, scan))
    return state, saved


def _backward_block(saved, scale: float, grad_out, grad_state, grads_out) -> torch.Tensor:
    """The backward of one block: writes the gradients of (q, k, v, g, beta) into `grads_out` and returns
    that of the block's initial state [rows·heads, K, V]."""
    for span, chunked, scan in reversed(saved):
        *grads, grad_state = _backward(chunked, scan, grad_out[:, span], grad_state)
        for grad, whole, factor in zip(grads, grads_out, (scale, None, None, None, None)):
            _from_chunks(grad, whole[:, span], factor)  # the first is that of the scaled queries
    return grad_state


class _ChunkGatedDeltaRule(torch.autograd.Function):
    """Groups of whole chunks (a [group, batch·heads, C, dim] block holds ≈ GROUP_ELEMENTS values, so the
    temporaries of a group stay in cache and no large buffer is allocated and first touched per call).
    Rows of the batch (or heads) never interact, so they are cut into `threads` blocks, each run on a
    thread of its own (a gain for large inputs, where torch's own spreading of each op leaves cores idle)."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, initial_state, scale, chunk_size, threads):
        batch, time, heads, key_dim = q.shape
        value_dim = v.shape[-1]
        blocks = _blocks(batch, heads, threads)
        keep = any(ctx.needs_input_grad[:6])
        out = v.new_empty(v.shape)
        final_state = q.new_empty(batch, heads, key_dim, value_dim)

        def run(block):
            rows, cols = block
            if initial_state is None:
                state = q.new_zeros(final_state[rows, cols].flatten(0, 1).shape)
            else:
                state = initial_state[rows, cols].reshape(-1, key_dim, value_dim)
            pieces = (x[rows, :, cols] for x in (q, k, v, g, beta))
            state, saved = _forward_block(*pieces, state, scale, chunk_size, keep, out[rows, :, cols])
            final_state[rows, cols] = state.view(final_state[rows, cols].shape)
            return saved

        saved = map_blocks(run, blocks, q.device.type)
        if keep:  # intermediates, not inputs or outputs: safe to hold on ctx
            ctx.saved_blocks = list(zip(blocks, saved))
        ctx.config = (scale, q.shape, v.shape, q.dtype, initial_state is not None)
        return out, final_state

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_final_state):
        scale, key_shape, value_shape, dtype, has_initial_state = ctx.config
        batch, _, heads, key_dim = key_shape
        state_shape = (batch, heads, key_dim, value_shape[-1])
        if grad_out is None:
            grad_out = torch.zeros(value_shape, dtype=dtype)
        if grad_final_state is None:
            grad_final_state = grad_out.new_zeros(state_shape)
        grads = [grad_out.new_empty(shape) for shape in (key_shape, key_shape, value_shape)]
        grads += [grad_out.new_empty(key_shape[:3]), grad_out.new_empty(key_shape[:3])]
        grad_initial = grad_out.new_empty(state_shape)

        def run(block_and_saved):
            (rows, cols), saved = block_and_saved
            grad_state = grad_final_state[rows, cols].reshape(-1, *state_shape[2:])  # read, never written
            grads_out = [x[rows, :, cols] for x in grads]
            grad_state = _backward_block(saved, scale, grad_out[rows, :, cols], grad_state, grads_out)
            grad_initial[rows, cols] = grad_state.view(grad_initial[rows, cols].shape)

        map_blocks(run, ctx.saved_blocks, grad_out.device.type)
        return (*grads, grad_initial if has_initial_state else None, None, None, None)


def default_chunk_size(key_dim: int) -> int:
    """What measured fastest on 2 cores: 32 for K ≤ 64, 64 above."""
    return 32 if key_dim <= 64 else 64


def fast_chunk_gated_delta_rule(
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
    """Same arguments and result as `chunk.chunk_gated_delta_rule`; differentiable in every tensor argument.
    Runs in torch ops whatever the dtype or device (the dispatcher decides when the native op runs instead).

    q, k: [batch, time, heads, K]; v: [batch, time, heads, V]; g, beta: [batch, time, heads];
    initial_state: [batch, heads, K, V] or None (zeros). Returns (out [batch, time, heads, V], final state).
    chunk_size: None picks what measured fastest (`default_chunk_size`).
    threads: how many blocks of (batch rows, heads) run side by side on threads of their own; None is
    torch.get_num_threads() (so `torch.set_num_threads` governs it), or 1 for inputs under
    SPLIT_MIN_ELEMENTS values, where starting threads costs more than it saves.
    """
    threads = thread_count(threads, q.numel(), SPLIT_MIN_ELEMENTS, "fast_chunk_gated_delta_rule")
    if chunk_size is None:  # results differ only by rounding
        chunk_size = default_chunk_size(q.shape[-1])
    return _ChunkGatedDeltaRule.apply(q, k, v, g, beta, initial_state, scale, chunk_size, threads)
