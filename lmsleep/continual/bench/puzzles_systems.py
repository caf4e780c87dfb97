"""The systems of the puzzles benchmark (lmsleep.continual.bench.puzzles_bench) on one problem's demonstrations.

    in_context   the base answers the test with the demonstrations in context
    ttt          a baseline: LoRA copies fine-tuned on the leave-one-out demonstrations (lora.finetune)
    seal         a ContinualLearner with consolidation off: it reads the demonstrations and sleeps, which is
                 dreaming alone; the kept dream is learnt into every parameter (learn_dreams "model")
    sleep        a ContinualLearner with the whole sleep: the demonstrations are consolidated into a new expert
                 of level 1 (the student reads padding in their place), then the kept dream is learnt into
                 that expert (learn_dreams "expert")

A copy of seal or sleep is one learner on a fresh copy of the base (its own seed, the same seeds for both
systems). Both dream with one generator, trained per seed by a learner's train_dream_generator on
TRAINING-task problems, where τ looks at the test answer; on held-out problems nothing does.

Layouts: the learner reads the demonstrations "x>y;x>y;" and its prompt is SEP, so dreams are sampled after
"demos|" and learnt after "____|" (its blank, PAD, in place of each demonstration token); the test is asked
as "demos|x>" (in context) or "____|x>" (closed-book).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ...tasks import puzzles
from ..learner import ContinualLearner, LearnerConfig
from ..lora import LoRAAdapters, attached, finetune

VOCAB = puzzles.VOCABULARY
SEP, PAD = VOCAB.encode(puzzles.SEP)[0], VOCAB.encode("_")[0]


# ----- the world and its layouts -----

def world(s: dict, split: int, demo_loss: int = 0) -> puzzles.Options:
    """The puzzles of a run's sizes: split 1 training tasks, 2 held-out tasks (tasks.puzzles)."""
    return puzzles.Options(demos=s["demos"], length=s["length"], colors=s["colors"], split=split, demo_loss=demo_loss)


def demos_text(pairs) -> str:
    return "".join(f"{a}>{b};" for a, b in pairs)


def demonstrations(raw: dict) -> torch.Tensor:
    """What a learner reads: the demonstrations [1, c] (its prompt, SEP, follows them)."""
    return torch.tensor([VOCAB.encode(demos_text(raw["demos"]))])


def query(context: str, x: str, y: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, targets, loss_mask) [1, T] of "context | x > y", the loss on y."""
    ids = torch.tensor([VOCAB.encode(f"{context}{puzzles.SEP}{x}>{y}")])
    mask = torch.zeros_like(ids[:, 1:])
    mask[:, -len(y):] = 1
    return ids[:, :-1], ids[:, 1:], mask


def test_query(raw: dict) -> tuple[torch.Tensor, ...]:
    """The test with the demonstrations in context."""
    return query(demos_text(raw["demos"]), *raw["test"])


def closed_book_query(raw: dict) -> tuple[torch.Tensor, ...]:
    """The test with padding in place of the demonstrations (the learner's blank)."""
    return query("_" * len(demos_text(raw["demos"])), *raw["test"])


def leave_one_out(raw: dict) -> tuple[torch.Tensor, ...]:
    """Demo i as the query, the others as context (the first other repeated in the freed slot)."""
    rows = []
    for i, (x, y) in enumerate(raw["demos"]):
        others = [d for j, d in enumerate(raw["demos"]) if j != i]
        rows.append(query(demos_text(others + others[:1]), x, y))
    return tuple(torch.cat(parts) for parts in zip(*rows))


def parse_dream(dream: list[int], s: dict) -> tuple[str, str] | None:
    """A dream as an (input, output) pair of rows, or None when it is not one."""
    text = VOCAB.decode(dream)
    x, _, y = text.partition(">")
    cells = set("0123456789"[: s["colors"]])
    if len(x) != s["length"] or len(y) != s["length"] or not set(x + y) <= cells:
        return None
    return x, y


def follows_rule(raw: dict, pair: tuple[str, str] | None) -> bool:
    """The pair is the problem's true rule applied to its input (the solver: for the report only)."""
    return pair is not None and "".join(map(str, puzzles.apply(raw["rule"], raw["params"],
                                                               [int(c) for c in pair[0]]))) == pair[1]


# ----- scoring -----

def exact(predicted: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> list[bool]:
    """Per row: every scored position predicted right (the whole test output exactly)."""
    return ((predicted == targets) | ~mask.bool()).all(1).tolist()


def copies_solve(model, adapters: LoRAAdapters | None, tests: list[tuple[torch.Tensor, ...]]) -> list[bool]:
    """Copy i (adapter i, or the model itself when adapters is None) answers tests[i] exactly right."""
    tokens, targets, mask = (torch.cat(parts) for parts in zip(*tests))
    model.eval()
    with torch.no_grad():
        if adapters is None:
            predicted = model(tokens).argmax(-1)
        else:
            with attached(model, adapters) as router:
                router.route(list(range(len(tests))), [1] * len(tests))
                predicted = model(tokens).argmax(-1)
    return exact(predicted, targets, mask)


def solves(model, raw: dict) -> tuple[bool, bool]:
    """(in context, closed-book): the model answers the test exactly right."""
    return tuple(copies_solve(model, None, [test_query(raw), closed_book_query(raw)]))


def measure(raw: dict):
    """τ of a training problem: 0 unless the model answers its test exactly right (in context), then
    1 + 1 / (1 + test loss). A dream whose copy beats the model on τ solves the test, and does so with a lower
    loss when the model solves it too."""
    tokens, targets, mask = test_query(raw)

    def tau(model) -> float:
        with torch.no_grad():
            logits = model(tokens)
        if not exact(logits.argmax(-1), targets, mask)[0]:
            return 0.0
        loss = F.cross_entropy(logits[mask.bool()], targets[mask.bool()]).item()
        return 1.0 + 1.0 / (1.0 + loss)
    return tau


# ----- systems -----

def in_context(model, problems: list[dict]) -> list[list[bool]]:
    return [[ok] for ok in copies_solve(model, None, [test_query(raw) for raw in problems])]


def ttt(model, problems: list[dict], s: dict, seed: int) -> list[list[bool]]:
    """`copies` LoRA copies per problem, each on its leave-one-out demonstrations (all in one batched run)."""
    data = [leave_one_out(raw) for raw in problems for _ in range(s["copies"])]
    tuned = finetune(model, data, rank=s["rank"], alpha=2.0 * s["rank"], steps=s["ft_steps"], lr=s["lr"], seed=seed)
    solved = copies_solve(model, tuned.adapters, [test_query(raw) for raw in problems for _ in range(s["copies"])])
    return [solved[i * s["copies"] : (i + 1) * s["copies"]] for i in range(len(problems))]


def learner_config(s: dict, seed: int, system: str) -> LearnerConfig:
    """The learner of `system` ("seal", "sleep", or "generator": the one that trains the dream generator,
    keeping copies − 1 dreams by importance + 1 at random per problem and rewarding each by its own copy)."""
    assert system in ("seal", "sleep", "generator"), system
    if system == "generator":  # one reward copy per kept dream, as many as a problem has copies
        keep = {"keep_top": s["copies"] - 1, "keep_random": 1}
    else:  # a copy of seal or sleep learns one dream: the best of its m by gradient importance
        keep = {"keep_top": 1, "keep_random": 0}
    dreaming = {"dreams": s["candidates"], "dream_length": 2 * s["length"] + 1, "rank": s["rank"],
                "alpha": 2.0 * s["rank"], "steps": s["ft_steps"], "lr": s["lr"], "rounds": 1,
                "generator_steps": s["generator_steps"], **keep}
    seeding = {"steps": s["seeding_steps"], "lr": 1e-2, "batch_size": 8, "sample_length": 2 * s["length"] + 1,
               "group_size": 2}
    seal = system == "seal"
    return LearnerConfig(seeding=seeding, dreaming=dreaming, prompt=[SEP], blank=PAD, consolidation=not seal,
                         learn_dreams="model" if seal else "expert", dream_steps=s["ft_steps"],
                         dream_lr=s["seal_lr"] if seal else s["lr"], seed=seed)


def generator_problems(s: dict, seed: int, round_: int) -> list[dict]:
    """The TRAINING-task problems of one ReST-EM round (fresh each round; no held-out task is among them)."""
    return [e.raw for e in puzzles.generate(world(s, 1), s["rest_problems"], 50_000 + 97 * seed + round_)]


def train_generator(model, s: dict, seed: int, tick) -> tuple[LoRAAdapters | None, list[dict]]:
    """The dream generator: one ReST-EM round per --rest-rounds on fresh TRAINING-task problems (τ = measure).
    The model never changes."""
    trainer = ContinualLearner(copy.deepcopy(model), learner_config(s, seed, "generator"))
    rounds = []
    for r in range(s["rest_rounds"]):
        problems = generator_problems(s, seed, r)
        record = trainer.train_dream_generator([(demonstrations(raw), measure(raw)) for raw in problems])
        rounds.append({"rewarded": record["rewarded"] / (len(problems) * s["copies"]),
                       "trained_on": sum(record["generator_trained_on"])})
        tick()
    return trainer.dream_generator, rounds


def sleep_once(model, raw: dict, s: dict, seed: int, generator, system: str) -> tuple[ContinualLearner, dict]:
    """One copy of `system` ("seal" or "sleep"): a learner on a copy of the base reads the demonstrations and
    sleeps. Returns (the learner, the sleep's records)."""
    learner = ContinualLearner(copy.deepcopy(model), learner_config(s, seed, system))
    learner.dream_generator = generator
    learner.read(demonstrations(raw))
    return learner, learner.sleep()


def sleep_copies(model, raw: dict, s: dict, seeds: list[int], generator, system: str) -> list[dict]:
    """One copy of `system` per seed. Per copy: {"solved", "closed_book", "valid", "correct" (its learnt dream),
    "records" (the sleep's records)}."""
    results = []
    for seed in seeds:
        learner, records = sleep_once(model, raw, s, seed, generator, system)
        solved, closed = solves(learner.model, raw)
        pairs = [parse_dream(d, s) for d in records["dreaming"]["chosen"]]
        results.append({"solved": solved, "closed_book": closed, "records": records,
                        "valid": sum(p is not None for p in pairs) / len(pairs),
                        "correct": sum(follows_rule(raw, p) for p in pairs) / len(pairs)})
    return results
