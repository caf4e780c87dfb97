"""Sleep stage 1, knowledge seeding (spec: sleep-continual.md, "Sleep stage 1", steps 1–7).

    teacher  = a frozen snapshot of the model now (it still holds what is about to be lost)   (step 1)
    student  = the model after the due update (or without the context), the sending level's
               old experts pruned, one new expert unlocked in the next-slower level          (steps 2, 7)
    replay   = sequences sampled from the teacher (never wake data); student samples too      (step 3)
    loss     = α · [(1−λ)·F over teacher samples + λ·F over student samples]                 (steps 4, 6)
             + (1−α) · REINFORCE(r = γ·r_sem + (1−γ)·r_abs) of student completions of teacher prefixes (5)
             + μ · F over unrelated replay: sequences the teacher samples from `unrelated` prompts with no
               context, read by teacher and student alike, so the new expert learns to stay closed on
               reading it was not consolidated from (the off path; spec Decision "revised after measuring")
    only the new expert's parameters move; sampling carries no gradient.

`consolidate` runs steps 3–6 on a student whose new expert is already unlocked; `snapshot` and
`prepare_student` do the rest (the learner calls them in this order). The teacher may read a context the
student does not see (context consolidation: teacher = model with the context, student = model without).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .. import validate
from ..layers.levels import OPEN, MemoryLevel
from ..model import SleepLM
from ..stream import open_stream, sample
from .baselines import as_data
from .divergence import generalized_jsd
from .levels import level_modules
from .replay import Ahead
from .rewards import ExactJudge, reinforce_loss, reward
from .seeds import derive

NewExpert = list[tuple[MemoryLevel, int | None]]  # (level module, slot) in every block; None: no expansion


@dataclass(frozen=True)
class SeedingConfig:
    """steps of Adam (lr) on the new expert; per step `batch_size` teacher and student samples of
    `sample_length` tokens (temperature); λ (lam), β (beta: 0 forward KL, 1 reverse KL), α, γ, z0 (None:
    half the reference length) and G (group_size) completions per prefix as in the spec; μ (unrelated) the
    weight of the off-path term on `unrelated_length` tokens of unrelated replay (None: sample_length); batched:
    draw the frozen teacher's replay of every step ahead in one batched generation and reuse the logits it drew
    with, and read distillation and imitation rows in one student forward (False: the plain per-step reference,
    the same computation up to float rounding; tests/test_replay.py compares them)."""

    steps: int = 40
    lr: float = 3e-3
    batch_size: int = 8
    sample_length: int = 16
    temperature: float = 1.0
    lam: float = 0.0  # by measurement (results/continual.md): teacher samples only ...
    beta: float = 0.0  # ... and forward KL consolidated most; the spec's first default was reverse KL, λ = 0.5
    alpha: float = 0.5
    gamma: float = 0.5
    z0: float | None = None
    group_size: int = 4
    unrelated: float = 1.0
    unrelated_length: int | None = None
    batched: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        validate.check_types(self)
        for name in ("steps", "batch_size", "sample_length", "group_size"):
            validate.positive_int(f"SeedingConfig.{name}", getattr(self, name))
        validate.integer("SeedingConfig.seed", self.seed)
        validate.positive_number("SeedingConfig.lr", self.lr)
        validate.positive_number("SeedingConfig.temperature", self.temperature)
        for name in ("lam", "beta", "alpha", "gamma"):
            validate.number(f"SeedingConfig.{name}", getattr(self, name), 0, 1)
        if self.z0 is not None:
            validate.number("SeedingConfig.z0", self.z0, 0)
        validate.number("SeedingConfig.unrelated", self.unrelated, 0)
        if self.unrelated_length is not None:
            validate.positive_int("SeedingConfig.unrelated_length", self.unrelated_length)


@dataclass
class SeedingReport:
    divergence_before: float
    divergence_after: float
    reward_before: float | None  # None: imitation off (α = 1), not measured
    reward_after: float | None
    losses: list[float]
    opens_on_content: float | None = None  # share of content tokens (student layout) the new expert opens on
    opens_on_unrelated: float | None = None  # share of unrelated replay tokens it opens on (None: no such replay)


def snapshot(model: SleepLM) -> SleepLM:
    """Step 1: the teacher, a frozen copy."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def prepare_student(model: SleepLM, sending: int | None, receiving: int,
                    generator: torch.Generator | None = None, *, expand: bool = True) -> tuple[NewExpert, list[tuple[int, int]]]:
    """Steps 2 and 7: prune the sending level's experts (None: the context sends, nothing to prune) and
    unlock one new expert in the receiving level of every block (expand False, the "no expansion" ablation:
    the receiving level's base experts are the target instead). Returns (the target, the pruned
    (block, slot) pairs)."""
    pruned = []
    if sending is not None:
        for block, module in enumerate(level_modules(model, sending)):
            for slot in module.active_slots():
                module.reset(slot)
                pruned.append((block, slot))
    if not expand:
        return existing_experts(model, receiving), pruned
    new = [(module, module.unlock(generator)) for module in level_modules(model, receiving)]
    return new, pruned


# ----- which parameters a sleep trains -----

def trainable_parameters(new_expert: NewExpert) -> list[torch.Tensor]:
    """The tensors holding the new expert of every block (the pool tensors: only its rows will move).
    A slot of None means "no expansion" (an ablation): the level's existing base experts train instead."""
    params = []
    for module, slot in new_expert:
        params += [p for base in module.base for p in base.parameters()] if slot is None else list(module.pool_tensors)
    return params


def freeze_all_but(model: SleepLM, new_expert: NewExpert) -> dict:
    """Freeze every parameter but the new expert's, setting the wake gradients aside; returns what
    `restore` puts back."""
    saved = {p: (p.requires_grad, p.grad) for p in model.parameters()}  # the wake sums stay untouched
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    for p in trainable_parameters(new_expert):
        p.requires_grad_(True)
    return saved


def keep_only_new_expert_gradients(new_expert: NewExpert) -> None:
    for module, slot in new_expert:
        if slot is not None:
            module.keep_only_gradient_of(slot)


def restore(saved: dict, new_expert: NewExpert) -> None:
    for p, (requires_grad, grad) in saved.items():
        p.requires_grad_(requires_grad)
        p.grad = grad
    for module, _ in new_expert:
        module.keep_masked()


def existing_experts(model: SleepLM, receiving: int) -> NewExpert:
    """The "no expansion" ablation's target: level `receiving`'s base experts in every block (slot None)."""
    return [(module, None) for module in level_modules(model, receiving)]



def train_expert(model: SleepLM, new_expert: NewExpert, data, *, steps: int, lr: float) -> list[float]:
    """Supervised steps (Adam, next-token loss on data = (tokens, targets, loss_mask)) on the new expert only,
    e.g. to learn kept dreams into the capacity a consolidation just unlocked; every other weight and the
    wake gradients stay as they were. Returns the loss before each step."""
    tokens, targets, mask = as_data(data)
    if not new_expert:
        raise ValueError("train_expert needs the new expert's (level, slot) in every block")
    validate.non_negative_int("steps", steps)
    validate.positive_number("lr", lr)
    saved = freeze_all_but(model, new_expert)
    optimizer = torch.optim.Adam(trainable_parameters(new_expert), lr=lr)
    was_training = model.training
    model.eval()
    losses = []
    try:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=False)
            loss = model.loss(tokens, targets, mask)
            loss.backward()
            keep_only_new_expert_gradients(new_expert)
            optimizer.step()
            losses.append(loss.item())
    finally:
        restore(saved, new_expert)
        model.train(was_training)
    return losses

# ----- replay -----

def _teacher_logits(teacher: SleepLM, sequences: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    with torch.no_grad():
        if context is None:
            return teacher(sequences)
        return teacher(torch.cat([context, sequences], dim=1))[:, context.shape[1]:]


def _student_logits(student: SleepLM, sequences: torch.Tensor, blank: torch.Tensor | None) -> torch.Tensor:
    if blank is None:
        return student(sequences)
    return student(torch.cat([blank, sequences], dim=1))[:, blank.shape[1]:]


def _divergence(student, teacher, sequences, context, blank, prompt_length: int, beta: float) -> torch.Tensor:
    """F(teacher ‖ student) at the positions that predict sampled tokens."""
    mask = torch.zeros(sequences.shape, dtype=torch.bool, device=sequences.device)
    mask[:, prompt_length - 1 : -1] = True
    return generalized_jsd(_student_logits(student, sequences, blank), _teacher_logits(teacher, sequences, context),
                           beta, mask=mask)


def _cut(teacher_samples, prompt_length: int, cfg: SeedingConfig, step: int):
    """Step 5's random prefix: (cut, prefixes, suffixes), each teacher sample repeated G times."""
    generator = torch.Generator().manual_seed(derive(cfg.seed, step, 1))
    cut = prompt_length + int(torch.randint(0, cfg.sample_length, (1,), generator=generator))
    prefixes = teacher_samples[:, :cut].repeat_interleave(cfg.group_size, dim=0)
    suffixes = teacher_samples[:, cut:].repeat_interleave(cfg.group_size, dim=0)
    return cut, prefixes, suffixes


def _rewards(completions, suffixes, cfg: SeedingConfig, judge) -> torch.Tensor:
    # rows as lists of ints read in one copy each (not a tensor row, and its own copy, per reward)
    return torch.tensor([reward(c, s, gamma=cfg.gamma, z0=cfg.z0, judge=judge)
                         for c, s in zip(completions.tolist(), suffixes.tolist())], dtype=torch.float64)


def _reinforce(student_logits, full, cut: int, rewards, cfg: SeedingConfig) -> torch.Tensor:
    """REINFORCE over the completions' summed log-probabilities; student_logits [nG, ≥ len − 1, vocab] read
    `full` (prefix + completion) up to its last token."""
    logprobs = student_logits[:, cut - 1 : full.shape[1] - 1].log_softmax(-1).gather(-1, full[:, cut:, None])[..., 0]
    return reinforce_loss(logprobs.sum(-1), rewards.to(logprobs.dtype), cfg.group_size)


def _imitation(student, teacher_samples, blank, prompt_length: int, cfg: SeedingConfig, step: int, judge):
    """Step 5: cut each teacher sample at a random prefix, let the student complete it G times, and reward
    the completions against the teacher's suffix. Returns (REINFORCE loss, mean reward)."""
    cut, prefixes, suffixes = _cut(teacher_samples, prompt_length, cfg, step)
    stream = open_stream(student, prefixes.shape[0])
    if blank is not None:
        stream.feed(blank.repeat_interleave(cfg.group_size, dim=0))
    completions = stream.generate(prefixes, suffixes.shape[1], temperature=cfg.temperature,
                                  seed=derive(cfg.seed, step, 2))
    rewards = _rewards(completions, suffixes, cfg, judge)
    full = torch.cat([prefixes, completions], dim=1)
    blanks = None if blank is None else blank.repeat_interleave(cfg.group_size, dim=0)
    return _reinforce(_student_logits(student, full[:, :-1], blanks), full, cut, rewards, cfg), rewards.mean().item()


def consolidate(teacher: SleepLM, student: SleepLM, new_expert: NewExpert, prompts: torch.Tensor,
                cfg: SeedingConfig = SeedingConfig(), *, context: torch.Tensor | None = None,
                blank: torch.Tensor | None = None, judge=ExactJudge(), progress: bool = False,
                unrelated: list[torch.Tensor] | torch.Tensor | None = None) -> SeedingReport:
    """Steps 3–6: train the new expert of `student` (only it moves) to imitate `teacher`.

    prompts [n, p]: what samples start from (e.g. a start token; never wake data), repeated to batch_size.
    context [1 or batch, c]: what the teacher reads first and the student does not (context consolidation).
    blank [1 or batch, b]: what the student reads in its place (e.g. padding of the context's length, the
    layout a model saw when asked without a context); None: nothing. progress: a progress bar over the steps.
    unrelated: prompts of unrelated replay, one tensor [1 or batch, u] or a list of them (each its own batch of
    samples; the off-path term is their mean, weight cfg.unrelated); None: none.
    """
    if not new_expert:
        raise ValueError("consolidate needs the new expert's (level, slot) in every block")
    prompts = prompts.expand(cfg.batch_size, -1) if prompts.shape[0] == 1 else prompts
    if prompts.shape[0] != cfg.batch_size:
        raise ValueError(f"prompts must have 1 or batch_size = {cfg.batch_size} rows, got {prompts.shape[0]}")
    if context is not None:
        context = context.expand(cfg.batch_size, -1) if context.shape[0] == 1 else context
    if blank is not None:
        blank = blank.expand(cfg.batch_size, -1) if blank.shape[0] == 1 else blank
    groups = [] if unrelated is None else [unrelated] if isinstance(unrelated, torch.Tensor) else list(unrelated)
    for i, group in enumerate(groups):
        groups[i] = group.expand(cfg.batch_size, -1) if group.shape[0] == 1 else group
        if groups[i].shape[0] != cfg.batch_size:
            raise ValueError(f"unrelated prompts must have 1 or batch_size = {cfg.batch_size} rows, got {group.shape[0]}")
    unrelated_length = cfg.unrelated_length or cfg.sample_length
    use_unrelated = bool(groups) and cfg.unrelated > 0
    prompt_length = prompts.shape[1]
    saved = freeze_all_but(student, new_expert)
    optimizer = torch.optim.Adam(trainable_parameters(new_expert), lr=cfg.lr)
    was_training = student.training
    student.eval()  # no dropout; the forward is deterministic
    if cfg.batched:  # the teacher's replay of every step drawn ahead, with its logits (replay.Ahead)
        from .seeding_batched import fused  # built on this module's pieces of step 5
        seeds = [derive(cfg.seed, step, 3) for step in range(cfg.steps)]
        content = Ahead(teacher, prompts, cfg.sample_length, cfg.temperature, [cfg.seed + 1, *seeds], context)
        unrelated_ahead = [Ahead(teacher, g, unrelated_length, cfg.temperature,
                                 [cfg.seed + 3 + i, *(derive(seed, i) for seed in (seeds if use_unrelated else []))])
                           for i, g in enumerate(groups)]
        held_out, held_out_logits = content[0]
        held_out_unrelated = [ahead[0][0] for ahead in unrelated_ahead]
    else:
        held_out = sample(teacher, prompts, cfg.sample_length, cfg.temperature, cfg.seed + 1, context)
        held_out_unrelated = [sample(teacher, g, unrelated_length, cfg.temperature, cfg.seed + 3 + i)
                              for i, g in enumerate(groups)]

    def measure(step: int) -> tuple[float, float | None]:
        """F on held-out teacher samples, and the imitation reward (None when imitation is off: α = 1)."""
        with torch.no_grad():
            if cfg.batched:
                divergence, _, mean_reward = fused(student, held_out, held_out_logits, blank, prompt_length, cfg,
                                                    step, judge)
                return divergence.item(), mean_reward
            divergence = _divergence(student, teacher, held_out, context, blank, prompt_length, cfg.beta).item()
            if cfg.alpha == 1:
                return divergence, None
            _, mean_reward = _imitation(student, held_out, blank, prompt_length, cfg, step, judge)
        return divergence, mean_reward

    def plain_loss(step: int) -> torch.Tensor:
        """The step's loss as the spec reads (the reference of the batched path)."""
        seed = derive(cfg.seed, step, 3)
        teacher_samples = sample(teacher, prompts, cfg.sample_length, cfg.temperature, seed, context)
        loss = (1 - cfg.lam) * _divergence(student, teacher, teacher_samples, context, blank, prompt_length,
                                           cfg.beta)
        if cfg.lam > 0:
            student_samples = sample(student, prompts, cfg.sample_length, cfg.temperature, seed + 1, blank)
            loss = loss + cfg.lam * _divergence(student, teacher, student_samples, context, blank, prompt_length,
                                                cfg.beta)
        loss = cfg.alpha * loss
        if cfg.alpha < 1:
            imitation, _ = _imitation(student, teacher_samples, blank, prompt_length, cfg, step, judge)
            loss = loss + (1 - cfg.alpha) * imitation
        for i, group in enumerate(groups if use_unrelated else []):
            replay = sample(teacher, group, unrelated_length, cfg.temperature, derive(seed, i))
            loss = loss + cfg.unrelated / len(groups) * _divergence(student, teacher, replay, None, None,
                                                                    group.shape[1], cfg.beta)
        return loss

    def batched_loss(step: int) -> torch.Tensor:
        """plain_loss up to float rounding, with the replay drawn ahead and the student's forwards fused."""
        teacher_samples, teacher_logits = content[step + 1]
        divergence, imitation, _ = fused(student, teacher_samples, teacher_logits, blank, prompt_length, cfg, step,
                                          judge)
        loss = (1 - cfg.lam) * divergence
        if cfg.lam > 0:  # on-policy: the student's samples change every step, nothing to draw ahead
            student_samples = sample(student, prompts, cfg.sample_length, cfg.temperature, derive(cfg.seed, step, 3) + 1,
                                     blank)
            loss = loss + cfg.lam * _divergence(student, teacher, student_samples, context, blank, prompt_length,
                                                cfg.beta)
        loss = cfg.alpha * loss
        if imitation is not None:
            loss = loss + (1 - cfg.alpha) * imitation
        for i, group in enumerate(groups if use_unrelated else []):
            replay, replay_logits = unrelated_ahead[i][step + 1]
            student_logits = student(replay)[:, group.shape[1] - 1 : -1]
            loss = loss + cfg.unrelated / len(groups) * generalized_jsd(student_logits, replay_logits, cfg.beta)
        return loss

    step_loss = batched_loss if cfg.batched else plain_loss
    divergence_before, reward_before = measure(-1)
    losses = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, desc="sleep: knowledge seeding", unit="step", dynamic_ncols=True, leave=False)
    try:
        for step in range(cfg.steps):
            loss = step_loss(step)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            keep_only_new_expert_gradients(new_expert)
            optimizer.step()
            losses.append(loss.item())
            if bar is not None:
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        restore(saved, new_expert)
        student.train(was_training)
    divergence_after, reward_after = measure(-1)
    with torch.no_grad():
        on_content = opening(student, new_expert, held_out if blank is None else torch.cat([blank, held_out], 1))
        shares = [opening(student, new_expert, tokens) for tokens in held_out_unrelated]
        on_unrelated = None if not shares or shares[0] is None else sum(shares) / len(shares)
    return SeedingReport(divergence_before, divergence_after, reward_before, reward_after, losses, on_content,
                         on_unrelated)


def opening(model: SleepLM, new_expert: NewExpert, tokens: torch.Tensor) -> float | None:
    """The share of the tokens of `tokens` on which the new expert opens, averaged over blocks (None when
    nothing was unlocked: "no expansion")."""
    shares = []
    was_training = model.training
    model.eval()
    try:
        model(tokens)
    finally:
        model.train(was_training)
    for module, slot in new_expert:
        if slot is None or module.last_gates is None:
            continue
        slots, gates = module.last_gates
        shares.append(float((gates[..., slots.index(slot)] > OPEN).float().mean()))
    return sum(shares) / len(shares) if shares else None
