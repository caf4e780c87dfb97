"""Knowledge seeding (continual.seeding) on its own: only the new expert moves, the divergence falls, the
sending level's experts are pruned, and the teacher reading a context the student does not see."""
import pytest
import torch

from lmsleep.continual.levels import level_modules
from lmsleep.continual.seeding import SeedingConfig, consolidate, prepare_student, sample, snapshot

from helpers import random_tokens, tiny_model


def learner_model():
    model = tiny_model(memory_levels=2, expert_pool=2, expert_rank=4, layout="A", eviction="none",
                       dtype=torch.float32)
    return model


def test_only_the_new_expert_changes_and_the_divergence_falls():
    model = learner_model()
    with torch.no_grad():
        model.head.weight.mul_(40)  # peaked next-token distributions, so that they can disagree
    teacher = snapshot(model)
    with torch.no_grad():  # the "update" that the teacher has not seen: the student must win it back
        for module in level_modules(model, 0):
            module.base[0].down.weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
    new, pruned = prepare_student(model, sending=0, receiving=1, generator=torch.Generator().manual_seed(0))
    assert pruned == [] and all(slot == 0 for _, slot in new)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    cfg = SeedingConfig(steps=15, lr=3e-3, batch_size=4, sample_length=6, group_size=2, alpha=0.7)
    prompts = torch.zeros(1, 1, dtype=torch.long)
    report = consolidate(teacher, model, new, prompts, cfg)
    assert report.divergence_after < 0.8 * report.divergence_before
    assert len(report.losses) == cfg.steps
    for name, p in model.named_parameters():
        if name.endswith((".A", ".B", ".pool_router")) and ".levels.1." in name:
            changed = (p != before[name]).flatten(1).any(1)
            assert not changed[1:].any(), name  # slot 0 only
            assert changed[0] or name.endswith("pool_router"), name  # "sum" gating has no router to train
        else:
            assert torch.equal(p, before[name]), name
    assert all(p.grad is None for p in model.parameters())  # no wake sums were touched


def test_the_sending_levels_experts_are_pruned_before_the_student_trains():
    model = learner_model()
    for module in level_modules(model, 0):
        module.unlock()
        with torch.no_grad():
            module.B[0].normal_()
    new, pruned = prepare_student(model, sending=0, receiving=1)
    assert pruned == [(b, 0) for b in range(len(model.blocks))]
    assert all(not m.active.any() and m.B.abs().max() == 0 for m in level_modules(model, 0))
    assert all(m.active[slot] for m, slot in new)


def test_context_consolidation_teacher_reads_what_the_student_does_not():
    model = learner_model()
    teacher = snapshot(model)
    context = random_tokens(model, 1, 5, seed=3)
    prompts = torch.zeros(2, 1, dtype=torch.long)
    with_context = sample(teacher, prompts, 6, 1.0, seed=4, context=context.expand(2, -1))
    without = sample(teacher, prompts, 6, 1.0, seed=4)
    assert with_context.shape == without.shape == (2, 7) and not torch.equal(with_context, without)
    new, _ = prepare_student(model, sending=None, receiving=0)
    report = consolidate(teacher, model, new, prompts, SeedingConfig(steps=3, batch_size=2, sample_length=4,
                                                                      group_size=2), context=context)
    assert report.divergence_before > 0


def test_sampling_builds_no_graph():
    """Replay is data, not a path for gradients: every forward of the sampler runs with autograd off, though
    every parameter requires grad."""
    model = learner_model()
    for p in model.parameters():
        p.requires_grad_(True)
    seen = []
    hook = model.head.register_forward_hook(lambda module, inputs, output: seen.append(
        (torch.is_grad_enabled(), output.requires_grad)))
    try:
        sequences = sample(model, torch.zeros(2, 1, dtype=torch.long), 4, 1.0, seed=0)
    finally:
        hook.remove()
    assert seen and all(state == (False, False) for state in seen), seen
    assert sequences.shape == (2, 5) and all(p.grad is None for p in model.parameters())


def test_consolidation_with_unrelated_replay_moves_only_the_new_experts_row_and_keeps_the_wake_sums():
    model = learner_model()
    with torch.no_grad():
        model.head.weight.mul_(40)
    teacher = snapshot(model)
    for module in level_modules(model, 1):  # an older expert in the receiving level: it must not move
        module.unlock(torch.Generator().manual_seed(5))
        with torch.no_grad():
            module.B[0].normal_(0, 0.1, generator=torch.Generator().manual_seed(6))
    for p in model.parameters():  # wake sums waiting for their level's boundary
        p.grad = torch.full_like(p, 0.25)
    new, _ = prepare_student(model, sending=None, receiving=1, generator=torch.Generator().manual_seed(0))
    assert all(slot == 1 for _, slot in new)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    cfg = SeedingConfig(steps=4, lr=3e-2, batch_size=2, sample_length=4, group_size=2, unrelated=1.0)
    report = consolidate(teacher, model, new, torch.zeros(1, 1, dtype=torch.long), cfg,
                         context=random_tokens(model, 1, 5, seed=3), unrelated=torch.ones(1, 1, dtype=torch.long))
    assert report.opens_on_unrelated is not None
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, torch.full_like(p, 0.25)), name
        if name.endswith((".A", ".B", ".pool_router")) and ".levels.1." in name:
            changed = (p != before[name]).flatten(1).any(1)
            assert changed.tolist() == [False, True], name  # the new slot's row only (gates included)
        else:
            assert torch.equal(p, before[name]), name


@pytest.mark.parametrize("field,value", [("lam", 1.5), ("alpha", -0.1), ("gamma", 2), ("z0", -1.0), ("steps", 0)])
def test_bad_seeding_values_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        SeedingConfig(**{field: value})


def test_the_student_reads_the_blank_where_the_teacher_reads_the_context():
    model = learner_model()
    with torch.no_grad():
        model.head.weight.mul_(40)
    teacher = snapshot(model)
    new, _ = prepare_student(model, sending=None, receiving=0)
    context = random_tokens(model, 1, 5, seed=3)
    cfg = SeedingConfig(steps=1, batch_size=2, sample_length=4, group_size=2, lr=1e-9)
    prompts = torch.zeros(1, 1, dtype=torch.long)
    same = consolidate(teacher, model, new, prompts, cfg, context=context, blank=context)
    assert same.divergence_before < 1e-6  # a new expert changes nothing: with the context read, no gap
    blanked = consolidate(teacher, model, new, prompts, cfg, context=context, blank=torch.zeros_like(context))
    assert blanked.divergence_before > 1e-3


def test_train_expert_moves_only_the_new_expert_and_keeps_the_wake_sums():
    from lmsleep.continual.seeding import train_expert

    model = learner_model()
    for p in model.parameters():  # a wake sum waiting for its level's boundary
        p.grad = torch.full_like(p, 0.5)
    new, _ = prepare_student(model, sending=None, receiving=0, generator=torch.Generator().manual_seed(0))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    tokens = random_tokens(model, 3, 8, 1)
    mask = torch.ones(3, 7, dtype=torch.long)
    losses = train_expert(model, new, (tokens[:, :-1], tokens[:, 1:], mask), steps=8, lr=3e-2)
    assert losses[-1] < losses[0]
    for name, p in model.named_parameters():
        if name.endswith((".A", ".B")) and ".levels.0." in name:
            changed = (p != before[name]).flatten(1).any(1)
            assert changed[0] and not changed[1:].any(), name
        elif not name.endswith(".pool_router"):
            assert torch.equal(p, before[name]), name
        assert torch.equal(p.grad, torch.full_like(p, 0.5)), name


def test_no_expansion_trains_the_levels_existing_experts_and_no_low_rank_one():
    from lmsleep.continual.seeding import existing_experts

    model = learner_model()
    with torch.no_grad():
        model.head.weight.mul_(40)
    teacher = snapshot(model)
    context = random_tokens(model, 1, 6, 3)
    target = existing_experts(model, 0)
    assert all(slot is None for _, slot in target)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    cfg = SeedingConfig(steps=4, lr=3e-3, batch_size=2, sample_length=4, group_size=2)
    consolidate(teacher, model, target, torch.zeros(1, 1, dtype=torch.long), cfg, context=context)
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert moved and all(".levels.0.base." in name for name in moved), moved
    assert all(not module.active.any() for level in (0, 1) for module in level_modules(model, level))


def test_unrelated_replay_keeps_the_new_expert_off_where_it_was_not_consolidated():
    """The off path (issue 18): the teacher reads a context the student does not; with unrelated replay (other
    prompts, no context, teacher and student alike) the new expert changes less of what the model says there,
    and its gate opens less there, than the same consolidation without it."""
    results = {}
    for weight in (0.0, 4.0):
        model = learner_model()
        with torch.no_grad():
            model.head.weight.mul_(40)
        teacher = snapshot(model)
        new, _ = prepare_student(model, sending=None, receiving=0, generator=torch.Generator().manual_seed(0))
        cfg = SeedingConfig(steps=25, lr=1e-2, batch_size=4, sample_length=6, alpha=1.0, unrelated=weight,
                            unrelated_length=8)
        context = random_tokens(model, 1, 6, seed=3)
        prompts, unrelated = torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long)
        report = consolidate(teacher, model, new, prompts, cfg, context=context, unrelated=unrelated)
        held_out = sample(teacher, unrelated.expand(8, -1), 8, 1.0, 99)
        with torch.no_grad():
            changed = (model(held_out).softmax(-1) - teacher(held_out).softmax(-1)).abs().sum(-1).mean().item()
        results[weight] = (changed, report.opens_on_unrelated, report.divergence_after / report.divergence_before)
    assert results[4.0][0] < 0.7 * results[0.0][0], results  # it changes less of the unrelated reading
    assert results[4.0][1] <= results[0.0][1], results
    assert results[4.0][2] < 1.0  # and still consolidates the context
