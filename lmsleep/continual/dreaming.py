"""Sleep stage 2, dreaming (spec: sleep-continual.md, "Sleep stage 2 — Dreaming", built on SEAL).

Given a task context C and a measure τ of downstream performance (higher is better):

    1. sample m dreams from the model conditioned on C; every router also runs one random expert
    2. score each dream: cos(∇ SFT loss of the dream, ∇ loss on C) over LoRA parameters; keep top k + b random
    3. fine-tune an isolated LoRA copy per kept dream (batched; the model never changes); a dream's reward
       is 1 when its copy beats the model on τ ("every" improving dream, or SEAL's "best" one per context)
    4. ReST-EM: fine-tune the dream generator (a LoRA adapter, fresh each round as in ReST-EM's E-M
       iterations from the base) on the (C, dream) pairs with reward 1, for `rounds` rounds

A dream is a next-token training sequence (the dream alone, as SEAL's self-edits: the model must learn it
without C in context). The learner can then learn from the rewarded dreams as wake data.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import validate
from ..layers.levels import MemoryLevel
from ..model import SleepLM
from ..stream import sample
from .lora import LoRAAdapters, finetune
from .selection import importance, select
from .seeds import derive

REWARD_MODES = ("every", "best")
SELECTIONS = ("importance", "random")


@dataclass(frozen=True)
class DreamingConfig:
    """dreams m of dream_length tokens (temperature); keep_top k + keep_random b; LoRA rank / alpha, steps and
    lr of each kept dream's isolated fine-tune; reward_mode "every" or "best"; ReST-EM rounds (generator
    fine-tunes of generator_steps); random_expert: one random extra expert per router while dreaming;
    selection: keep the top k by gradient importance + b at random ("importance"), or k + b at random
    ("random", the ablation without gradient selection)."""

    dreams: int = 8
    dream_length: int = 24
    temperature: float = 1.0
    keep_top: int = 3
    keep_random: int = 1
    rank: int = 4
    alpha: float = 8.0
    steps: int = 10
    lr: float = 1e-2
    reward_mode: str = "every"
    rounds: int = 1
    generator_steps: int = 10
    random_expert: bool = True
    selection: str = "importance"
    seed: int = 0

    def __post_init__(self) -> None:
        validate.check_types(self)
        for name in ("dreams", "dream_length", "rank", "rounds"):
            validate.positive_int(f"DreamingConfig.{name}", getattr(self, name))
        for name in ("keep_top", "keep_random", "steps", "generator_steps"):
            validate.non_negative_int(f"DreamingConfig.{name}", getattr(self, name))
        if self.keep_top + self.keep_random < 1:
            raise ValueError("DreamingConfig.keep_top + keep_random must keep at least one dream")
        for name in ("temperature", "alpha", "lr"):
            validate.positive_number(f"DreamingConfig.{name}", getattr(self, name))
        validate.one_of("DreamingConfig.reward_mode", self.reward_mode, REWARD_MODES)
        validate.one_of("DreamingConfig.selection", self.selection, SELECTIONS)
        validate.integer("DreamingConfig.seed", self.seed)


@dataclass
class DreamRound:
    dreams: list[list[int]]
    scores: list[float]
    kept: list[int]
    measure_before: float
    measures: list[float]  # τ of each kept dream's copy
    rewards: list[int]  # per kept dream
    generator_trained_on: int  # rewarded (C, dream) pairs the generator was fine-tuned on


@dataclass
class DreamReport:
    rounds: list[DreamRound] = field(default_factory=list)
    generator: LoRAAdapters | None = None  # the dream generator after ReST-EM (None: never rewarded)

    def rewarded_dreams(self) -> list[list[int]]:
        return [r.dreams[i] for r in self.rounds for i, reward in zip(r.kept, r.rewards) if reward]


@contextlib.contextmanager
def random_experts(model: SleepLM, seed: int | None):
    """While dreaming, every router additionally runs one random expert (seed None: off)."""
    levels = [m for m in model.modules() if isinstance(m, MemoryLevel)]
    for i, level in enumerate(levels):
        level.dreaming = None if seed is None else torch.Generator().manual_seed(derive(seed, i))
    try:
        yield
    finally:
        for level in levels:
            level.dreaming = None


def sample_dreams(model: SleepLM, context: torch.Tensor, cfg: DreamingConfig, seed: int,
                  generator: LoRAAdapters | None = None) -> torch.Tensor:
    """m dreams [m, dream_length] sampled after reading C, with the generator adapter when there is one."""
    adapter = generator.applied(model, 0) if generator is not None else contextlib.nullcontext()
    with adapter, random_experts(model, seed if cfg.random_expert else None):
        rows = context.expand(cfg.dreams, -1)  # C's last token prompts the dream, the rest is read first
        return sample(model, rows[:, -1:], cfg.dream_length, cfg.temperature, seed, rows[:, :-1])[:, 1:]


def sft_data(sequences: torch.Tensor, scored_from: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token training data (tokens, targets, loss_mask) of sequences [n, T], scored from position
    `scored_from` of the sequence on (e.g. only the dream after its context)."""
    mask = torch.zeros_like(sequences[:, 1:])
    mask[:, max(scored_from - 1, 0):] = 1
    return sequences[:, :-1], sequences[:, 1:], mask


def rewards_for(measures: list[float], before: float, mode: str) -> list[int]:
    """1 for a kept dream whose copy beats the model on τ: every such dream, or only the best one."""
    improved = [int(m > before) for m in measures]
    if mode == "every" or not any(improved):
        return improved
    best = max(range(len(measures)), key=lambda i: measures[i])
    return [int(i == best) for i in range(len(measures))]


def rest_em_data(context: torch.Tensor, dreams: torch.Tensor, rewards: list[int]):  # one context's pairs
    """ReST-EM's training set: the (C, dream) pairs with reward 1 only, the loss on the dream tokens."""
    chosen = [i for i, r in enumerate(rewards) if r]
    if not chosen:
        return None
    pairs = torch.cat([context.expand(len(chosen), -1), dreams[chosen]], dim=1)
    return sft_data(pairs, scored_from=context.shape[1])


def dream_datasets(dreams: torch.Tensor, prefix: torch.Tensor | None = None) -> list:
    """One next-token dataset per dream [m, L]: the dream alone, or read after `prefix` [1, p] (not scored),
    e.g. padding where the context was: the layout in which the model is later asked without it."""
    if prefix is None:
        return [sft_data(d[None]) for d in dreams]
    return [sft_data(torch.cat([prefix, d[None]], dim=1), scored_from=prefix.shape[1]) for d in dreams]


def propose(model: SleepLM, context: torch.Tensor, cfg: DreamingConfig, seed: int,
            generator: LoRAAdapters | None = None, prefix: torch.Tensor | None = None):
    """Steps 1–2, which need no measure: sample m dreams after C, score them by gradient importance, keep
    the top k + b random. Returns (dreams [m, L], their datasets, scores [m], kept indices)."""
    _check_context(model, context, prefix)
    dreams = sample_dreams(model, context, cfg, seed, generator)
    datasets = dream_datasets(dreams, prefix)
    keep = min(cfg.keep_top + cfg.keep_random, cfg.dreams)
    if cfg.selection == "random":  # no scores are computed: every dream is equally likely to be kept
        scores = torch.zeros(cfg.dreams)
        kept = select(scores, 0, keep, torch.Generator().manual_seed(seed)).tolist()
    else:
        scores = importance(model, datasets, sft_data(context), rank=cfg.rank, alpha=cfg.alpha, seed=seed)
        kept = select(scores, cfg.keep_top, cfg.keep_random, torch.Generator().manual_seed(seed)).tolist()
    return dreams, datasets, scores, kept


def _check_context(model: SleepLM, context: torch.Tensor, prefix: torch.Tensor | None) -> None:
    model.check_tokens(context, "context")
    if context.dim() != 2 or context.shape[0] != 1 or context.shape[1] < 2:
        raise ValueError(f"context must be one row [1, c] of at least 2 tokens, got {tuple(context.shape)}")
    if prefix is not None:
        model.check_tokens(prefix, "prefix")
        if prefix.dim() != 2 or prefix.shape[0] != 1:
            raise ValueError(f"prefix must be one row [1, p], got {tuple(prefix.shape)}")


def reward_round(model: SleepLM, context: torch.Tensor, measure: Callable[[SleepLM], float], cfg: DreamingConfig,
                 seed: int, generator: LoRAAdapters | None = None, prefix: torch.Tensor | None = None) -> DreamRound:
    """Steps 1–3 for one context: propose, fine-tune an isolated copy per kept dream, reward the dreams whose
    copy beats the model on τ. The model's weights never change."""
    if not callable(measure):
        raise TypeError(f"measure must be a callable model -> float, got {type(measure).__name__}")
    dreams, datasets, scores, kept = propose(model, context, cfg, seed, generator, prefix)
    tuned = finetune(model, [datasets[i] for i in kept], rank=cfg.rank, alpha=cfg.alpha, steps=cfg.steps,
                     lr=cfg.lr, seed=seed)
    before = float(measure(model))
    measures = []
    for copy in range(len(kept)):
        with tuned.adapters.applied(model, copy):
            measures.append(float(measure(model)))
    return DreamRound(dreams=dreams.tolist(), scores=scores.tolist(), kept=kept, measure_before=before,
                      measures=measures, rewards=rewards_for(measures, before, cfg.reward_mode), generator_trained_on=0)


def dream(model: SleepLM, context: torch.Tensor, measure: Callable[[SleepLM], float],
          cfg: DreamingConfig = DreamingConfig(), generator: LoRAAdapters | None = None,
          prefix: torch.Tensor | None = None) -> DreamReport:
    """Steps 1–4 for one context C [1, c]. `measure(model)` is τ (it may be called with an adapter applied);
    `generator`: the dream generator from an earlier sleep, if any; `prefix` [1, p]: what each dream is read
    after when a copy learns it (dream_datasets). The model's weights never change."""
    _check_context(model, context, prefix)
    if not callable(measure):
        raise TypeError(f"measure must be a callable model -> float, got {type(measure).__name__}")
    generator, rounds = rest_em(model, [Task(context, measure, prefix)], cfg, generator)
    return DreamReport(rounds=rounds, generator=generator)

def left_padded(sequences: list[torch.Tensor], scored_from: list[int], pad: int):
    """Next-token data (tokens, targets, loss_mask) from rows of different lengths: each left-padded with
    `pad` to the longest, its loss from position scored_from[i] of the row on."""
    width = max(s.numel() for s in sequences)
    device = sequences[0].device
    tokens = torch.full((len(sequences), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros(len(sequences), width - 1, dtype=torch.long, device=device)
    for i, (sequence, start) in enumerate(zip(sequences, scored_from)):
        offset = width - sequence.numel()
        tokens[i, offset:] = sequence
        mask[i, offset + max(start, 1) - 1 :] = 1
    return tokens[:, :-1], tokens[:, 1:], mask


@dataclass(frozen=True)
class Task:
    """One context the dream generator learns from: C [1, c], its measure τ, the prefix dreams are learnt
    after (None: the dream alone)."""

    context: torch.Tensor
    measure: Callable[[SleepLM], float]
    prefix: torch.Tensor | None = None


def rest_em(model: SleepLM, tasks: list[Task], cfg: DreamingConfig, generator: LoRAAdapters | None = None,
            *, pad: int = 0) -> tuple[LoRAAdapters | None, list[DreamRound]]:
    """ReST-EM over several contexts (SEAL's protocol): each round, a reward round per task, then one
    fine-tune of a fresh generator adapter on the rewarded (C, dream) pairs of all tasks, left-padded with
    `pad` to one length. The model never changes. Returns (the generator, None if never rewarded; the rounds)."""
    rounds = []
    was_training = model.training
    model.eval()
    try:
        for round_ in range(cfg.rounds):
            pairs, starts = [], []
            for i, task in enumerate(tasks):
                seed = derive(cfg.seed, round_, i)
                result = reward_round(model, task.context, task.measure, cfg, seed, generator, task.prefix)
                for index, rewarded in zip(result.kept, result.rewards):
                    if rewarded:
                        pairs.append(torch.cat([task.context[0], torch.tensor(result.dreams[index], device=task.context.device)]))
                        starts.append(task.context.shape[1])
                rounds.append(result)
            if pairs and cfg.generator_steps:
                generator = finetune(model, [left_padded(pairs, starts, pad)], rank=cfg.rank, alpha=cfg.alpha,
                                     steps=cfg.generator_steps, lr=cfg.lr, seed=derive(cfg.seed, round_)).adapters
            if rounds:
                rounds[-1].generator_trained_on = len(pairs)
    finally:
        model.train(was_training)
    return generator, rounds
