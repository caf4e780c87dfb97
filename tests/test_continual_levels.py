"""The update rule of memory levels (continual.levels, Eq. 2): accumulate every wake step, apply the sum of
exactly C_ℓ gradients at the level's boundary, frozen levels and everything else never change."""
import pytest
import torch

from lmsleep.continual.levels import LevelUpdates, check_periods, level_modules

from helpers import random_tokens, tiny_model


def next_token_loss(model, tokens):
    logits = model(tokens[:, :-1])
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())


def flat(model, level):
    return torch.cat([p.detach().flatten().clone() for m in level_modules(model, level) for p in m.parameters()])


def test_each_level_changes_exactly_at_its_boundaries_by_the_sum_of_its_last_c_gradients():
    model = tiny_model(memory_levels=3, eviction="none", layout="AG")
    periods, lr = [1, 2, 4], 0.05
    updates = LevelUpdates(model, periods + [], lr=lr)
    others = {n: p.detach().clone() for n, p in model.named_parameters() if ".levels." not in n}
    history = {level: [] for level in range(3)}  # per level: gradients since its last update
    for step in range(1, 9):
        tokens = random_tokens(model, 2, 9, seed=step)
        before = {level: flat(model, level) for level in range(3)}
        params = {level: [p for m in level_modules(model, level) for p in m.parameters()] for level in range(3)}
        loss = next_token_loss(model, tokens)
        wrt = [p for level in range(3) for p in params[level]]
        grads = torch.autograd.grad(loss, wrt, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, wrt)]
        offset = 0
        for level in range(3):
            count = len(params[level])
            history[level].append(torch.cat([g.flatten() for g in grads[offset : offset + count]]))
            offset += count
        due = updates.accumulate(loss)
        assert due == [level for level in range(3) if step % periods[level] == 0]
        for level in due:
            updates.apply(level)
        for level in range(3):
            after = flat(model, level)
            if step % periods[level]:
                assert torch.equal(after, before[level])  # between boundaries: untouched
            else:
                assert len(history[level]) == periods[level]  # C_ℓ terms, not C_ℓ + 1
                expected = before[level] - lr * torch.stack(history[level]).sum(0)
                torch.testing.assert_close(after, expected, rtol=1e-12, atol=1e-12)
                history[level] = []
    for name, p in model.named_parameters():
        if ".levels." not in name:
            assert torch.equal(p, others[name]), name


def test_a_frozen_level_never_changes():
    model = tiny_model(memory_levels=2, eviction="none", layout="A")
    updates = LevelUpdates(model, [1, 0], lr=0.1)
    frozen = flat(model, 1)
    for step in range(3):
        for level in updates.accumulate(next_token_loss(model, random_tokens(model, 2, 8, seed=step))):
            updates.apply(level)
    assert torch.equal(flat(model, 1), frozen)
    assert not torch.equal(flat(model, 0), frozen[: flat(model, 0).numel()])
    with pytest.raises(ValueError, match="frozen"):
        updates.apply(1)


def test_adam_keeps_masked_and_pruned_experts_exactly_zero():
    model = tiny_model(memory_levels=1, eviction="none", layout="A", expert_pool=2)
    level = level_modules(model, 0)
    for m in level:
        m.unlock(torch.Generator().manual_seed(0))
    updates = LevelUpdates(model, [1], lr=0.1, optimizer="adam")
    for step in range(2):
        for due in updates.accumulate(next_token_loss(model, random_tokens(model, 2, 8, seed=step))):
            updates.apply(due)
    for m in level:
        assert m.B[0].abs().max() > 0 and m.A[1].abs().max() == 0
        m.reset(0)
    for step in range(2):
        for due in updates.accumulate(next_token_loss(model, random_tokens(model, 2, 8, seed=5 + step))):
            updates.apply(due)
    for m in level:
        assert m.A[0].abs().max() == 0 and m.B[0].abs().max() == 0  # Adam's old moments did not move it


@pytest.mark.parametrize("periods,message", [
    ([1, 2], "one period per memory level"),
    ([2, 3, 6], "divisible"),
    ([4, 2, 8], "grow"),
    ([1, -1, 2], r"periods\[1\]"),
    ([1, 2.0, 4], r"periods\[1\]"),
])
def test_inconsistent_periods_are_refused(periods, message):
    with pytest.raises(ValueError, match=message):
        check_periods(periods, 3)


def test_periods_may_skip_frozen_levels():
    assert check_periods([1, 0, 4], 3) == [1, 0, 4]
    with pytest.raises(ValueError, match="no memory levels"):
        LevelUpdates(tiny_model(), [1])
