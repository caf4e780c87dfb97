"""Knowledge seeding's batched step (SeedingConfig.batched): the distillation on teacher samples and the
imitation of step 5 for one step, computing what seeding.py's plain `_divergence` and `_imitation` compute, up
to float rounding (tests/test_replay.py compares them), with less work:

    the teacher's logits are those it sampled with (replay.Ahead): no teacher forward;
    the student reads the rows of a step together, and what they share once. With a model that never ends a
    window (eviction "none", the learner's): the blank (the closed-book layout) once per distinct row, then
    each teacher sample up to the cut, whose memory the G completions continue from (no prefill of their
    own), then the rest of every row in one pass; otherwise one forward over all rows;
    completions are sampled as the plain stream samples them (same seed, same tokens).
"""
from __future__ import annotations

import torch

from ..stream import memory_rows
from .divergence import generalized_jsd
from .replay import continue_from, sample_groups
from .rewards import reinforce_loss
from .seeding import SeedingConfig, _cut, _reinforce, _rewards, _student_logits
from .seeds import derive


def fused(student, teacher_samples, teacher_logits, blank, prompt_length: int, cfg: SeedingConfig, step: int,
          judge) -> tuple[torch.Tensor, torch.Tensor | None, float | None]:
    """Returns (F on the teacher samples, the REINFORCE loss or None when α = 1, the mean reward or None).
    teacher_samples [n, p + L], teacher_logits [n, L, vocab] (those that drew the L sampled tokens)."""
    if getattr(student.config, "eviction", None) == "none":  # a SleepLM that never ends a window
        return _shared_prefixes(student, teacher_samples, teacher_logits, blank, prompt_length, cfg, step, judge)
    return _one_forward(student, teacher_samples, teacher_logits, blank, prompt_length, cfg, step, judge)


def _one_forward(student, teacher_samples, teacher_logits, blank, prompt_length, cfg, step, judge):
    """Any model: completions drawn by replay.sample_groups, then one student forward over the teacher samples
    and the completed prefixes."""
    n = teacher_samples.shape[0]
    rows, blanks = [teacher_samples], [blank]
    if cfg.alpha < 1:
        cut, prefixes, suffixes = _cut(teacher_samples, prompt_length, cfg, step)
        blanks.append(None if blank is None else blank.repeat_interleave(cfg.group_size, dim=0))
        completions = sample_groups(student, prefixes, suffixes.shape[1], cfg.temperature, [derive(cfg.seed, step, 2)],
                                    blanks[-1], keep_logits=False).tokens[0][:, cut:]
        rewards = _rewards(completions, suffixes, cfg, judge)
        rows.append(torch.cat([prefixes, completions], dim=1))
    logits = _student_logits(student, torch.cat(rows), None if blank is None else torch.cat(blanks))
    divergence = generalized_jsd(logits[:n, prompt_length - 1 : -1], teacher_logits, cfg.beta)
    if cfg.alpha == 1:
        return divergence, None, None
    return divergence, _reinforce(logits[n:], rows[1], cut, rewards, cfg), rewards.mean().item()


def _shared_prefixes(student, teacher_samples, teacher_logits, blank, prompt_length, cfg, step, judge):
    """A model without windows, whose forward is one wake: read the shared parts once (see the module docstring)."""
    n, length = teacher_samples.shape
    memory = student.empty_memory()
    if blank is not None:
        distinct, source = torch.unique(blank, dim=0, return_inverse=True)
        _, _, memory = student.wake(distinct, memory)
        memory = memory_rows(memory, source)
    imitate = cfg.alpha < 1
    cut, _, suffixes = _cut(teacher_samples, prompt_length, cfg, step) if imitate else (length, None, None)
    prefix_logits, _, memory = student.wake(teacher_samples[:, :cut], memory)  # [n, cut, vocab]
    if not imitate:
        return generalized_jsd(prefix_logits[:, prompt_length - 1 : -1], teacher_logits, cfg.beta), None, None
    group = torch.arange(n, device=teacher_samples.device).repeat_interleave(cfg.group_size)
    completions = continue_from(student, memory_rows(memory, group, detach=True), prefix_logits[group, -1].detach(),
                                suffixes.shape[1], cfg.temperature, derive(cfg.seed, step, 2))
    rewards = _rewards(completions, suffixes, cfg, judge)
    # the rest of every row but its last token: the logits after a row's last token are never read
    rest = torch.cat([teacher_samples[:, cut:-1], completions[:, :-1]])
    if rest.shape[1]:
        every = torch.cat([torch.arange(n, device=group.device), group])
        rest_logits, _, _ = student.wake(rest, memory_rows(memory, every))  # [n + nG, length − cut − 1, vocab]
    else:  # the cut left one token
        rest_logits = prefix_logits.new_zeros(rest.shape[0], 0, prefix_logits.shape[-1])
    sample_logits = torch.cat([prefix_logits, rest_logits[:n]], dim=1)  # [n, length − 1, vocab]
    divergence = generalized_jsd(sample_logits[:, prompt_length - 1 :], teacher_logits, cfg.beta)
    # a completion's tokens are predicted by its prefix's last position, then by its own positions but the last
    completion_logits = torch.cat([prefix_logits[group, -1:], rest_logits[n:]], dim=1)
    logprobs = completion_logits.log_softmax(-1).gather(-1, completions[..., None])[..., 0]
    imitation = reinforce_loss(logprobs.sum(-1), rewards.to(logprobs.dtype), cfg.group_size)
    return divergence, imitation, rewards.mean().item()
