"""The systems of the knowledge benchmark (issue 13, benchmark 1: the paper's Table 3) on the `facts` world.

Every system gets one passage (token ids) and changes its model so that it can answer questions about the
passage later, closed-book. None ever sees a question about the passage or its answer. All share one small
interface: `system.model`, `system.learn(raw, seed)`.

    finetune                 full fine-tuning on the passage (baselines.sft)
    finetune+restatements    full fine-tuning on the passage and on restatements the model wrote after reading
                             it (samples after SEP, learnt after padding where the passage was; no RL)
    seal                     SEAL-style: the ContinualLearner with consolidation off; its dreams (from the same
                             generator, kept by the same gradient importance as Sleep's) learnt by fine-tuning
                             every parameter
    sleep                    the ContinualLearner as users run it: read the passage, sleep (knowledge seeding of
                             the passage into a new gated level-1 expert, then its kept dreams learnt into that
                             expert: learn_dreams "expert")
    ablations of sleep       LearnerConfig switches of the same learner (VARIANTS)

Test-time dreaming uses no measure: τ (closed-book accuracy on a passage's questions) only ever rewards
dreams about the generator's *training* passages (`train_generator`, the learner's ReST-EM), as in SEAL.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch

from ...config import SleepConfig
from ...model import SleepLM
from ...stream import sample
from ...tasks import answer_accuracy, facts
from ..baselines import sft
from ..dreaming import left_padded
from ..learner import ContinualLearner, LearnerConfig
from ..levels import set_expert_gating
from ..lora import LoRAAdapters
from ..rewards import task_judge

SEP = facts.VOCABULARY.encode(facts.SEP)[0]
PAD = facts.VOCABULARY.encode(facts.PAD)[0]
JUDGE = task_judge(facts.judge, decode=facts.VOCABULARY.decode)

# Each ablation is a switch of the learner (LearnerConfig fields; "gating" switches the model's expert gating).
VARIANTS = {
    "sleep": {},
    "no dreaming": {"dream": False},
    "no gradient selection": {"dreaming": {"selection": "random"}},
    "no random expert": {"dreaming": {"random_expert": False}},
    "no imitation": {"imitation": False},
    "no expansion": {"expansion": False},
    "no off path": {"unrelated": None, "gating": "sum"},  # the always-on experts of before issue 18
}
SLEEP_VARIANTS = tuple(VARIANTS)
SFT_SYSTEMS = ("finetune", "finetune+restatements", "seal")
DEFAULT_GATING = SleepConfig().expert_gating


@dataclass(frozen=True)
class Budget:
    """What every system may spend on one passage: `steps` update steps (fine-tuning steps; seeding steps for
    a sleep, whose kept dreams then take `dream_steps` more on the new expert), restatements / dreams sampled;
    `periods` of the sleeps' levels (in wake steps: each passage read is one; 0 freezes a level, so no upward
    consolidation)."""

    steps: int = 40
    dream_steps: int = 10
    dream_lr: float = 1e-2
    restatements: int = 8
    restatement_length: int = 20
    seeding: dict | None = None
    dreaming: dict | None = None
    periods: tuple[int, ...] | None = None


# ----- the world's layouts and its one evaluator -----

def passage(raw: dict) -> torch.Tensor:
    return torch.tensor([facts.passage_tokens(raw)])


def blank(raw: dict) -> torch.Tensor:
    """The closed-book twin of passage + SEP: padding where the passage was, then SEP (the layout questions
    come in)."""
    return torch.tensor([[PAD] * len(facts.passage_tokens(raw)) + [SEP]])


def accuracy(model: SleepLM, raw: dict, in_context: bool = False) -> float:
    """Answer accuracy on every question (every phrasing) about raw's facts, closed-book or in context."""
    return answer_accuracy(model, (facts.in_context_batch if in_context else facts.closed_book_batch)(raw))


def reading(model: SleepLM, probe: dict) -> float:
    """In-context accuracy on the probe's passages (other knowledge: the reading skill an update may destroy)."""
    return answer_accuracy(model, probe)


def rows(sequences: list[torch.Tensor], scored_from: list[int]):
    return left_padded(sequences, scored_from, PAD)


def restatements(model: SleepLM, raw: dict, budget: Budget, seed: int):
    """Restatements the model writes after reading the passage (sampled after SEP), each as a row read after
    padding where the passage was (the closed-book layout), scored on what was written."""
    prompts = torch.tensor([[SEP]] * budget.restatements)
    written = sample(model, prompts, budget.restatement_length, 1.0, seed,
                     passage(raw).expand(budget.restatements, -1))[:, 1:]
    prefix = blank(raw)[0]
    return [torch.cat([prefix, w]) for w in written], [prefix.numel()] * len(written)


def passage_data(model: SleepLM, raw: dict, budget: Budget, seed: int):
    """finetune's rows: the passage itself."""
    return rows([passage(raw)[0]], [1])


def restatement_data(model: SleepLM, raw: dict, budget: Budget, seed: int):
    """finetune+restatements' rows: the passage, and the model's restatements of it."""
    sequences, starts = restatements(model, raw, budget, seed)
    return rows([passage(raw)[0], *sequences], [1, *starts])


DATA = {"finetune": passage_data, "finetune+restatements": restatement_data}


def fidelity(data, raw: dict) -> dict:
    """What self-written rows (restatements or dreams) state about the passage's person: the share of their
    true facts stated at least once ("true"), and the share of stated facts about them that are wrong
    ("wrong"); facts about other names count as wrong too."""
    _, targets, mask = data
    truth = {("".join(p["name"].split()), a, p[a]) for p in raw["entities"] for a in p if a != "name"}
    stated = set()
    for row, scored in zip(targets, mask):
        stated |= facts.read_facts(facts.VOCABULARY.decode(row[scored.bool()].tolist()))
    return {"true": len(stated & truth) / len(truth), "wrong": len(stated - truth) / len(stated) if stated else 0.0,
            "stated": float(len(stated))}


# ----- the systems -----

class FineTuner:
    """finetune / finetune+restatements: `budget.steps` Adam steps on every parameter at `lr` on its rows."""

    def __init__(self, model: SleepLM, name: str, lr: float, budget: Budget):
        if name not in DATA:
            raise ValueError(f"fine-tuning system must be one of {tuple(DATA)}, got {name!r}")
        self.model, self.name, self.lr, self.budget = model, name, lr, budget
        for p in model.parameters():
            p.requires_grad_(True)

    def learn(self, raw: dict, seed: int) -> None:
        sft(self.model, DATA[self.name](self.model, raw, self.budget, seed), steps=self.budget.steps, lr=self.lr,
            seed=seed)


def learner_config(budget: Budget, seed: int, lr: float | None = None, variant: str = "sleep", *,
                   levels: int = 2, seal: bool = False) -> LearnerConfig:
    """The learner of a sleep `variant` (VARIANTS), or of the SEAL-style system (consolidation off, kept
    dreams learnt into every parameter for budget.steps steps at `lr`)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {SLEEP_VARIANTS}, got {variant!r}")
    changes = {k: v for k, v in VARIANTS[variant].items() if k != "gating"}
    dreaming = {**(budget.dreaming or {}), **changes.pop("dreaming", {})}
    periods = list(budget.periods or ())[:levels]
    fields = {"periods": periods + [0] * (levels - len(periods)), "seeding": {**(budget.seeding or {}), "steps": budget.steps},
              "dreaming": dreaming, "prompt": [SEP], "blank": PAD, "unrelated": [PAD], "learn_dreams": "expert",
              "dream_steps": budget.dream_steps, "dream_lr": budget.dream_lr if lr is None else lr, "seed": seed,
              **changes}
    if seal:
        fields.update(consolidation=False, learn_dreams="model", dream_steps=budget.steps, dream_lr=lr)
    return LearnerConfig(**fields)


class Sleeper:
    """A ContinualLearner on `model` that reads each passage and sleeps on it (`wake`: the passage read is also
    one wake step, so the levels' periods count passages: upward consolidation when a period is set). The
    model's experts take `gating` (default: the library's default; a base cached by an older lmsleep may
    have recorded another, and its weights do not depend on it)."""

    def __init__(self, model: SleepLM, config: LearnerConfig, generator: LoRAAdapters | None, gating: str | None = None,
                 run_dir=None):
        set_expert_gating(model, gating or DEFAULT_GATING)
        self.model = model
        self.learner = ContinualLearner(model, config, run_dir, judge=JUDGE)
        self.learner.dream_generator = generator
        self.wake = any(config.periods)
        self.records: list[dict] = []

    def learn(self, raw: dict, seed: int = 0, after_consolidation=None) -> None:
        """Read the passage, sleep on it. `after_consolidation(model)` is called between the sleep's two stages
        (the "no dreaming" row is the model at that point)."""
        self.learner.read(passage(raw))
        woke = self.learner.wake(passage(raw))["sleeps"] if self.wake else []  # a level's sleep, when due
        self.records.append({"level sleeps": woke, "consolidation": self.learner.reset_context()})
        if after_consolidation is not None:
            after_consolidation(self.model)
        if self.learner.config.dream:
            self.records[-1]["dreaming"] = self.learner.dream()


def sleeper(base: SleepLM, budget: Budget, seed: int, generator, variant: str = "sleep", lr: float | None = None,
            levels: int = 2) -> Sleeper:
    """Sleep (or one of its ablations) on a copy of `base`."""
    return Sleeper(copy.deepcopy(base), learner_config(budget, seed, lr, variant, levels=levels), generator,
                   VARIANTS[variant].get("gating"))


def seal(base: SleepLM, budget: Budget, seed: int, generator, lr: float) -> Sleeper:
    return Sleeper(copy.deepcopy(base), learner_config(budget, seed, lr, levels=base.config.memory_levels, seal=True),
                   generator)


def system(name: str, base: SleepLM, lr: float, budget: Budget, seed: int, generator):
    """The fine-tuning system `name` of SFT_SYSTEMS on a copy of `base`."""
    if name == "seal":
        return seal(base, budget, seed, generator, lr)
    return FineTuner(copy.deepcopy(base), name, lr, budget)


def sleep(model: SleepLM, raw: dict, budget: Budget, seed: int, generator, variant: str = "sleep") -> None:
    """One sleep of `variant` on one passage, in place on `model`."""
    config = learner_config(budget, seed, None, variant, levels=model.config.memory_levels)
    Sleeper(model, config, generator, VARIANTS[variant].get("gating")).learn(raw, seed)


def kept_dreams(base: SleepLM, raw: dict, budget: Budget, seed: int, generator) -> tuple:
    """The dreams a sleep keeps for `raw` (in the closed-book layout), read off its learner without learning
    them: for self-edit fidelity."""
    config = learner_config(budget, seed, levels=base.config.memory_levels)
    learner = ContinualLearner(copy.deepcopy(base), replace(config, learn_dreams="none", consolidation=False), judge=JUDGE)
    learner.dream_generator = generator
    learner.read(passage(raw))
    learner.sleep()
    return learner.last_dreams


def train_generator(base: SleepLM, training: list[dict], budget: Budget, seed: int) -> LoRAAdapters | None:
    """The learner's ReST-EM over `training` passages (their questions as τ); the base never changes. None
    when no dream was ever rewarded."""
    learner = ContinualLearner(copy.deepcopy(base), learner_config(budget, seed, levels=base.config.memory_levels),
                               judge=JUDGE)
    learner.train_dream_generator([(passage(raw), lambda m, raw=raw: accuracy(m, raw)) for raw in training])
    return learner.dream_generator
