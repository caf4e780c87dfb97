"""Paper 2's baselines (lmsleep.continual.baselines): full fine-tuning, the empirical Fisher, EWC."""
import copy

import pytest
import torch

from helpers import random_tokens, tiny_model
from lmsleep.continual.baselines import EWC, fisher_diagonal, sft


def data(model, n=3, time=9, seed=0):
    tokens = random_tokens(model, n, time, seed)
    targets = random_tokens(model, n, time, seed + 1)
    mask = torch.zeros(n, time, dtype=torch.long)
    mask[:, 4:] = 1
    return tokens, targets, mask


def test_sft_lowers_the_loss_and_zero_steps_change_nothing():
    model = tiny_model(seed=0, layout="AA")
    batch = data(model)
    original = copy.deepcopy(model.state_dict())
    assert sft(model, batch, steps=0) == []
    assert all(torch.equal(original[k], v) for k, v in model.state_dict().items())
    losses = sft(model, batch, steps=15, lr=1e-2)
    assert losses[-1] < 0.7 * losses[0]
    assert any(not torch.equal(original[k], v) for k, v in model.state_dict().items())


def test_fisher_diagonal_is_the_mean_squared_per_row_gradient():
    model = tiny_model(seed=1, layout="AGAG")
    tokens, targets, mask = data(model, n=3, time=7)
    fisher = fisher_diagonal(model, (tokens, targets, mask))
    assert all(p.grad is None for p in model.parameters())  # it leaves no gradient behind
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for row in range(3):
        model.zero_grad()
        model.loss(tokens[row : row + 1], targets[row : row + 1], mask[row : row + 1]).backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                expected[name] += p.grad.pow(2) / 3
    for name in expected:
        torch.testing.assert_close(fisher[name], expected[name], rtol=1e-5, atol=1e-9)


def test_ewc_penalty_is_zero_at_the_anchor_and_its_gradient_is_lambda_fisher_times_the_distance():
    model = tiny_model(seed=2, layout="AA")
    fisher = {name: torch.rand_like(p) for name, p in model.named_parameters()}
    penalty = EWC(model, fisher, lam=3.0)
    assert penalty(model).item() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    model.zero_grad()
    penalty(model).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 3.0 * fisher[name] * 0.1 * torch.ones_like(p), rtol=1e-4, atol=1e-6)


def test_ewc_keeps_important_weights_where_they_were():
    model = tiny_model(seed=3, layout="AA")
    old, new = data(model, seed=10), data(model, seed=20)
    fisher = fisher_diagonal(model, old)
    free, held = copy.deepcopy(model), copy.deepcopy(model)
    sft(free, new, steps=10, lr=1e-2)
    sft(held, new, steps=10, lr=1e-2, penalty=EWC(held, {k: v * 1e4 for k, v in fisher.items()}, lam=1.0))

    def moved(m):
        return sum(((a - b) ** 2 * fisher[n]).sum().item()
                   for (n, a), b in zip(m.named_parameters(), model.parameters()))

    assert moved(held) < 0.5 * moved(free)


def test_bad_input_is_named():
    model = tiny_model(seed=0, layout="AA")
    with pytest.raises(ValueError, match="share one"):
        sft(model, (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 3)))
    with pytest.raises(ValueError, match="lr"):
        sft(model, data(model), lr=0)
    with pytest.raises(ValueError, match="does not have"):
        EWC(model, {"nope": torch.zeros(1)}, lam=1.0)
