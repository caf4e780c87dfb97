"""The systems of the knowledge benchmark (issue 13, benchmark 1: the paper's Table 3) on the `facts` world.

Every system gets one passage (token ids) and changes a copy of the base so that it can answer questions
about the passage later, closed-book. None ever sees a question about the passage or its answer:

    finetune                 full fine-tuning on the passage (next-token loss on every passage token)
    finetune+restatements    full fine-tuning on the passage and on restatements the model wrote after reading
                             it (samples after SEP, learnt after padding where the passage was; no RL)
    seal                     SEAL-style: dreams from a generator trained by ReST-EM on other passages, kept by
                             Sleep's gradient importance (as Sleep's are, so that the two differ only in
                             consolidation and expansion), learnt by full fine-tuning
    sleep                    knowledge seeding of the passage into a new level-1 expert (teacher = the model
                             reading the passage, student = the model reading padding), then the same dreams
                             learnt into that expert (our decision: a sleep writes nothing else)
    ablations of sleep       no dreaming / no gradient selection (random dreams kept) / no random expert /
                             no imitation (α = 1: distillation only) / no expansion (the level's existing base
                             experts learn instead of a new one)

Test-time dreaming uses no measure: τ (closed-book accuracy on a passage's questions) only ever rewards
dreams about the generator's *training* passages (train_generator), as in SEAL's protocol.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ...model import SleepLM
from ...tasks import facts, score
from ..baselines import sft
from ..dreaming import DreamingConfig, propose, reward_round
from ..lora import LoRAAdapters, finetune
from ..rewards import task_judge
from ..seeding import SeedingConfig, consolidate, existing_experts, prepare_student, sample, snapshot, train_expert

SEP = facts.VOCABULARY.encode(facts.SEP)[0]
PAD = facts.VOCABULARY.encode(facts.PAD)[0]
SLEEP_VARIANTS = ("sleep", "no dreaming", "no gradient selection", "no random expert", "no imitation",
                  "no expansion")
SFT_SYSTEMS = ("finetune", "finetune+restatements", "seal")


@dataclass(frozen=True)
class Budget:
    """What every system may spend on one passage: `steps` update steps (fine-tuning steps; seeding steps for
    a sleep, whose dreams then take `dream_steps` more on the new expert), restatements / dreams sampled."""

    steps: int = 40
    dream_steps: int = 10
    dream_lr: float = 1e-2
    restatements: int = 8
    restatement_length: int = 20
    seeding: dict | None = None
    dreaming: dict | None = None

    def seeding_config(self, seed: int, **changes) -> SeedingConfig:
        return SeedingConfig(**{**(self.seeding or {}), "steps": self.steps, "seed": seed, **changes})

    def dreaming_config(self, seed: int, **changes) -> DreamingConfig:
        return DreamingConfig(**{**(self.dreaming or {}), "seed": seed, **changes})


# ----- the world's layouts and measures -----

def passage(raw: dict) -> torch.Tensor:
    return torch.tensor([facts.passage_tokens(raw)])


def context(raw: dict) -> torch.Tensor:
    """What dreams and restatements are sampled after: the passage, then SEP (the questions' opener)."""
    return torch.cat([passage(raw), torch.tensor([[SEP]])], dim=1)


def blank(raw: dict) -> torch.Tensor:
    """context's closed-book twin: padding where the passage was, then SEP (the layout questions come in)."""
    return torch.tensor([[PAD] * len(facts.passage_tokens(raw)) + [SEP]])


@torch.no_grad()
def accuracy(model: SleepLM, raw: dict, in_context: bool = False) -> float:
    """Answer accuracy on every question (every phrasing) about raw's facts, closed-book or in context."""
    data = (facts.in_context_batch if in_context else facts.closed_book_batch)(raw)
    model.eval()
    return score(model(data["tokens"]).argmax(-1), data)["answer"]


@torch.no_grad()
def reading(model: SleepLM, probe: dict) -> float:
    """In-context accuracy on the probe's passages (other knowledge: the reading skill an update may destroy)."""
    model.eval()
    return score(model(probe["tokens"]).argmax(-1), probe)["answer"]


def rows(sequences: list[torch.Tensor], scored_from: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token data from rows of different lengths: left-padded with PAD, loss from scored_from[i] on."""
    width = max(s.numel() for s in sequences)
    tokens = torch.full((len(sequences), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(sequences), width - 1, dtype=torch.long)
    for i, (sequence, start) in enumerate(zip(sequences, scored_from)):
        offset = width - sequence.numel()
        tokens[i, offset:] = sequence
        mask[i, offset + max(start, 1) - 1 :] = 1
    return tokens[:, :-1], tokens[:, 1:], mask


def writing(name: str, model: SleepLM, raw: dict, budget: Budget, seed: int, generator=None):
    """The rows system `name` wrote itself (restatements, or kept dreams), for `fidelity`."""
    if name == "finetune+restatements":
        return rows(*restatements(model, raw, budget, seed))
    return dream_data(model, raw, budget, seed, generator)


def fidelity(data, raw: dict) -> dict:
    """What self-written rows (restatements or dreams) state about the passage's person: the share of their
    true facts stated at least once ("true"), and the share of stated facts about them that are wrong
    ("wrong"); facts about other names count as wrong too."""
    tokens, targets, mask = data
    truth = {("".join(p["name"].split()), a, p[a]) for p in raw["entities"] for a in p if a != "name"}
    stated = set()
    for row, scored in zip(targets, mask):
        stated |= facts.read_facts(facts.VOCABULARY.decode(row[scored.bool()].tolist()))
    return {"true": len(stated & truth) / len(truth), "wrong": len(stated - truth) / len(stated) if stated else 0.0,
            "stated": float(len(stated))}


# ----- the dream generator (trained on other passages, with their questions as τ) -----

def train_generator(model: SleepLM, training: list[dict], budget: Budget, seed: int) -> LoRAAdapters | None:
    """ReST-EM over `training` passages, for the dreaming config's rounds: dream about each passage, reward the
    dreams whose isolated copy answers that passage's questions better closed-book, then fine-tune the
    generator once on the rewarded (passage, dream) pairs of all passages (left-padded to one length). The
    model never changes; None when no dream was ever rewarded."""
    cfg = budget.dreaming_config(seed)
    generator = None
    for round_ in range(cfg.rounds):
        pairs, starts = [], []
        for i, raw in enumerate(training):
            result = reward_round(model, context(raw), lambda m, raw=raw: accuracy(m, raw), cfg,
                                  (seed * 1009 + i) * 31 + round_, generator, prefix=blank(raw))
            for index, rewarded in zip(result.kept, result.rewards):
                if rewarded:
                    pairs.append(torch.cat([context(raw)[0], torch.tensor(result.dreams[index])]))
                    starts.append(context(raw).shape[1])
        if pairs and cfg.generator_steps:
            generator = finetune(model, [rows(pairs, starts)], rank=cfg.rank, alpha=cfg.alpha,
                                 steps=cfg.generator_steps, lr=cfg.lr, seed=seed * 1009 + round_).adapters
    return generator


def kept_dreams(model: SleepLM, raw: dict, budget: Budget, seed: int, generator: LoRAAdapters | None,
                **changes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dreams kept for `raw` (top k by gradient importance + b random), as data in the closed-book layout."""
    cfg = budget.dreaming_config(seed, **changes)
    _, datasets, _, kept = propose(model, context(raw), cfg, seed, generator, prefix=blank(raw))
    return tuple(torch.cat([datasets[i][k] for i in kept]) for k in range(3))


# ----- the systems -----

def passage_data(model: SleepLM, raw: dict, budget: Budget, seed: int, generator=None):
    """finetune's rows: the passage itself."""
    return rows([passage(raw)[0]], [1])


def restatements(model: SleepLM, raw: dict, budget: Budget, seed: int):
    """Restatements the model writes after reading the passage (sampled after SEP), each as a row read after
    padding where the passage was (the closed-book layout), scored on what was written."""
    prompts = torch.tensor([[SEP]] * budget.restatements)
    written = sample(model, prompts, budget.restatement_length, 1.0, seed,
                     passage(raw).expand(budget.restatements, -1))[:, 1:]
    prefix = blank(raw)[0]
    return [torch.cat([prefix, w]) for w in written], [prefix.numel()] * len(written)


def restatement_data(model: SleepLM, raw: dict, budget: Budget, seed: int, generator=None):
    """finetune+restatements' rows: the passage, and the model's restatements of it."""
    sequences, starts = restatements(model, raw, budget, seed)
    return rows([passage(raw)[0], *sequences], [1, *starts])


def dream_data(model: SleepLM, raw: dict, budget: Budget, seed: int, generator=None):
    """seal's rows: the kept dreams."""
    return kept_dreams(model, raw, budget, seed, generator)


DATA = {"finetune": passage_data, "finetune+restatements": restatement_data, "seal": dream_data}


def fine_tune_system(name: str):
    """The system `name` of SFT_SYSTEMS: full fine-tuning (budget.steps Adam steps at lr) on its rows."""
    def system(model: SleepLM, raw: dict, lr: float, budget: Budget, seed: int, generator=None) -> None:
        sft(model, DATA[name](model, raw, budget, seed, generator), steps=budget.steps, lr=lr, seed=seed)
    return system


SFT = {name: fine_tune_system(name) for name in SFT_SYSTEMS}


def sleep(model: SleepLM, raw: dict, budget: Budget, seed: int, generator: LoRAAdapters | None,
          variant: str = "sleep", after_consolidation=None) -> None:
    """One sleep on the passage (variant: one of SLEEP_VARIANTS). `after_consolidation(model)` is called
    between the two stages (the "no dreaming" ablation is the model at that point)."""
    if variant not in SLEEP_VARIANTS:
        raise ValueError(f"variant must be one of {SLEEP_VARIANTS}, got {variant!r}")
    new = consolidate_passage(model, raw, budget, seed, variant)
    if after_consolidation is not None:
        after_consolidation(model)
    if variant != "no dreaming":
        learn_dreams(model, new, raw, budget, seed, generator, variant)


def consolidate_passage(model: SleepLM, raw: dict, budget: Budget, seed: int, variant: str = "sleep"):
    """Stage 1: knowledge seeding of the passage into a new level-1 expert (or, "no expansion", into the
    level's existing experts); returns what was trained."""
    teacher = snapshot(model)
    if variant == "no expansion":
        new = existing_experts(model, 0)
    else:
        new, _ = prepare_student(model, None, 0, torch.Generator().manual_seed(seed))
    cfg = budget.seeding_config(seed, **({"alpha": 1.0} if variant == "no imitation" else {}))
    consolidate(teacher, model, new, torch.tensor([[SEP]]), cfg, context=passage(raw),
                blank=torch.full_like(passage(raw), PAD), judge=JUDGE)
    return new


def learn_dreams(model: SleepLM, new, raw: dict, budget: Budget, seed: int, generator: LoRAAdapters | None,
                 variant: str = "sleep", lr: float | None = None) -> None:
    """Stage 2 at test time: the kept dreams about the passage learnt into what stage 1 trained."""
    changes = {"no gradient selection": {"keep_top": 0, "keep_random": _kept(budget)},
               "no random expert": {"random_expert": False}}.get(variant, {})
    train_expert(model, new, kept_dreams(model, raw, budget, seed, generator, **changes),
                 steps=budget.dream_steps, lr=budget.dream_lr if lr is None else lr)


def _kept(budget: Budget) -> int:
    cfg = budget.dreaming_config(0)
    return cfg.keep_top + cfg.keep_random


JUDGE = task_judge(facts.judge, decode=facts.VOCABULARY.decode)
