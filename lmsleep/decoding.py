"""Picking the next token from logits: greedy, or sampled with temperature, top-k and top-p (nucleus).

One decoder for every caller (stream generation, teacher samples, dreams), so a seed means the same tokens
everywhere. The sampling distribution of a row with logits z [vocab] is

    q = softmax(z / T) restricted to the k most likely tokens (top_k), renormalised,
        then restricted to the smallest most-likely-first set whose q-mass reaches p (top_p), renormalised

(the top token is always kept); T = 0 means greedy (argmax, ties to the lowest id, as torch.argmax).
Next to each chosen token `pick` returns its log-probability under the model's own distribution
softmax(z) (what REINFORCE and distillation score) and under q (what was sampled from; 0 when greedy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. temperature 0 is greedy; top_k None and top_p None (or 1) restrict nothing."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {k!r}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1):
            raise ValueError(f"top_p must be a number in (0, 1] or None, got {p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Picked(NamedTuple):
    """The chosen tokens of a batch and their log-probabilities, each [batch]."""

    tokens: torch.Tensor  # long
    logprob: torch.Tensor  # log softmax(logits) at the token: the model's own distribution
    sampling_logprob: torch.Tensor  # log q at the token: the distribution it was drawn from (0 when greedy)


def sampling_logprobs(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """log q [batch, vocab] of a non-greedy `sampling` (see the module docstring); -inf outside the kept set."""
    assert not sampling.greedy, "greedy picking has no sampling distribution to compute"
    scores = _at_least_float32(logits)
    if sampling.temperature != 1:  # x / 1 is x: no op (a decode step is many small ones)
        scores = scores / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < scores.shape[-1]:
        top = scores.topk(sampling.top_k, dim=-1)  # exactly k kept, even where scores tie
        scores = torch.full_like(scores, -math.inf).scatter(-1, top.indices, top.values)
    if sampling.top_p is not None and sampling.top_p < 1:
        probs, order = scores.softmax(-1).sort(dim=-1, descending=True)
        mass_before = probs.cumsum(-1) - probs  # q-mass of the more likely tokens: 0 for the top token
        drop_sorted = mass_before >= sampling.top_p  # that mass already reaches p: not in the smallest set
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, -math.inf)
    return scores.log_softmax(-1)


def pick(logits: torch.Tensor, sampling: Sampling | None = None, generator: torch.Generator | None = None) -> Picked:
    """Next tokens for logits [batch, vocab]: argmax when `sampling` is greedy (the default), else drawn
    from q with `generator` (None: torch's global generator). Each row is drawn independently.

    The log-probabilities keep the logits' autograd graph, so a caller may score sampled tokens with grad."""
    sampling = sampling or Sampling()
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[-1] == 0:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a tensor [batch, vocab], got {shape}")
    logprobs = _at_least_float32(logits).log_softmax(-1)
    if sampling.greedy:
        tokens = logits.argmax(-1)
        chosen = logprobs.gather(-1, tokens[:, None])[:, 0]
        return Picked(tokens, chosen, torch.zeros_like(chosen))
    q = sampling_logprobs(logits, sampling)
    tokens = torch.multinomial(q.detach().exp(), 1, generator=generator)  # [batch, 1]
    return Picked(tokens[:, 0], logprobs.gather(-1, tokens)[:, 0], q.gather(-1, tokens)[:, 0])


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits are promoted: their softmax tails are too coarse to sample from."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def seeded(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on `device` seeded with any integer: seeds mixed from others (seed × prime + part,
    nested) outgrow torch's 64 bits, so they are taken modulo 2^64, which is what torch does to a negative
    seed already (every seed torch accepts draws the same stream as before)."""
    return torch.Generator(device=device).manual_seed(seed % 2**64)


def generator_for(device: torch.device | str, seed: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Generator | None:
    """The generator a sampler draws with: `generator` as given, a fresh one seeded with `seed` on
    `device`, or None (torch's global generator) when neither is given. A seed reproduces the tokens on the
    same kind of device; CPU and CUDA generators draw different streams."""
    if seed is not None and generator is not None:
        raise ValueError("give a seed or a generator, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return seeded(seed, device)


class Generation(NamedTuple):
    """A generated continuation, each field [batch, new tokens]."""

    tokens: torch.Tensor  # long
    logprob: torch.Tensor  # under the model's own distribution (see Picked); 0 after a row's stop token
    sampling_logprob: torch.Tensor  # under the sampling distribution; 0 when greedy or after the stop token
    mask: torch.Tensor  # bool: True for the tokens a row really generated, its stop token included


def finish_generation(steps: list[Picked], length: int, batch: int, stop_token: int | None,
                      device: torch.device, return_logprobs: bool) -> torch.Tensor | Generation:
    """Stack per-step picks into [batch, length]: the tokens alone, or a Generation when `return_logprobs`.
    Steps may stop short only after every row emitted stop_token; the columns left hold it, log-prob 0."""
    if not steps:
        empty = torch.zeros(batch, 0, device=device)
        tokens = empty.long()
        return Generation(tokens, empty, empty, tokens.bool()) if return_logprobs else tokens
    if len(steps) < length:
        assert stop_token is not None, "generation ended early without a stop token"
        last = steps[-1]
        filler = Picked(torch.full_like(last.tokens, stop_token), torch.zeros_like(last.logprob),
                        torch.zeros_like(last.sampling_logprob))
        steps = steps + [filler] * (length - len(steps))
    tokens, logprob, sampling_logprob = (torch.stack(column, dim=1) for column in zip(*steps))
    if not return_logprobs:
        return tokens
    if stop_token is None:
        mask = torch.ones_like(tokens, dtype=torch.bool)
    else:
        stops = (tokens == stop_token).long()
        mask = (stops.cumsum(-1) - stops) == 0  # no stop token before this position
    return Generation(tokens, logprob, sampling_logprob, mask)
