"""The systems of the SQuAD benchmark (issue 20; paper 2's Table 3 on real text): each gets one passage and
changes its copy of the base so that it can answer the passage's questions later, closed-book. None sees a
question or an answer. All share `system.learn(passage, seed)` and `system.model` (the transformers model).

    finetune                 every parameter fine-tuned on the passage's text (next-token loss; baselines.sft)
    finetune+restatements    SEAL-style without RL: the model, reading the passage, writes `restatements`
                             (squad_qa.RESTATE, sampled); every parameter fine-tuned on them, each after the
                             instruction alone (the passage gone), and on the passage
    sleep                    the ContinualLearner as `lmsleep continual demo --model` runs it: levels attached,
                             read the passage, sleep (knowledge seeding into a new gated expert of level 1)

Budgets are matched in update steps: every system takes `steps` optimiser steps (seeding steps for a sleep).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch

from ...stream import sample
from ...tasks import squad
from .. import demo_real, squad_qa
from ..baselines import sft
from ..causal_lm import AttachedLM
from ..hf_levels import attach
from ..learner import ContinualLearner

SYSTEMS = ("finetune", "finetune+restatements", "sleep")


@dataclass(frozen=True)
class Budget:
    steps: int = demo_real.SEEDING["steps"]
    lr: float = 5e-5  # fine-tuning's Adam step on every parameter (the benchmark tunes it: squad_tuning)
    restatements: int = 4
    restatement_length: int = demo_real.SEEDING["sample_length"]


def _lm(model) -> AttachedLM:
    """The learner's view of a plain transformers model: levels attached (nothing unlocked: the same model)."""
    return AttachedLM(attach(model, **demo_real.LEVELS), name="base")


def _row(prefix: list[int], text: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, targets, loss mask) [1, n] of `text` after `prefix`, the loss on `text` only."""
    ids = torch.tensor([prefix + text])
    mask = torch.zeros(1, ids.shape[1] - 1, dtype=torch.long)
    mask[:, len(prefix) - 1:] = 1
    return ids[:, :-1], ids[:, 1:], mask


def _stack(rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of different lengths, right-padded (padding masked out of the loss)."""
    width = max(r[0].shape[1] for r in rows)
    pad = lambda x: torch.nn.functional.pad(x, (0, width - x.shape[1]))  # noqa: E731
    return tuple(torch.cat([pad(r[i]) for r in rows]) for i in range(3))


class FineTuner:
    def __init__(self, base, tokenizer, budget: Budget, restate: bool):
        self.model, self.tokenizer, self.budget, self.restate = copy.deepcopy(base), tokenizer, budget, restate
        self.lm = _lm(self.model)  # levels attached in place, nothing unlocked: the same model

    def rows(self, passage: squad.Passage, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What this system fine-tunes on: the passage, read from its start token (where the tokenizer has
        one), and with `restate` the model's restatements of it, each after the instruction alone."""
        text = self.tokenizer(passage.context)["input_ids"]
        bos = self.tokenizer.bos_token_id
        rows = [_row([bos], text) if bos is not None else _row(text[:1], text[1:])]
        if self.restate:
            context, prompt = squad_qa.layout(self.tokenizer, passage)
            prompts = prompt.expand(self.budget.restatements, -1)
            written = sample(self.lm, prompts, self.budget.restatement_length, demo_real.SEEDING.get("temperature", 1.0),
                             seed, context.expand(self.budget.restatements, -1))[:, prompt.shape[1]:]
            rows += [_row(prompt[0].tolist(), w.tolist()) for w in written]
        return _stack(rows)

    def fit(self, rows, seed: int) -> None:
        """`budget.steps` Adam steps at `budget.lr` on every parameter of the model."""
        for p in self.lm.parameters():
            p.requires_grad_(True)
        sft(self.lm, rows, steps=self.budget.steps, lr=self.budget.lr, seed=seed)

    def learn(self, passage: squad.Passage, seed: int) -> None:
        self.fit(self.rows(passage, seed), seed)


class Sleeper:
    def __init__(self, base, tokenizer, budget: Budget):
        self.model, self.tokenizer, self.budget = copy.deepcopy(base), tokenizer, budget

    def learn(self, passage: squad.Passage, seed: int) -> dict:
        config, context = demo_real.learner_config(self.tokenizer, passage, seed)
        config = replace(config, seeding={**config.seeding, "steps": self.budget.steps})
        learner = ContinualLearner(_lm(self.model), config)
        learner.read(context)
        return learner.sleep()["consolidation"]


def make(name: str, base, tokenizer, budget: Budget):
    if name == "sleep":
        return Sleeper(base, tokenizer, budget)
    return FineTuner(base, tokenizer, budget, restate=name == "finetune+restatements")
