"""Sampled tokens with their random numbers drawn ahead (issue 19: a sleep that costs less).

`decoding.pick` samples a row with one `torch.multinomial(p, 1, generator)`, which is

    argmax(p / q),   q ~ Exp(1), one per entry of p, drawn from the generator in order

(torch's own algorithm for one sample: a Gumbel-max in exponential form). A CPU generator draws its
exponentials one after another, so the q of the next many tokens can be drawn in one call, before their
logits exist: the same numbers in the same order. `Draws` does that for a batched generation whose rows are
groups each drawing with its own generator (replay.sample_groups: one group per seed), which spares a
multinomial per group per token (its checks, its call) and leaves one division and one argmax per token.
tests/test_replay.py checks the tokens equal `decoding.pick`'s for each group alone. On another device (a
CUDA generator draws in blocks whose split depends on the size), or for top-k / top-p sampling, it calls
multinomial per group as `pick` does.

A CPU generator's exponential is −log1p(−u), u = the low 53 bits of one 64-bit draw · 2^−53, computed in
float64 one element at a time (about 30 ns each: the largest part of a draw). `exponentials` takes the same
64-bit draws in one vectorised call (`random_` on int64: the same draws, leaving the generator in the same
state) and the same formula vectorised, whose log1p may differ from the scalar one in the last bit of the
float64; rounded to float32 the numbers are the same (a difference would need a float64 within one ulp of a
float32 rounding boundary: about 10^-10 of the draws). It is used for float32 only, and only after a check at
first use that it reproduces `exponential_` (65 536 draws, and the generator's state after them); float64
draws go through `exponential_`.
"""
from __future__ import annotations

import math

import torch

from ..decoding import Sampling, sampling_logprobs

BUDGET = 1 << 22  # numbers drawn ahead at most (16 MiB in float32), unless one token needs more


class Draws:
    """Next tokens [rows] for logits [rows, vocab], token after token, for `length` tokens: rows are
    len(generators) equal groups, group i drawn with generators[i] (see the module docstring)."""

    def __init__(self, sampling: Sampling, generators: list[torch.Generator], length: int):
        self.sampling, self.generators, self.length = sampling, generators, length
        self.ahead = (not sampling.greedy and sampling.top_k is None and sampling.top_p in (None, 1)
                      and all(g.device.type == "cpu" for g in generators))
        self._drawn: torch.Tensor | None = None  # [tokens, rows, vocab]: q of the tokens drawn ahead, not yet used
        self._used = 0  # tokens picked so far
        self._next = 0  # index into _drawn

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self._used >= self.length:
            raise RuntimeError(f"Draws was made for {self.length} tokens")
        self._used += 1
        if self.sampling.greedy:
            return logits.argmax(-1)
        probs = sampling_logprobs(logits, self.sampling).exp()
        groups = len(self.generators)
        n = logits.shape[0] // groups
        if not self.ahead:
            return torch.cat([torch.multinomial(probs[i * n : (i + 1) * n], 1, generator=g)[:, 0]
                              for i, g in enumerate(self.generators)])
        if not math.isfinite(float(probs.sum())):  # what multinomial refuses (an inf or nan anywhere)
            raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
        if self._drawn is None or self._next == self._drawn.shape[0]:
            tokens = min(self.length - self._used + 1, max(1, BUDGET // probs.numel()))
            self._drawn = torch.cat([exponentials((tokens, n, probs.shape[1]), probs.dtype, g) for g in self.generators],
                                    dim=1)
            self._next = 0
        q = self._drawn[self._next]
        self._next += 1
        return (probs / q).argmax(-1)


_LOW_53 = (1 << 53) - 1
_vectorised_ok: bool | None = None  # whether the vectorised float32 exponentials reproduce exponential_ here


def exponentials(shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """`torch.empty(shape, dtype=dtype).exponential_(generator=generator)` on CPU: the same numbers, drawn
    faster for float32 (see the module docstring)."""
    global _vectorised_ok
    if dtype == torch.float32 and generator.device.type == "cpu":
        if _vectorised_ok is None:
            _vectorised_ok = _check_vectorised()
        if _vectorised_ok:
            return _vectorised(shape, generator)
    return torch.empty(shape, dtype=dtype).exponential_(generator=generator)


def _vectorised(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    raw = torch.empty(shape, dtype=torch.int64).random_(generator=generator)  # one 64-bit draw each
    uniform = (raw & _LOW_53).to(torch.float64).mul_(2.0 ** -53)
    return torch.log1p(uniform.neg_()).neg_().to(torch.float32)


def _check_vectorised() -> bool:
    plain, fast = torch.Generator().manual_seed(0x5EED), torch.Generator().manual_seed(0x5EED)
    expected = torch.empty(1 << 16, dtype=torch.float32).exponential_(generator=plain)
    return torch.equal(_vectorised((1 << 16,), fast), expected) and torch.equal(plain.get_state(), fast.get_state())
