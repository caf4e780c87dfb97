"""Rewards and the policy gradient of learning to imitate (spec: Sleep stage 1, step 5).

A teacher sample is cut at a random prefix; the student writes G completions ŷ of it, each compared with the
teacher's actual continuation y (the reference), on token ids:

    r     = γ · r_sem + (1 − γ) · r_abs                                   γ = 0.5 by default
    r_abs = 1 − lev(ŷ, y) / max(|ŷ|, |y|)   if lev(ŷ, y) ≤ z0, else 0      (Eq. 4; 1 for two empty sequences)
    r_sem ∈ {0, 1}: a judge says whether ŷ means the same as y

lev is the Levenshtein distance (insertions, deletions, substitutions of whole tokens, each costing 1),
computed by rapidfuzz (MIT; the GPL `levenshtein` package is avoided). z0 = None is the spec's default,
half the reference's length. A judge is any callable (completion_ids, reference_ids) -> bool receiving
lists of ints; `ExactJudge` (the default: the same tokens) and `task_judge` (a task's own checker of "same
fact / same answer") are the two kinds we use.

The student is trained by REINFORCE with the group-mean baseline: the G completions of one prefix form a
group, each one's advantage is its reward minus the mean reward of its group (a group whose completions are
rewarded alike teaches nothing), and the loss −mean(advantage · log π(ŷ)) has the gradient of −E[r] with
that baseline. The advantages are constants; the gradient flows only through log π(ŷ).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from rapidfuzz.distance import Levenshtein

from lmsleep import validate

TokenIds = Sequence[int] | torch.Tensor


class Judge(Protocol):
    """r_sem: whether a completion means the same as the reference (both plain lists of token ids)."""

    def __call__(self, completion_ids: list[int], reference_ids: list[int]) -> bool: ...


def token_ids(name: str, ids: TokenIds) -> list[int]:
    """`ids` as a list of ints: a list or tuple of integers, or a 1-D integer tensor; anything else is refused
    by `name` (a string would be compared character by character, not token by token)."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"{name} must be a 1-D integer tensor of token ids, got dtype {ids.dtype} and "
                            f"shape {tuple(ids.shape)}")
        return ids.tolist()
    if type(ids) in (list, tuple) and set(map(type, ids)) <= _PLAIN_INT:  # the common case, checked in C
        return list(ids)
    if not isinstance(ids, (list, tuple)) or not all(type(i) is int or _is_integer(i) for i in ids):
        shown = type(ids).__name__ if not isinstance(ids, (list, tuple)) else repr(ids)[:80]
        raise TypeError(f"{name} must be a list, tuple or 1-D integer tensor of token ids, got {shown}")
    return [int(i) for i in ids]


_PLAIN_INT = {int}


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def trim(ids: TokenIds, *, stop_ids: Sequence[int] = (), pad_ids: Sequence[int] = ()) -> list[int]:
    """The tokens that carry a sequence's meaning: those before its first stop id, with pad ids removed from
    both ends (what follows a stop is whatever the sampler wrote after the answer ended)."""
    ids = token_ids("ids", ids)
    stops = set(stop_ids)
    for position, token in enumerate(ids):
        if token in stops:
            ids = ids[:position]
            break
    pads = set(pad_ids)
    start, end = 0, len(ids)
    while start < end and ids[start] in pads:
        start += 1
    while end > start and ids[end - 1] in pads:
        end -= 1
    return ids[start:end]


def r_abs(completion_ids: TokenIds, reference_ids: TokenIds, z0: float | None = None) -> float:
    """1 − lev / max(|completion|, |reference|) when lev ≤ z0, else 0; two empty sequences score 1.
    z0 = None is half the reference's length (no rounding: lev ≤ |reference| / 2)."""
    completion = token_ids("completion_ids", completion_ids)
    reference = token_ids("reference_ids", reference_ids)
    z0 = len(reference) / 2 if z0 is None else validate.number("z0", z0, 0, None)
    longest = max(len(completion), len(reference))
    if longest == 0:
        return 1.0
    lev = Levenshtein.distance(completion, reference)
    return 1.0 - lev / longest if lev <= z0 else 0.0


@dataclass(frozen=True)
class ExactJudge:
    """r_sem = 1 iff the completion has the reference's tokens, both `trim`med of `stop_ids` and `pad_ids`."""

    stop_ids: tuple[int, ...] = ()
    pad_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("stop_ids", "pad_ids"):
            object.__setattr__(self, name, tuple(token_ids(f"ExactJudge.{name}", list(getattr(self, name)))))

    def __call__(self, completion_ids: list[int], reference_ids: list[int]) -> bool:
        return (trim(completion_ids, stop_ids=self.stop_ids, pad_ids=self.pad_ids)
                == trim(reference_ids, stop_ids=self.stop_ids, pad_ids=self.pad_ids))


def task_judge(checker: Callable, *, decode: Callable[[list[int]], object] | None = None) -> Judge:
    """A judge from a task's checker: `checker(completion, reference) -> bool` says whether the completion
    states the same fact or answer as the reference. With `decode` (e.g. a task vocabulary's `decode`) the
    checker receives both decoded (text) instead of token ids."""
    _check_callable("checker", checker)
    if decode is not None:
        _check_callable("decode", decode, "(token_ids) -> what the checker reads, or None")

    def judge(completion_ids: list[int], reference_ids: list[int]) -> bool:
        if decode is None:
            return checker(completion_ids, reference_ids)
        return checker(decode(completion_ids), decode(reference_ids))

    judge.__qualname__ = judge.__name__ = f"task_judge({getattr(checker, '__name__', type(checker).__name__)})"
    return judge


def _check_callable(name: str, value, signature: str = "(completion_ids, reference_ids) -> bool") -> None:
    if not callable(value):
        raise TypeError(f"{name} must be callable {signature}, got {type(value).__name__}")


def reward(completion_ids: TokenIds, reference_ids: TokenIds, *, gamma: float = 0.5, z0: float | None = None,
           judge: Judge = ExactJudge()) -> float:
    """r = γ · r_sem + (1 − γ) · r_abs for one completion and the teacher's continuation it imitates."""
    validate.number("gamma", gamma, 0, 1)
    _check_callable("judge", judge)
    completion = token_ids("completion_ids", completion_ids)
    reference = token_ids("reference_ids", reference_ids)
    verdict = judge(list(completion), list(reference))  # copies: a judge cannot alter what r_abs sees
    if not isinstance(verdict, (bool, np.bool_)):
        raise TypeError(f"judge must return a bool (r_sem ∈ {{0, 1}}), "
                        f"{getattr(judge, '__name__', type(judge).__name__)} returned {verdict!r}")
    return gamma * float(verdict) + (1 - gamma) * r_abs(completion, reference, z0)


def group_advantages(rewards: torch.Tensor | Sequence[float], group_size: int) -> torch.Tensor:
    """Each reward minus the mean reward of its group [n], float64, without gradient. rewards [n] holds
    n / G consecutive groups of G = group_size completions of one prefix each:
    [prefix 0: completion 0 … G−1, prefix 1: completion 0 … G−1, …]."""
    validate.integer("group_size", group_size, 2, None,
                     why="with one completion per group the group-mean baseline cancels every reward")
    if isinstance(rewards, torch.Tensor):
        rewards = rewards.detach().to(torch.float64)
    else:
        try:
            rewards = torch.tensor(rewards, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"rewards must be a 1-D tensor or a sequence of numbers, got {rewards!r}"[:200]) from None
    if rewards.dim() != 1 or rewards.numel() == 0:
        raise ValueError(f"rewards must be a non-empty 1-D sequence [n], got shape {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError(f"rewards must be finite, got {rewards.tolist()}")
    n = rewards.numel()
    if n % group_size:
        raise ValueError(f"the number of rewards ({n}) must be a multiple of group_size ({group_size}): "
                         f"n / G groups of G completions of one prefix each")
    groups = rewards.view(n // group_size, group_size)
    return (groups - groups.mean(dim=1, keepdim=True)).view(n)


def reinforce_loss(logprobs: torch.Tensor, rewards: torch.Tensor | Sequence[float], group_size: int) -> torch.Tensor:
    """REINFORCE with the group-mean baseline: −mean_i((r_i − mean of i's group) · logprobs_i).

    logprobs [n]: each completion's summed token log-probabilities under the student, with gradient.
    rewards [n]: their rewards, arranged as in `group_advantages`; they carry no gradient.
    """
    if not isinstance(logprobs, torch.Tensor) or not logprobs.is_floating_point():
        got = logprobs.dtype if isinstance(logprobs, torch.Tensor) else type(logprobs).__name__
        raise TypeError(f"logprobs must be a floating-point tensor [n], got {got}")
    advantages = group_advantages(rewards, group_size)
    if logprobs.shape != advantages.shape:
        raise ValueError(f"logprobs must have one value per completion, shape {tuple(advantages.shape)} "
                         f"like rewards, got {tuple(logprobs.shape)}")
    advantages = advantages.to(dtype=logprobs.dtype, device=logprobs.device)
    return -(advantages * logprobs).mean()
