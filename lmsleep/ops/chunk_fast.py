"""CPU fast path for the gated delta rule: the chunked algorithm of `chunk.py` with a hand-written backward.

Computes what `chunk.chunk_gated_delta_rule` computes (so it matches the recurrent reference
`naive.recurrent_gated_delta_rule`), in the same notation. Per chunk of C tokens, with G = cumsum(g),
Γ = exp(G), D_ij = Γ_i / Γ_j for j ≤ i (0 above the diagonal) and S the state entering the chunk:

    A = (β·K Kᵀ) ⊙ D  (strict lower part)      T = (I + A)⁻¹
    U = T diag(β) (V − Γ·K S)                   (= u − w S with u = T β·V, w = T β·Γ·K)
    O = Γ·q S + P U,  P = (q Kᵀ) ⊙ D             S' = Γ_C S + (K · Γ_C/Γ)ᵀ U

Why it is faster on a CPU than autograd through `chunk.py` or transformers' torch path:
- one chunk (all batch·heads at once) is computed start to finish before the next, so temporaries are
  a few hundred KiB that stay in cache, instead of whole-sequence tensors streamed through memory;
- T is formed once by a triangular solve against I, so U is one matmul (u and w are never formed) and
  the backward needs no second solve: (I + A)⁻ᵀ is Tᵀ. K and q share a buffer, so [K; q] S is one
  matmul; in the backward dO and d(β·V) share one, for the same reason;
- the backward is written out (`_backward`), one chunk at a time from the last, from the saved S, S',
  U, T and P; it recomputes only elementwise quantities (D, Γ, the gathered chunk). Two identities keep
  it short: dA = −(Tᵀ dU) Uᵀ, and the gradient of the log-decays is dG_i = q_i·dq_i − k_i·dk_i +
  2 k_i·d(β·K)_i (+ ⟨S', dS'⟩ at the chunk's last token), read off gradients already computed rather
  than from row and column sums over C×C tensors;
- D is built with clamp + exp, never exp(−inf), which takes a slow path on CPU (about 15× slower).

It issues ~25 torch ops per chunk forward and ~45 backward, so short sequences with few heads are
dominated by per-op overhead, as for any eager implementation.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def _gather(x: torch.Tensor, span: slice) -> torch.Tensor:
    """[batch, time, heads, dim] → a new contiguous [batch·heads, L, dim] of the time span."""
    part = x[:, span].transpose(1, 2)
    return x.new_empty(part.shape).copy_(part).view(-1, *part.shape[2:])  # always a copy


def _scatter(dst: torch.Tensor, span: slice, x: torch.Tensor) -> None:
    """Write [batch·heads, L, dim] into dst[:, span], dst being [batch, time, heads, dim]."""
    batch, _, heads = dst.shape[:3]
    dst[:, span].copy_(x.view(batch, heads, *x.shape[1:]).transpose(1, 2))


class _Chunk:
    """The inputs of one chunk as [batch·heads, L, ·] tensors (fresh copies), with their decays."""

    def __init__(self, q, k, v, g, beta, span: slice, scale: float):
        self.span = span
        # Keys and scaled queries share one buffer, so that [K; q] S is a single matmul.
        keys, queries = k[:, span].transpose(1, 2), q[:, span].transpose(1, 2)  # [batch, heads, L, K]
        length = keys.shape[2]
        keys_queries = k.new_empty(*keys.shape[:2], 2 * length, keys.shape[3])
        keys_queries[:, :, :length].copy_(keys)
        torch.mul(queries, scale, out=keys_queries[:, :, length:])
        self.keys_queries = keys_queries.view(-1, 2 * length, keys.shape[3])
        self.k, self.q = self.keys_queries[:, :length], self.keys_queries[:, length:]
        self.v = _gather(v, span)
        self.beta = beta[:, span]  # [BH, L], a view
        log_decay = g[:, span].cumsum(-1)  # G, [BH, L]
        self.decay = log_decay.exp()  # Γ
        self.to_end = (log_decay[:, -1:] - log_decay).exp_()  # Γ_C / Γ
        self.chunk_decay = self.decay[:, -1, None, None]  # Γ_C, [BH, 1, 1]
        # D_ij = exp(G_i − G_j) for j ≤ i, 0 above the diagonal. Clamped before exp so the upper part
        # cannot overflow; not masked with −inf, as exp of −inf takes a slow path on CPU (≈ 15× slower).
        pairs = log_decay[:, :, None] - log_decay[:, None, :]
        self.pairs = pairs.clamp_(max=0).exp_().tril_()


def _forward(q, k, v, g, beta, scale, state, chunk_size, keep):
    """Scan over chunks; g, beta are [batch·heads, time], state [batch·heads, K, V]. Returns the output,
    the final state and, when `keep`, per chunk (S entering it, S leaving it, U, T, P) for the
    backward; without `keep` the state is updated in place."""
    time = q.shape[1]
    out = v.new_empty(v.shape)
    saved = []
    state = state.clone()  # the caller's tensor is neither updated in place nor held for the backward
    for start in range(0, time, chunk_size):
        c = _Chunk(q, k, v, g, beta, slice(start, min(start + chunk_size, time)), scale)
        length = c.k.shape[1]
        decay_col = c.decay[..., None]
        eye = torch.eye(length, dtype=q.dtype, device=q.device).expand(c.k.shape[0], length, length)
        system = torch.matmul(c.k * c.beta[..., None], c.k.mT).mul_(c.pairs)  # A (strict lower part read)
        inverse = torch.linalg.solve_triangular(system, eye, upper=False, unitriangular=True)  # T
        intra = torch.matmul(c.q, c.k.mT).mul_(c.pairs)  # P
        keys_queries_state = torch.matmul(c.keys_queries, state)  # [K S; q S]
        k_state, q_state = keys_queries_state[:, :length], keys_queries_state[:, length:]
        # U = u − w S = T diag(β) (V − Γ·K S): one matmul, u and w are never formed.
        residual = torch.addcmul(c.v, k_state, decay_col, value=-1)  # V − Γ·K S
        pseudo_values = torch.matmul(inverse * c.beta[:, None, :], residual)
        o = q_state.mul_(decay_col).baddbmm_(intra, pseudo_values)  # O = Γ·q S + P U
        _scatter(out, c.span, o)
        k_to_end = c.k.mul_(c.to_end[..., None])
        if keep:
            new_state = torch.mul(state, c.chunk_decay).baddbmm_(k_to_end.mT, pseudo_values)
            saved.append((state, new_state, pseudo_values, inverse, intra))
            state = new_state
        else:
            state.mul_(c.chunk_decay).baddbmm_(k_to_end.mT, pseudo_values)
    return out, state, saved


def _backward(grad_out, grad_state, q, k, v, g, beta, scale, chunk_size, saved):
    """Gradients of `_forward` for q, k, v, g, beta ([batch·heads, time] for g, beta) and the initial
    state, given those of the output and of the final state; one chunk at a time from the last."""
    time = q.shape[1]
    grad_state = grad_state.clone()  # updated in place below
    grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    grad_g, grad_beta = torch.empty_like(g), torch.empty_like(beta)
    starts = range(0, time, chunk_size)
    batch, _, heads, value_dim = v.shape
    for start, chunk_saved in zip(reversed(starts), reversed(saved)):
        state, next_state, pseudo_values, inverse, intra = chunk_saved
        c = _Chunk(q, k, v, g, beta, slice(start, min(start + chunk_size, time)), scale)
        length = c.k.shape[1]
        beta_col, decay_col, to_end_col = c.beta[..., None], c.decay[..., None], c.to_end[..., None]
        # dO and d(β·V) meet the same right factors (Sᵀ, Uᵀ) below, so they share one buffer.
        grads_ov = v.new_empty(batch, heads, 2 * length, value_dim)
        grads_ov[:, :, :length].copy_(grad_out[:, c.span].transpose(1, 2))
        grads_ov = grads_ov.view(-1, 2 * length, value_dim)
        grad_o, grad_v_beta = grads_ov[:, :length], grads_ov[:, length:]

        # The scan step S' = Γ_C S + (K Γ_C/Γ)ᵀ U, O = Γ·q S + P U, U = T diag(β) (V − Γ·K S), read as
        # U = u − w S with u = T β·V, w = T β·Γ·K. Backwards: du = dU, d(β·V) = Tᵀ dU,
        # d(β·Γ·K) = Tᵀ dw = −d(β·V) Sᵀ, and dA = −d(β·V) uᵀ − d(β·Γ·K) wᵀ = −d(β·V) Uᵀ.
        grad_pseudo = torch.matmul(intra.mT, grad_o).baddbmm_(c.k * to_end_col, grad_state)  # dU
        grad_v_beta.copy_(torch.matmul(inverse.mT, grad_pseudo))
        grad_k_chunk = torch.matmul(pseudo_values, grad_state.mT)  # d(K Γ_C/Γ)
        # Every decay inside the chunk also scales S', so G_C gets ⟨S', dS'⟩ in all (see dG below).
        grad_last = torch.linalg.vecdot(next_state.flatten(1), grad_state.flatten(1))
        # dS = Γ_C dS' + (Γ·q)ᵀ dO − (β·Γ·K)ᵀ d(β·V), one matmul over the stacked rows.
        left = k.new_empty(grads_ov.shape[0], 2 * length, k.shape[-1])
        torch.mul(c.q, decay_col, out=left[:, :length])
        torch.mul(c.k, -(beta_col * decay_col), out=left[:, length:])
        grad_state.mul_(c.chunk_decay).baddbmm_(left.mT, grads_ov)

        ov_state = torch.matmul(grads_ov, state.mT)  # [d(Γ·q); −d(β·Γ·K)]
        pair_grads = torch.matmul(grads_ov, pseudo_values.mT)  # [dP; −dA], then ⊙ D
        pair_grads.view(-1, 2, length, length).mul_(c.pairs[:, None])
        pair_grads[:, length:].diagonal(dim1=-2, dim2=-1).zero_()  # A is used on its strict lower part
        grad_intra, neg_grad_system = pair_grads[:, :length], pair_grads[:, length:]
        pairs_k = torch.matmul(pair_grads, c.k)  # [(dP ⊙ D) K; −(dA ⊙ D) K]
        grad_q_chunk = ov_state[:, :length].mul_(decay_col).add_(pairs_k[:, :length])  # d(scaled q)
        # W = −d(β·K)/β, through β·Γ·K and through A's rows.
        neg_grad_k_beta = pairs_k[:, length:].addcmul_(ov_state[:, length:], decay_col)
        grad_k_chunk.mul_(to_end_col).add_(torch.matmul(grad_intra.mT, c.q))
        grad_k_chunk.baddbmm_(neg_grad_system.mT, c.k * beta_col, alpha=-1)  # (dA ⊙ D)ᵀ β·K
        grad_k_chunk.addcmul_(neg_grad_k_beta, beta_col, value=-1)

        grad_beta_k = torch.linalg.vecdot(c.k, neg_grad_k_beta).neg_()
        grad_beta[:, c.span] = torch.linalg.vecdot(grad_v_beta, c.v) + grad_beta_k
        _scatter(grad_v, c.span, grad_v_beta * beta_col)
        # dG_i = q_i·dq_i − k_i·dk_i + 2 β_i k_i·d(β·K)_i/β_i (every factor exp(G_i − G_j) pairs a row at i
        # with a column at j), plus ⟨S', dS'⟩ at the chunk's last token.
        grad_log_decay = torch.linalg.vecdot(c.q, grad_q_chunk) - torch.linalg.vecdot(c.k, grad_k_chunk)
        grad_log_decay.addcmul_(c.beta, grad_beta_k, value=2)
        grad_log_decay[:, -1] += grad_last
        grad_g[:, c.span] = grad_log_decay.flip(-1).cumsum(-1).flip(-1)
        _scatter(grad_q, c.span, grad_q_chunk.mul_(scale))
        _scatter(grad_k, c.span, grad_k_chunk)
    return grad_q, grad_k, grad_v, grad_g, grad_beta, grad_state


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    """[batch, time, heads] → contiguous [batch·heads, time]."""
    return x.transpose(1, 2).reshape(-1, x.shape[1])


def _time_second(x: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """[batch·heads, time] → [batch, time, heads]."""
    return x.view(batch, heads, -1).transpose(1, 2)


class _ChunkGatedDeltaRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, beta, initial_state, scale, chunk_size):
        batch, time, heads, key_dim = q.shape
        value_dim = v.shape[-1]
        g_bh, beta_bh = _heads_first(g), _heads_first(beta)
        if initial_state is None:
            state = q.new_zeros(batch * heads, key_dim, value_dim)
        else:
            state = initial_state.reshape(batch * heads, key_dim, value_dim)
        keep = any(ctx.needs_input_grad[:6])
        out, state, saved = _forward(q, k, v, g_bh, beta_bh, scale, state, chunk_size, keep)
        ctx.save_for_backward(q, k, v, g_bh, beta_bh)
        ctx.saved_chunks = saved  # intermediates, not inputs or outputs: safe to hold on ctx
        ctx.config = (scale, chunk_size, initial_state is not None)
        return out, state.view(batch, heads, key_dim, value_dim)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_final_state):
        q, k, v, g_bh, beta_bh = ctx.saved_tensors
        scale, chunk_size, has_initial_state = ctx.config
        batch, time, heads, key_dim = q.shape
        value_dim = v.shape[-1]
        if grad_out is None:
            grad_out = v.new_zeros(v.shape)
        if grad_final_state is None:
            grad_final_state = v.new_zeros(batch * heads, key_dim, value_dim)
        else:
            grad_final_state = grad_final_state.reshape(batch * heads, key_dim, value_dim)
        grad_q, grad_k, grad_v, grad_g, grad_beta, grad_state = _backward(
            grad_out, grad_final_state, q, k, v, g_bh, beta_bh, scale, chunk_size, ctx.saved_chunks
        )
        grad_initial = grad_state.view(batch, heads, key_dim, value_dim) if has_initial_state else None
        return (
            grad_q, grad_k, grad_v,
            _time_second(grad_g, batch, heads), _time_second(grad_beta, batch, heads),
            grad_initial, None, None,
        )


def fast_chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same arguments and result as `chunk.chunk_gated_delta_rule`; differentiable in every tensor argument.

    q, k: [batch, time, heads, K]; v: [batch, time, heads, V]; g, beta: [batch, time, heads];
    initial_state: [batch, heads, K, V] or None (zeros). Returns (out [batch, time, heads, V], final state).
    """
    return _ChunkGatedDeltaRule.apply(q, k, v, g, beta, initial_state, scale, chunk_size)
