"""Benchmark `sequential` (issue 13; spec: sleep-continual.md, the two-language and class-incremental
studies): invented languages learned one after another, asked closed-book after each.

World: `tasks.languages` made small enough for a CPU-trained reader (WORLD: 4 nouns, 2 verbs, 2 adjectives,
word order and adjective rule, each language named; the name is written before the sentence, so that
closed-book it says which language is asked). A base (1 memory level) is pretrained with the book in
context on languages 1000..1999, until it translates from a book; its in-context accuracy on unseen
languages (500..) gates every result. Then T languages 0..T−1 are learned in order; after each, every
language's closed-book accuracy (book replaced by padding) fills a row of R, and continual.metrics gives
ACC, BWT, FWT and forgetting (b_j = the base's closed-book accuracy on language j).

Accuracy = fraction of the translation's syllables predicted right (teacher-forced; the closing "." is
not counted). Systems (make_system):
    finetune     baselines.sft on the language's examples (closed-book layout), every parameter
    replay       the same, with as many examples of the earlier languages mixed in
    ewc          the same, plus EWC around the weights after each language (Fisher summed over them)
    in-context   the base holding only the current book: R[i, j] = language j asked after book i
    sleep-k      ContinualLearner with k memory levels: read the book, wake on the language's examples
                 (book in context), reset_context consolidates the book into a level-1 expert; level ℓ's
                 period makes it consolidate into level ℓ + 1 (periods in `periods`)
Every system gets `--steps` update steps on each new language (Adam steps of fine-tuning, or the seeding
steps that consolidate the book); Sleep's upward consolidations are extra steps (reported as
"sleep_steps" and wall time). Each system's learning rate is chosen from a grid of the same size
(`--grid`) by ACC on a validation sequence of other languages (`--validation` of 100, 101).

Data: the world has 48 sentences; each language's are shuffled by (seed, language) and cut into `--test`
test sentences and `--train` training sentences, so no test row is ever trained on (`split`).

Default (`--seeds 3`, about 10 minutes on 2 cores once the base is cached; the base takes 10-15 minutes
once): T = 4, 30 steps, grid 2, 1 validation language, 32 training and 16 test sentences per language.
Larger setting: `--languages 6 --steps 120 --grid 3 --validation 2` (Sleep's consolidation reaches ~79%
closed-book on one language at 120 steps; --train + --test cannot exceed the world's 48 sentences).
"""
from __future__ import annotations

import argparse
import copy
import random
import time
from dataclasses import asdict, replace

import torch

from ... import validate
from ...model import SleepLM
from ...tasks import batch, languages
from ...train import TrainConfig
from .. import metrics
from ..baselines import EWC, fisher_diagonal, sft
from ..base import pretrained
from ..learner import ContinualLearner, LearnerConfig
from .sequential_report import DIAGNOSIS, forgetting_verdict, peak, peaks, plot  # noqa: F401 (the interface)

NAME = "sequential"
HELP = "invented languages learned one after another, asked closed-book: R[i, j], ACC, BWT, FWT, forgetting"
PRIMARY = "ACC"
COLUMNS = ["ACC", "BWT", "FWT", "forgetting", "last", "wall_s"]
PERCENT = ("ACC", "BWT", "FWT", "forgetting", "last")

WORLD = {"nouns": 4, "verbs": 2, "adjectives": 2, "named": 1, "english_loss": 1}
PRETRAIN = languages.Options(language=1000, languages=1000, **WORLD)
HELD_OUT_FIRST, HELD_OUT_SEED = 500, 2**31 - 5  # unseen languages for the base's gate
VALIDATION = (100, 101)  # the tuning sequence (its first --validation languages); test languages are 0..T−1
MODEL = {"layout": "AAA", "eviction": "none", "d_model": 64, "memory_levels": 1, "expert_pool": 8, "expert_rank": 8}
TRAINING = {"batch_size": 32, "lr": 0.008, "adamw_lr": 0.012, "warmup": 30, "min_lr_ratio": 1.0}
BASE_STEPS = 3000
GATE = 0.9  # the aim for in-context accuracy

# Learning-rate grids (the first `--grid` points of each; same count for every system).
GRIDS = {"finetune": (1e-2, 3e-3, 1e-3), "replay": (1e-2, 3e-3, 1e-3), "ewc": (1e-2, 3e-3, 1e-3),
         "sleep": (1e-1, 3e-2, 1e-2)}
EWC_LAMBDA = 100.0
# Chosen by measurement on language 0 (40 steps): reverse KL with student samples (the spec's default)
# moved closed-book accuracy to 0-9% (divergence 13.8 -> 10.8); forward KL on teacher samples only reached
# 25-29%, and 79% with 120 steps. group_size 2 (the least allowed): imitation is off (alpha 1), so only
# its measurement before and after runs, kept cheap.
SEEDING = {"batch_size": 8, "sample_length": 19, "alpha": 1.0, "lam": 0.0, "beta": 0.0, "group_size": 2}
WAKE_LR = 1e-3  # the levels' own SGD on the summed wake gradient (book in context)
SYSTEMS = ("finetune", "replay", "ewc", "in-context", "sleep-1", "sleep-2", "sleep-3")


# ----- the world -----

def options(language: int, context: int) -> languages.Options:
    return languages.Options(language=language, context=context, **WORLD)


def examples(language: int, n: int, seed: int, context: int) -> dict:
    return batch(languages.generate(options(language, context), n, seed))


def space() -> list[tuple[str, str, str, str]]:
    """Every sentence of WORLD (48: 2 adjectives × 4·3 ordered noun pairs × 2 verbs)."""
    return languages.sentences(options(0, 0))


def split(language: int, seed: int, train: int, test: int) -> tuple[list, list]:
    """(training sentences, test sentences) of `language`: the sentence space shuffled by (seed, language)
    and cut in two, so that no test sentence is ever trained on (each set has no repeats)."""
    sentences = space()
    if train + test > len(sentences):
        raise ValueError(f"--train {train} + --test {test} = {train + test} sentences, but a language of this world "
                         f"has only {len(sentences)} distinct ones (test sentences must not be trained on)")
    random.Random(f"split-{seed}-{language}").shuffle(sentences)
    return sentences[test : test + train], sentences[:test]


def language_sets(language: int, seed: int, train: int, test: int) -> dict:
    """The language's training and test examples, closed-book and with its book in context."""
    train_sentences, test_sentences = split(language, seed, train, test)
    render = lambda sentences, context: batch(languages.render(options(language, context), sentences))
    return {"train": render(train_sentences, 0), "in_context": render(train_sentences, 1),
            "closed": render(test_sentences, 0), "test_in_context": render(test_sentences, 1)}


def book_length() -> int:
    """Tokens before SEP (the book, or its padding): what the learner reads as its context."""
    ids = examples(0, 1, 0, 1)["tokens"][0].tolist()
    return ids.index(languages.VOCABULARY.encode(languages.SEP)[0])


def accuracy(model: SleepLM, data: dict) -> float:
    """Fraction of translation syllables predicted right (teacher-forced), "." excluded."""
    stop = languages.VOCABULARY.encode(languages.STOP)[0]
    scored = (data["answer_id"] >= 0) & (data["targets"] != stop)
    with torch.no_grad():
        predicted = torch.cat([model(data["tokens"][i : i + 128]).argmax(-1) for i in range(0, len(data["tokens"]), 128)])
    return ((predicted == data["targets"]) & scored).sum().item() / max(1, scored.sum().item())


def with_book(data: dict, book: dict) -> dict:
    """`data`'s sentences after `book`'s book (every position before SEP taken from `book`)."""
    cut = book_length()
    out = dict(data)
    out["tokens"] = torch.cat([book["tokens"][: len(data["tokens"]), :cut], data["tokens"][:, cut:]], dim=1)
    return out


# ----- the base -----

def base_config(steps: int = BASE_STEPS) -> TrainConfig:
    validate.positive_int("base_steps", steps)
    return TrainConfig(task="languages", task_options=asdict(PRETRAIN), model=dict(MODEL), steps=steps, seed=0,
                       eval_every=max(1, steps // 30), eval_size=128, checkpoint_every=steps,
                       log_every=max(1, steps // 60), **TRAINING)


def measure_base(model: SleepLM, n: int = 256) -> dict:
    """The gate: accuracy on unseen languages with the book in context, and closed-book."""
    model.eval()
    result = {}
    for name, context in (("in_context", 1), ("closed_book", 0)):
        data = batch(languages.generate(replace(options(HELD_OUT_FIRST, context), languages=100), n, HELD_OUT_SEED))
        result[name] = round(accuracy(model, data), 4)
    return result


def base(args) -> tuple[SleepLM, dict]:
    return pretrained(base_config(args.base_steps), measure_base, args.cache_dir, progress=False)


def with_levels(model: SleepLM, levels: int, pool: int) -> SleepLM:
    """A copy of the 1-level `model` with `levels` memory levels and `pool` experts per level: level 1 is
    the base's, the others start empty (their MLP's output projection zero), so it computes exactly what
    the base computes. One base thus serves every level count (no base is better trained than another)."""
    if model.config.memory_levels != 1:
        raise ValueError(f"with_levels extends a 1-level base, got memory_levels = {model.config.memory_levels}")
    validate.positive_int("levels", levels)
    grown = SleepLM(replace(model.config, memory_levels=levels, expert_pool=pool))
    state = {k: v for k, v in model.state_dict().items() if not k.split(".")[-1] in ("A", "B", "pool_router", "active")}
    missing, unexpected = grown.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(".levels." in k and (".levels.0." not in k or k.split(".")[-1] in ("A", "B", "pool_router", "active"))
               for k in missing), missing
    with torch.no_grad():
        for block in grown.blocks:
            for level in block.mlp.levels[1:]:
                for expert in level.base:
                    expert.down.weight.zero_()
    return grown.eval()


# ----- the systems -----

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
        sft(self.model, train, steps=self.args.steps, lr=self.lr, batch_size=self.args.batch, seed=self.seed + language,
            penalty=penalty)
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
    """ContinualLearner with `levels` memory levels (periods: C_ℓ in wake steps)."""

    def __init__(self, base_model: SleepLM, levels: int, periods: list[int], lr: float, args, seed: int):
        pad = languages.VOCABULARY.encode(languages.PAD)[0]
        sep = languages.VOCABULARY.encode(languages.SEP)
        model = with_levels(base_model, levels, pool=max(8, args.languages + 2))
        config = LearnerConfig(periods=periods, lr=WAKE_LR, prompt=sep, blank=pad, seed=seed,
                               seeding={**SEEDING, "steps": args.steps, "lr": lr})
        self.learner = ContinualLearner(model, config)
        self.model, self.args, self.update_steps, self.sleep_steps = model, args, 0, 0

    def learn(self, language: int, data: dict) -> None:
        cut = book_length()
        full = torch.cat([data["in_context"]["tokens"], data["in_context"]["targets"][:, -1:]], dim=1)
        mask = data["in_context"]["loss_mask"][:, cut:]
        self.learner.read(full[:1, :cut])
        generator = torch.Generator().manual_seed(language)
        for _ in range(self.args.wake):
            rows = torch.randperm(len(full), generator=generator)[: self.args.batch]
            for record in self.learner.wake(full[rows, cut:], mask[rows])["sleeps"]:
                self.sleep_steps += self.args.steps if "receiving_level" in record else 0
        self.learner.reset_context()
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


# ----- one sequence -----

def sequence(system, langs: list[int], args, seed: int, tick=lambda n=1: None) -> dict:
    """Learn `langs` in order; R[i][j] after each; test sentences are never training sentences (split)."""
    sets = {j: language_sets(j, seed, args.train, args.test) for j in langs}
    if isinstance(system, InContext):
        system.books = {j: sets[j]["test_in_context"] for j in langs}
    R = []
    started = time.perf_counter()
    for i in langs:
        system.learn(i, sets[i]["train"] if not isinstance(system, Sleep) else sets[i])
        R.append([system.accuracy(j, sets[j]["closed"], sets[j]["test_in_context"]) for j in langs])
        tick()
    return {"R": R, "wall_s": round(time.perf_counter() - started, 1)}


def closed_book_base(model: SleepLM, args, seed: int) -> list[float]:
    """b_j: the base's closed-book accuracy on language j's test sentences (for FWT)."""
    return [accuracy(model, language_sets(j, seed, args.train, args.test)["closed"]) for j in range(args.languages)]


def summarise(R: list[list[float]], b: list[float]) -> dict:
    return {"ACC": metrics.accuracy(R), "BWT": metrics.backward_transfer(R), "FWT": metrics.forward_transfer(R, b),
            "forgetting": metrics.forgetting(R), "last": R[-1][-1]}


def validation(args) -> list[int]:
    return list(VALIDATION[: args.validation])


def tune(name: str, base_model: SleepLM, args, seed: int, periods=None, tick=lambda n=1: None) -> tuple[float, dict]:
    """The grid point with the best ACC on the validation sequence, and every point's ACC."""
    scores = {}
    for lr in grid(name, args.grid):
        R = sequence(make_system(name, base_model, lr, args, seed, periods), validation(args), args, seed)["R"]
        scores[lr] = metrics.accuracy(R)
        tick(len(validation(args)))
    return max(scores, key=scores.get), scores


def run_system(name: str, base_model: SleepLM, args, seed: int, b: list[float], periods=None, tick=lambda n=1: None) -> dict:
    torch.manual_seed(seed)
    lr, scores = tune(name, base_model, args, seed, periods, tick)
    system = make_system(name, base_model, lr, args, seed, periods)
    out = sequence(system, list(range(args.languages)), args, seed, tick)
    result = {**summarise(out["R"], b), "lr": lr, "wall_s": out["wall_s"], "update_steps": system.update_steps}
    if isinstance(system, Sleep):
        result["sleep_steps"] = system.sleep_steps
    return {"metrics": result, "R": out["R"], "tuning": {str(k): v for k, v in scores.items()}}


# ----- the benchmark interface -----

def add_world_arguments(parser: argparse.ArgumentParser) -> None:
    """The sequence, data and budget flags (shared with the `levels` benchmark)."""
    parser.add_argument("--languages", type=int, default=4, help="T, languages learned in order (default 4, at least 2)")
    parser.add_argument("--steps", type=int, default=30, help="update steps per language for every system (default 30)")
    parser.add_argument("--wake", type=int, default=4, help="Sleep's wake steps per language (default 4)")
    parser.add_argument("--batch", type=int, default=8, help="examples per fine-tuning step and per wake step (default 8)")
    parser.add_argument("--train", type=int, default=32,
                        help="training sentences per language (default 32; --train + --test at most 48, the world's sentences)")
    parser.add_argument("--test", type=int, default=16, help="test sentences per language, none of them trained on (default 16)")
    parser.add_argument("--base-steps", type=int, default=BASE_STEPS, help=f"base pretraining steps (default {BASE_STEPS})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_world_arguments(parser)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {', '.join(SYSTEMS)}")
    parser.add_argument("--grid", type=int, default=2, help="learning rates tried per system (1..3, default 2)")
    parser.add_argument("--validation", type=int, default=1,
                        help=f"languages in the tuning sequence (1 or 2: {VALIDATION}; default 1)")
    parser.add_argument("--fisher-rows", type=int, default=32, help="EWC: rows for the Fisher diagonal (default 32)")


def check_world(args) -> None:
    """add_world_arguments' flags, or a clear error naming the flag."""
    validate.integer("--languages", args.languages, 2, 8)
    for flag in ("steps", "wake", "batch", "train", "test"):
        validate.positive_int(f"--{flag}", getattr(args, flag))
    split(0, 0, args.train, args.test)  # room for disjoint training and test sentences


def check(args) -> list[str]:
    """The chosen systems, or a clear error naming the flag."""
    check_world(args)
    validate.positive_int("--fisher-rows", args.fisher_rows)
    validate.integer("--grid", args.grid, 1, 3)
    validate.integer("--validation", args.validation, 1, len(VALIDATION))
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if not systems or unknown:
        raise ValueError(f"--systems: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SYSTEMS)}")
    return systems


# Measured seconds (one thread, this machine): an Adam step of fine-tuning, a seeding step, the fixed cost of
# one consolidation (its held-out replay and the divergence / reward before and after), one R row.
SECONDS = {"sft_row": 0.008, "seeding_step": 0.1, "consolidation": 1.0, "test_row": 0.003, "fisher_row": 0.04}


def consolidations(periods: list[int], languages_: int, wake: int) -> int:
    """Seedings in one sequence: one per book, one per due level that has a slower level to send to."""
    return languages_ + sum(languages_ * wake // p for p in periods[:-1] if p)


def sequence_seconds(name: str, args, languages_: int, periods: list[int] | None = None) -> float:
    evaluation = languages_**2 * args.test * SECONDS["test_row"]  # a row of R per language
    if name.startswith("sleep-"):
        periods = periods or periods_for(int(name.split("-")[1]), args.wake)
        n = consolidations(periods, languages_, args.wake)
        return n * (args.steps * SECONDS["seeding_step"] + SECONDS["consolidation"]) + evaluation
    steps = 0 if name == "in-context" else languages_ * args.steps * args.batch * SECONDS["sft_row"]
    fisher = languages_ * args.fisher_rows * SECONDS["fisher_row"] if name == "ewc" else 0
    return steps + fisher + evaluation


def estimate(args) -> float:
    """Seconds per seed on 2 cores, one thread (base training, about 9 minutes, only when it is not cached)."""
    return sum(len(grid(s, args.grid)) * sequence_seconds(s, args, args.validation)
               + sequence_seconds(s, args, args.languages) for s in check(args))


def units(args) -> int:
    return sum(len(grid(s, args.grid)) * args.validation + args.languages for s in check(args))


def run_seed(args, seed: int, tick) -> dict:
    systems = check(args)
    model, report = base(args)
    gate = {"in_context": report["in_context"], "closed_book": report["closed_book"]}
    out = {"systems": {}, "R": {}, "tuning": {}, "base": gate, "b": closed_book_base(model, args, seed)}
    for name in systems:
        result = run_system(name, model, args, seed, out["b"], tick=tick)
        out["systems"][name] = result["metrics"]
        out["R"][name], out["tuning"][name] = result["R"], result["tuning"]
    return out


def data_note() -> str:
    return (f"Data: each language's test sentences are disjoint from its training sentences (the world's "
            f"{len(space())} sentences shuffled per seed and language and cut in two: `--test` for testing, "
            f"the next `--train` for training); every language is asked on the same test sentences after each "
            f"language learnt.")


def sleep_note() -> str:
    return (f"Sleep: seeding {SEEDING} (α = 1: distillation only, no imitation RL, for compute), replay prompted "
            f"by SEP, the student reads padding where the book was; the wake steps only sum gradients into the "
            f"levels (SGD lr {WAKE_LR} at each level's period); each book's consolidation takes `--steps` seeding "
            f"steps, and the upward consolidations are extra (column sleep_steps).")


def settings_note() -> str:
    return (f"Budget: every system takes the same number of update steps on each new language (`--steps`: Adam "
            f"steps of fine-tuning, or the seeding steps that consolidate the book); Sleep's upward "
            f"consolidations are extra. {sleep_note()} Level ℓ's period = wake × 2^(ℓ−1) (level 1 sends the "
            f"previous book's expert up once per language). EWC λ = {EWC_LAMBDA}. Tuning: each system's learning "
            f"rate from the first `--grid` points of its grid {GRIDS} by ACC on the first `--validation` languages "
            f"of {VALIDATION} (never the test languages 0..T−1). {data_note()}")


def notes(summary: dict, per_seed: list[dict]) -> str:
    gate = [r["base"]["in_context"] for r in per_seed]
    lines = [f"Base (one for every seed): in-context accuracy on unseen languages {gate[0]:.1%}, closed-book "
             f"{per_seed[0]['base']['closed_book']:.1%} (gate {GATE:.0%}: {'passed' if gate[0] >= GATE else 'NOT passed'})."]
    sleeps = [s for s in summary if s.startswith("sleep-")]
    if "finetune" in summary and sleeps:
        lines.append(forgetting_verdict(summary, per_seed, sleeps))
    if len(sleeps) > 1:
        accs = ", ".join(f"{s} {summary[s]['ACC']['mean']:.1%} ± {summary[s]['ACC']['std']:.1%}" for s in sleeps)
        lines.append(f"More levels: ACC {accs}.")
    learnt = peaks(per_seed)
    lines.append("Best accuracy reached on the earlier languages before the end (what there was to forget), per "
                 "system: " + ", ".join(f"{s} {learnt[s]:.1%}" for s in summary if s in learnt) + ".")
    chosen = {s: sorted({r["systems"][s]["lr"] for r in per_seed if s in r["systems"]}) for s in summary}
    lines.append("Learning rates chosen per system (over seeds): " + "; ".join(f"{s} {v}" for s, v in chosen.items()) + ".")
    lines.append(settings_note())
    lines.append(DIAGNOSIS)
    lines.append("R matrices per seed and system, chosen learning rates and tuning scores: seed-*.json.")
    return "\n\n".join(lines)


def bases(args) -> dict:
    """The world's pretrained base (trained once, then loaded from the cache): {name: report}."""
    return {"languages": base(args)[1]}
