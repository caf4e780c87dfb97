"""Replay drawn ahead (issue 19: a sleep that costs less than the fine-tuning it replaces).

During a consolidation the teacher is frozen, so what it samples at step s depends on nothing the steps
change: only on the step's seed. `sample_groups` draws the samples of many seeds in one batched, KV-cached
generation (one forward per token for all of them instead of one per token per seed), each group drawing its
tokens with its own seeded generator, and keeps the logits each token was drawn from: the teacher's logits
over its own samples, which distillation needs and therefore never recomputes. The plain reference is one
`lmsleep.stream.sample` per seed plus a teacher forward over each sample; tests/test_replay.py checks

    sample_groups(model, prompts, L, T, seeds, context).tokens[i] == sample(model, prompts, L, T, seeds[i], context)
    sample_groups(...).logits[i] == model(context ++ that sample) at the L positions predicting the sampled
                                     tokens (up to float rounding: a cached decode sums in another order)

`Ahead` hands out one seed's group at a time and draws blocks of seeds so that the logits it holds stay under a
budget of floats (a long consolidation of a large vocabulary never holds all of them at once).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..decode_step import DecodeStep
from ..decoding import Sampling, seeded
from ..stream import memory_with_room, open_stream
from .draws import Draws

LOGIT_BUDGET = 1 << 24  # floats of logits an `Ahead` holds at most (64 MiB in float32), unless one group needs more


class Groups(NamedTuple):
    tokens: torch.Tensor  # [groups, n, prompt + length]: prompts, then the sampled tokens
    logits: torch.Tensor | None  # [groups, n, length, vocab]: the logits each sampled token was drawn from


@torch.no_grad()
def sample_groups(model, prompts: torch.Tensor, length: int, temperature: float, seeds: list[int],
                  context: torch.Tensor | None = None, *, keep_logits: bool = True) -> Groups:
    """For every seed, the sequences `lmsleep.stream.sample(model, prompts, length, temperature, seed, context)`
    draws (prompts [n, p], context [n, c] or None), all in one batched generation; with keep_logits the
    model's logits that each sampled token was drawn from (see the module docstring). Rows that repeat
    (context and prompt alike), within and across groups, are read once and their memory copied."""
    n, groups = prompts.shape[0], len(seeds)
    if groups == 0:
        raise ValueError("sample_groups needs at least one seed")
    device = next(model.parameters()).device
    draw = Draws(Sampling(temperature), [seeded(seed, device) for seed in seeds], length)
    read = prompts if context is None else torch.cat([context, prompts], dim=1)
    distinct, source = torch.unique(read, dim=0, return_inverse=True)
    picked, kept = [], []
    with torch.inference_mode():  # nothing here is trained (the samples and logits are stacked outside it)
        stream = open_stream(model, distinct.shape[0])
        if context is not None:
            stream.feed(distinct[:, : context.shape[1]])
        logits = stream.feed(distinct[:, read.shape[1] - prompts.shape[1]:])[:, -1]
        rows = source.repeat(groups)  # row i·n + j of group i is prompt row j
        stream.take_rows(rows)
        stream.reserve(length - 1)  # the keys of the tokens to come, allocated once
        logits = logits[rows]
        for t in range(length):
            if keep_logits:
                kept.append(logits)
            tokens = draw(logits)
            picked.append(tokens)
            if t + 1 < length:  # the last token is never read: no forward for it
                logits = stream.feed(tokens[:, None])[:, -1]
    sampled = torch.stack(picked, dim=1) if picked else prompts.new_zeros(n * groups, 0)
    tokens = torch.cat([prompts.repeat(groups, 1), sampled], dim=1).view(groups, n, -1)
    if not keep_logits:
        return Groups(tokens, None)
    vocab = model.config.vocab_size
    stacked = torch.stack(kept, dim=1) if kept else logits.new_zeros(n * groups, 0, vocab)
    return Groups(tokens, stacked.view(groups, n, length, vocab))


@torch.no_grad()
def continue_from(model, memory: list, logits: torch.Tensor, length: int, temperature: float, seed: int) -> torch.Tensor:
    """`length` tokens [rows, length] sampled after a model whose memory (as `SleepLM.wake` returns it) and
    last logits [rows, vocab] are given, as `SleepStream.generate` samples them with `seed` after the same
    tokens. Only for a model that never ends a window (eviction "none"): then a stream's feed is a wake."""
    assert model.config.eviction == "none", "a model with windows sleeps between them: use a SleepStream"
    draw = Draws(Sampling(temperature), [seeded(seed, logits.device)], length)
    step = DecodeStep(model)  # model.wake's last logits and memory, bit for bit, without the modules' Python
    picked = []
    with torch.inference_mode():  # nothing here is trained: no autograd bookkeeping per op (the same values)
        # caches that hold the length-1 keys to come: allocated once, no larger than needed
        memory = memory_with_room(memory, length - 1)
        for t in range(length):
            picked.append(draw(logits))
            if t + 1 < length:
                logits, memory = step(picked[-1][:, None], memory)
    # stacked outside inference mode: ordinary tokens, which a training forward may read
    return torch.stack(picked, dim=1) if picked else logits.new_zeros(logits.shape[0], 0, dtype=torch.long)


class Ahead:
    """The groups of `seeds` (see sample_groups), drawn a block of seeds at a time when first asked for:
    `ahead[i]` is (tokens [n, p + length], logits [n, length, vocab]) of seeds[i]. Ask in increasing order:
    a block is drawn once and dropped when the next is drawn."""

    def __init__(self, model, prompts: torch.Tensor, length: int, temperature: float, seeds: list[int],
                 context: torch.Tensor | None = None, budget: int = LOGIT_BUDGET):
        self.model, self.prompts, self.length, self.temperature = model, prompts, length, temperature
        self.seeds, self.context = list(seeds), context
        per_group = prompts.shape[0] * max(length, 1) * model.config.vocab_size
        self.block = max(1, budget // per_group)
        self._start, self._groups = None, None

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self.seeds):
            raise IndexError(f"seed index {i} outside [0, {len(self.seeds)})")
        start = i - i % self.block
        if start != self._start:
            self._groups = sample_groups(self.model, self.prompts, self.length, self.temperature,
                                         self.seeds[start : start + self.block], self.context)
            self._start = start
        return self._groups.tokens[i - start], self._groups.logits[i - start]
