"""The systems the `sequential` and `levels` benchmarks compare, each `learn(language, data)` then
`accuracy(language, closed, in_context)`:

    finetune     baselines.sft on the language's examples (closed-book layout), every parameter
    replay       the same, with as many examples of the earlier languages mixed in
    ewc          the same, plus EWC around the weights after each language (Fisher summed over them)
    in-context   the base holding only the current book: R[i, j] = language j asked after book i
    sleep-k      ContinualLearner with k memory levels, driven through its public API: read the book, wake
                 on the language's examples (book in context), then sleep (the book is consolidated into a
                 new level-1 expert, its gate trained to open on the book's content and to stay closed on
                 unrelated replay: whole examples of other languages the teacher writes from "book");
                 level ℓ's period makes it consolidate into level ℓ + 1 (periods in `periods`)
"""
from __future__ import annotations

import copy

import torch

from ...model import SleepLM
from ..baselines import EWC, fisher_diagonal, sft
from ..learner import ContinualLearner, LearnerConfig
from ..seeds import derive
from .sequential_world import BOOK, PAD, SEP, accuracy, book_length, example_length, with_book, with_levels

SYSTEMS = ("finetune", "replay", "ewc", "in-context", "sleep-1", "sleep-2", "sleep-3")
# Learning-rate grids (the first `--grid` points of each; same count for every system).
GRIDS = {"finetune": (1e-2, 3e-3, 1e-3), "replay": (1e-2, 3e-3, 1e-3), "ewc": (1e-2, 3e-3, 1e-3),
         "sleep": (1e-1, 3e-2, 1e-2)}
EWC_LAMBDA = 100.0
# Chosen by measurement on language 0 (40 steps, issue 13, "sum" gating): reverse KL with student samples
# (the spec's default) moved closed-book accuracy to 0-9% (divergence 13.8 -> 10.8); forward KL on teacher
# samples only reached 25-29%, and 79% with 120 steps. group_size 2 (the least allowed): imitation is off
# (LearnerConfig.imitation), so only its measurement before and after runs, kept cheap. Unrelated replay
# is whole examples (a book and its sentence), the reading a new expert must leave alone.
SEEDING = {"batch_size": 8, "sample_length": 19, "lam": 0.0, "beta": 0.0, "group_size": 2,
           "unrelated": 1.0, "unrelated_length": example_length() - len(BOOK)}
WAKE_LR = 1e-3  # the levels' own SGD on the summed wake gradient (book in context)


class FineTune:
    """finetune / replay / ewc: one model whose every parameter is fine-tuned on each language in turn."""

    def __init__(self, base_model: SleepLM, kind: str, lr: float, args, seed: int):
        self.model = copy.deepcopy(base_model)
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.kind, self.lr, self.args, self.seed = kind, lr, args, seed
        self.seen: list[dict] = []
        self.fisher: dict[str, torch.Tensor] | None = None
        self.update_steps = 0

    def learn(self, language: int, data: dict) -> None:
        train = data
        if self.kind == "replay" and self.seen:  # as many old examples as new, from every earlier language
            n = len(data["tokens"])
            per = max(1, n // len(self.seen))
            old = [{k: v[:per] for k, v in d.items()} for d in self.seen]
            train = {k: torch.cat([data[k]] + [d[k] for d in old]) for k in ("tokens", "targets", "loss_mask")}
        penalty = EWC(self.model, self.fisher, EWC_LAMBDA) if self.kind == "ewc" and self.fisher else None
        sft(self.model, train, steps=self.args.steps, lr=self.lr, batch_size=self.args.batch,
            seed=derive(self.seed, "finetune", language), penalty=penalty)
        self.update_steps += self.args.steps
        if self.kind == "ewc":
            fisher = fisher_diagonal(self.model, {k: v[: self.args.fisher_rows] for k, v in data.items()})
            self.fisher = fisher if self.fisher is None else {k: self.fisher[k] + fisher[k] for k in fisher}
        self.seen.append(data)

    def accuracy(self, language: int, closed: dict, in_context: dict) -> float:
        return accuracy(self.model, closed)


class InContext:
    """The base holding only the current book: every language is asked after the latest book."""

    def __init__(self, base_model: SleepLM):
        self.model, self.book, self.update_steps = base_model, None, 0

    def learn(self, language: int, data: dict) -> None:
        self.book = language

    def accuracy(self, language: int, closed: dict, in_context: dict) -> float:
        books = in_context if self.book is None else self.books[self.book]
        return accuracy(self.model, with_book(in_context, books))


class Sleep:
    """ContinualLearner with `levels` memory levels (periods: C_ℓ in wake steps), experts gated by `gating`;
    consolidation only (imitation and dreaming off: LearnerConfig switches, for compute)."""

    def __init__(self, base_model: SleepLM, levels: int, periods: list[int], lr: float, args, seed: int):
        model = with_levels(base_model, levels, pool=max(8, args.languages + 2), gating=args.gating)
        config = LearnerConfig(periods=periods, lr=WAKE_LR, prompt=SEP, blank=PAD, unrelated=BOOK, seed=seed,
                               seeding={**SEEDING, "steps": args.steps, "lr": lr}, imitation=False, dream=False)
        self.learner = ContinualLearner(model, config)
        self.model, self.args, self.seed, self.update_steps, self.sleep_steps = model, args, seed, 0, 0
        self.records: list[dict] = []  # each book's sleep (what opened, divergence before and after)

    def learn(self, language: int, data: dict) -> None:
        cut = book_length()
        full = torch.cat([data["in_context"]["tokens"], data["in_context"]["targets"][:, -1:]], dim=1)
        mask = data["in_context"]["loss_mask"][:, cut:]
        self.learner.read(full[:1, :cut])
        generator = torch.Generator().manual_seed(derive(self.seed, "wake", language))
        for _ in range(self.args.wake):
            rows = torch.randperm(len(full), generator=generator)[: self.args.batch]
            for record in self.learner.wake(full[rows, cut:], mask[rows])["sleeps"]:
                self.sleep_steps += self.args.steps if "receiving_level" in record else 0
        self.records.append(self.learner.sleep()["consolidation"])
        self.update_steps += self.args.steps
        self.model.eval()

    def accuracy(self, language: int, closed: dict, in_context: dict) -> float:
        return accuracy(self.model, closed)


def periods_for(levels: int, wake: int, slowest: int = 1) -> list[int]:
    """Level 1 is due once per language (every `wake` steps: it sends the previous book's expert up),
    each slower level half as often; `slowest` multiplies the slowest level's period."""
    periods = [wake * 2**level for level in range(levels)]
    periods[-1] *= slowest
    return periods


def make_system(name: str, base_model: SleepLM, lr: float, args, seed: int, periods: list[int] | None = None):
    if name in ("finetune", "replay", "ewc"):
        return FineTune(base_model, name, lr, args, seed)
    if name == "in-context":
        return InContext(base_model)
    if name.startswith("sleep-"):
        levels = int(name.split("-")[1])
        return Sleep(base_model, levels, periods or periods_for(levels, args.wake), lr, args, seed)
    raise ValueError(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")


def grid(name: str, size: int) -> list[float]:
    return list(GRIDS["sleep" if name.startswith("sleep-") else name][:size]) if name != "in-context" else [0.0]
