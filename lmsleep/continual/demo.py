"""`lmsleep continual demo`: a tiny continual learner reads a passage about a new person, sleeps, and
answers questions about that person closed-book afterwards.

1. A base model with memory levels is pretrained on the `facts` world (passage, then questions and answers,
   about people of name pool 1) until it reads a passage in context, or loaded from the cache.
2. The learner reads a passage about a person it has never seen (pool 2) and takes a few wake steps.
3. One full sleep: the context is consolidated into a new low-rank expert of level 1 (teacher = the model
   with the passage, student = without it; replay sampled by the teacher), then it dreams (dreams sampled
   after the passage; each kept dream's isolated copy is rewarded when it answers the passage's questions
   closed-book better than the model does).
4. It prints what the sleep did and what the model now answers closed-book.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from ..tasks import facts, score
from .base import pretrained_base
from .learner import ContinualLearner, LearnerConfig

# One person per passage, three attributes: a reader this small learns it in a few hundred steps.
WORLD = facts.Options(entities=1, attributes=3, values=8, questions=3, pool=1, ask_loss=1)
MODEL = {"layout": "AA", "eviction": "none", "d_model": 64, "memory_levels": 2, "expert_pool": 4,
         "expert_rank": 8}
BASE_STEPS = 900
UNRELATED = facts.VOCABULARY.encode(facts.PAD)  # unrelated replay: the base's own passages and questions
SEEDING = {"steps": 80, "batch_size": 8, "sample_length": 24, "lr": 1e-2, "group_size": 4}
DREAMING = {"dreams": 8, "dream_length": 20, "keep_top": 2, "keep_random": 1, "rank": 4, "steps": 10,
            "lr": 1e-2, "generator_steps": 5}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny",
                        help="tiny (default): a small model trained here on a generated world; smollm2, a model "
                             "directory or a GGUF file: a real pretrained model reads a SQuAD passage (demo_real.py)")
    parser.add_argument("--out", default="runs/continual-demo", help="run directory (sleep log, learner file)")
    parser.add_argument("--seed", type=int, default=0, help="which new person (and all sampling)")
    parser.add_argument("--passage", type=int, default=0, help="with a real model: which SQuAD passage")
    parser.add_argument("--questions", type=int, default=None, help="with a real model: ask the first N questions")
    parser.add_argument("--squad", default=None, help="with a real model: the SQuAD file (default ../shared/data/squad)")
    parser.add_argument("--base-steps", type=int, default=BASE_STEPS, help="pretraining steps of the base")
    parser.add_argument("--cache-dir", help="where pretrained bases are cached (default ~/.cache/lmsleep)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")


def _questions(raw, paraphrases: bool = True, context: bool = False) -> dict:
    """The questions about the passage's facts, each after SEP (closed-book: after padding where the
    passage was, as the base learnt to read; in context: after the passage)."""
    data = (facts.in_context_batch if context else facts.closed_book_batch)(raw, paraphrases=paraphrases)
    return data


def closed_book(model, raw) -> float:
    """τ: answer accuracy on every question (every phrasing) about the passage's facts, without the passage."""
    data = _questions(raw)
    with torch.no_grad():
        return score(model(data["tokens"]).argmax(-1), data)["answer"]


def answers(model, raw, context: bool) -> list[tuple[str, str, str]]:
    """(question, the model's answer, the truth) for the first phrasing of each fact."""
    data = _questions(raw, paraphrases=False, context=context)
    with torch.no_grad():
        predicted = model(data["tokens"]).argmax(-1)
    rows = []
    for i, question in enumerate(facts.questions_of(raw, paraphrases=False)):
        position = int(data["loss_mask"][i].nonzero()[-1])
        words = facts.VOCABULARY.decode(data["tokens"][i, : position + 1].tolist()).split()
        asked = " ".join(words[words.index(facts.SEP) + 1 :]) if facts.SEP in words else " ".join(words)
        rows.append((asked, facts.VOCABULARY.decode([int(predicted[i, position])]),
                     facts.VOCABULARY.decode([int(data["targets"][i, position])])))
    return rows


def run(args: argparse.Namespace) -> int:
    if args.model != "tiny":
        from . import demo_real

        return demo_real.run(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print("lmsleep continual demo: a learner with 2 memory levels reads about a new person, sleeps, and is asked "
          "about them closed-book.")
    model, report = pretrained_base(WORLD, MODEL, args.cache_dir, steps=args.base_steps)
    print(f"  base: {report['in_context']:.0%} of questions about new people answered with the passage in context, "
          f"{report['closed_book']:.0%} without it (chance {report['chance']:.0%})")
    raw = facts.world(10_000 + args.seed, 1, replace(WORLD, pool=2))
    passage = torch.tensor([facts.passage_tokens(raw)])
    print(f"  the passage: \"{facts.passage_text(raw)}\"")
    before = closed_book(model, raw)
    sep = facts.VOCABULARY.encode(facts.SEP)
    pad = facts.VOCABULARY.encode(facts.PAD)[0]
    config = LearnerConfig(periods=[8, 16], lr=1e-2, seeding=SEEDING, dreaming=DREAMING, prompt=sep, blank=pad,
                           unrelated=UNRELATED, seed=args.seed)
    learner = ContinualLearner(model, config, args.out, judge=_judge(), progress=True)
    learner.read(passage)
    others = [torch.tensor([facts.passage_tokens(facts.world(20_000 + i, 1, WORLD))]) for i in range(3)]
    for tokens in others:  # life goes on: other passages, read while the passage is in context
        learner.wake(tokens)
    print(f"  awake: read the passage and took {learner.updates.step} wake steps (level 1 sums its gradients; "
          f"it would apply them every {config.periods[0]} steps, level 2 every {config.periods[1]})")
    slept = learner.sleep(lambda m: closed_book(m, raw))  # consolidate the passage, then dream about it
    consolidation, dreamt = slept["consolidation"], slept["dreaming"]
    after = closed_book(model, raw)
    slots = sorted({slot for _, slot in consolidation["unlocked"]})
    print(f"  asleep, stage 1 (knowledge seeding): unlocked low-rank expert {slots} of level 1 in each of the "
          f"{len(consolidation['unlocked'])} blocks; the student imitated the teacher (the model with the passage) "
          f"on replay it sampled: divergence {consolidation['divergence_before']:.3f} -> "
          f"{consolidation['divergence_after']:.3f}, imitation reward {consolidation['reward_before']:.2f} -> "
          f"{consolidation['reward_after']:.2f} ({consolidation['wall_s']:.0f} s)")
    kept, rewards = dreamt["kept"][0], dreamt["rewards"][0]
    print(f"  asleep, stage 2 (dreaming): {dreamt['dreams']} dreams, kept {len(kept)} (top by gradient importance "
          f"+ random), {sum(rewards)} rewarded (their copy beat the model's closed-book "
          f"{dreamt['measure_before'][0]:.0%}: {', '.join(f'{m:.0%}' for m in dreamt['measures_of_kept'][0])}); "
          f"woke on {dreamt['learnt']['dreams']} ({dreamt['wall_s']:.1f} s)")
    print(f"  the new expert opens on {consolidation['opens_on_content']:.0%} of the replayed passage's tokens and on "
          f"{consolidation['opens_on_unrelated']:.0%} of unrelated reading (its gate starts closed)")
    print(f"  closed-book accuracy on the passage's questions: {before:.0%} before the sleep, {after:.0%} after")
    for question, answer, truth in answers(model, raw, context=False):
        print(f"    {question} -> {answer} ({'right' if answer == truth else 'wrong; the passage says ' + truth})")
    learner.save(f"{args.out}/learner.safetensors")
    print(f"sleep log: {learner.run.metrics_path}; learner: {args.out}/learner.safetensors; "
          f"{time.perf_counter() - started:.0f} s in all")
    return 0


def _judge():
    """r_sem: the completion states the same facts as the teacher's continuation (the world's checker)."""
    from .rewards import task_judge

    return task_judge(facts.judge, decode=facts.VOCABULARY.decode)
