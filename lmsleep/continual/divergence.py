"""Token-level divergences F(teacher ‖ student) between next-token distributions, for knowledge seeding's
distillation (spec: Sleep stage 1, step 4). They follow TRL's `GKDTrainer.generalized_jsd_loss`
convention (GKD, Agarwal et al. 2024, arXiv 2306.13649) so that β means what it means there.

At one position, with T = softmax(teacher_logits / τ) and S = softmax(student_logits / τ) over the vocabulary:

    β = 0        forward KL   KL(T ‖ S) = Σ_v T_v · (log T_v − log S_v)      mass-covering
    β = 1        reverse KL   KL(S ‖ T) = Σ_v S_v · (log S_v − log T_v)      mode-seeking (the spec's default)
    0 < β < 1    JSD(β) = β · KL(T ‖ M) + (1 − β) · KL(S ‖ M),   M = β · T + (1 − β) · S

The teacher's term around the mixture is weighted by β and the student's by 1 − β, as in TRL and the GKD
paper. JSD(β) itself vanishes at both ends (M collapses onto S as β → 0 and onto T as β → 1; near the ends
JSD(β) ≈ β · KL(T ‖ S) and ≈ (1 − β) · KL(S ‖ T)), so evaluating the mixture formula at β = 0 or 1 gives a
loss that is identically zero. The endpoints are therefore the two KLs themselves, as TRL computes them:
the family is continuous in direction but not in scale at its ends. τ divides the logits before the
softmax and the loss is not rescaled by τ² (TRL does not rescale either).

Everything is computed in log space (log_softmax; the mixture by logaddexp), in at least float32. A
vocabulary entry with probability exactly 0 (a logit of -inf, e.g. a top-k-filtered teacher) contributes
0 to the KL it weights, by the convention 0 · log 0 = 0. The teacher is detached: gradient flows only into
the student.
"""
from __future__ import annotations

import math

import torch

from lmsleep import validate

REDUCTIONS = ("mean", "sum", "none")


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float, *,
                    mask: torch.Tensor | None = None, temperature: float = 1.0,
                    reduction: str = "mean") -> torch.Tensor:
    """F(teacher ‖ student) in TRL's β convention (module docstring), summed over the vocabulary.

    student_logits, teacher_logits: [..., vocab], the same shape. mask: bool [...], True where a position
    counts (None: all count). reduction "mean" averages over the counted positions, "sum" adds them, "none"
    returns the per-position values [...] with uncounted positions set to 0. Positions that do not count may
    hold anything finite (padding): they change neither the value nor the gradient.
    """
    validate.number("beta", beta, 0, 1)
    validate.positive_number("temperature", temperature)
    validate.one_of("reduction", reduction, REDUCTIONS)
    _check_logits(student_logits, teacher_logits)
    _check_mask(mask, student_logits)

    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # half precision is too coarse for a KL
    log_s = torch.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_t = torch.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=-1)
    if beta == 0:
        per_position = _kl(log_t, log_s)
    elif beta == 1:
        per_position = _kl(log_s, log_t)
    else:
        log_m = torch.logaddexp(log_t + math.log(beta), log_s + math.log1p(-beta))
        per_position = beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)
    return _reduce(per_position, mask, reduction)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, mask: torch.Tensor | None = None,
               temperature: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """KL(teacher ‖ student): `generalized_jsd` at β = 0."""
    return generalized_jsd(student_logits, teacher_logits, 0.0, mask=mask, temperature=temperature,
                           reduction=reduction)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, mask: torch.Tensor | None = None,
               temperature: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """KL(student ‖ teacher): `generalized_jsd` at β = 1."""
    return generalized_jsd(student_logits, teacher_logits, 1.0, mask=mask, temperature=temperature,
                           reduction=reduction)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last dimension, from log-probabilities, with 0 · log(0 / q) = 0."""
    p = log_p.exp()
    # Filling the log-ratio (not the product) keeps -inf out of both the value and the gradient.
    log_ratio = (log_p - log_q).masked_fill(p == 0, 0.0)
    return (p * log_ratio).sum(dim=-1)


def _reduce(per_position: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    if mask is not None:
        # where, not a product: whatever an uncounted position computed (inf from padding) stays out.
        per_position = torch.where(mask, per_position, per_position.new_zeros(()))
    if reduction == "none":
        return per_position
    total = per_position.sum()
    if reduction == "sum":
        return total
    counted = per_position.numel() if mask is None else int(mask.sum())
    if counted == 0:
        raise ValueError("mask counts no position: the mean over counted positions is undefined")
    return total / counted


def _check_logits(student_logits, teacher_logits) -> None:
    for name, logits in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            got = logits.dtype if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise TypeError(f"{name} must be a floating-point tensor [..., vocab], got {got}")
        if logits.dim() == 0 or logits.shape[-1] == 0:
            raise ValueError(f"{name} must have shape [..., vocab] with vocab >= 1, got {tuple(logits.shape)}")
        if logits.numel() == 0:
            raise ValueError(f"{name} has no positions (shape {tuple(logits.shape)})")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits and teacher_logits must have the same shape, got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")


def _check_mask(mask, logits: torch.Tensor) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor (True where a position counts; use mask.bool()), got {got}")
    if mask.shape != logits.shape[:-1]:
        raise ValueError(f"mask must have the logits' shape without the vocabulary, "
                         f"{tuple(logits.shape[:-1])}, got {tuple(mask.shape)}")
