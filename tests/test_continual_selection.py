"""Dream selection (lmsleep.continual.selection): gradient-importance scores and top k + b random."""
import pytest
import torch
import torch.nn.functional as F

from helpers import random_tokens, tiny_model
from lmsleep.continual.lora import LoRAAdapters, attached
from lmsleep.continual.selection import importance, select
from test_continual_lora import dataset, state_bytes


def test_select_keeps_top_k_then_b_random_from_the_rest():
    scores = torch.tensor([0.1, 0.9, -0.3, 0.5, 0.7, 0.0, 0.2, -0.8])
    kept = select(scores, 3, 2, torch.Generator().manual_seed(0))
    assert len(kept) == 5 and len(set(kept.tolist())) == 5
    assert kept[:3].tolist() == [1, 4, 3]  # the three highest, highest first
    assert set(kept[3:].tolist()) <= {0, 2, 5, 6, 7}
    again = select(scores, 3, 2, torch.Generator().manual_seed(0))
    assert torch.equal(kept, again)
    draws = {tuple(select(scores, 3, 2, torch.Generator().manual_seed(s))[3:].tolist()) for s in range(20)}
    assert len(draws) > 3  # really random among the rest
    assert set().union(*draws) == {0, 2, 5, 6, 7}


@pytest.mark.parametrize("k,b", [(0, 0), (0, 3), (4, 0), (2, 2), (5, 1), (3, 9), (10, 0)])
def test_select_size(k, b):
    scores = torch.randn(6, generator=torch.Generator().manual_seed(k + 10 * b))
    kept = select(scores, k, b, torch.Generator().manual_seed(1))
    assert len(kept) == min(k + b, 6) and len(set(kept.tolist())) == len(kept)
    top = torch.argsort(scores, descending=True)[: min(k, 6)]
    assert kept[: len(top)].tolist() == top.tolist()


def test_select_bad_input():
    scores = torch.zeros(4)
    with pytest.raises(ValueError, match="k must be a non-negative integer"):
        select(scores, -1, 0)
    with pytest.raises(ValueError, match="b must be a non-negative integer"):
        select(scores, 1, -2)
    with pytest.raises(ValueError, match="scores must be finite"):
        select(torch.tensor([0.0, float("nan")]), 1, 0)
    with pytest.raises(ValueError, match="scores must be a 1-D tensor"):
        select(torch.zeros(2, 2), 1, 0)


def direct_gradient(model, data, seed):
    """The flattened gradient of SleepLM.loss on `data` over one fresh adapter's A and B, one at a time."""
    adapters = LoRAAdapters.init(model, 1, rank=4, alpha=8.0, seed=seed)
    for tensor in adapters.parameters():
        tensor.requires_grad_(True)
    with adapters.applied(model, index=0):
        loss = model.loss(*data)
    grads = torch.autograd.grad(loss, adapters.parameters())
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("layout", ["AGAG", "AA"], ids=["hybrid", "attention-only"])
def test_importance_equals_direct_cosine(layout):
    model = tiny_model(layout=layout)
    context = dataset(model, 2, 10, 50)
    dreams = [dataset(model, 1, 10, 1), dataset(model, 3, 10, 2), dataset(model, 2, 12, 3, answer_from=1)]
    before = state_bytes(model)
    scores = importance(model, dreams, context, rank=4, alpha=8.0, seed=3)
    assert state_bytes(model) == before
    target = direct_gradient(model, context, 3)
    expected = torch.stack([F.cosine_similarity(direct_gradient(model, d, 3), target, dim=0) for d in dreams])
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-12)
    assert len(set(scores.tolist())) == 3 and bool((scores.abs() < 1).all())


def test_dream_identical_to_context_scores_one():
    model = tiny_model()
    context = dataset(model, 2, 10, 50)
    tokens, targets, mask = context
    dreams = [dataset(model, 2, 10, 1), (tokens.clone(), targets.clone(), mask.clone())]
    scores = importance(model, dreams, context, rank=4, alpha=8.0)
    assert abs(float(scores[1]) - 1.0) < 1e-12
    assert float(scores[0]) < 0.999


def test_gradient_over_A_is_zero_at_B_zero():
    # Why the score must include B: at a fresh adapter A's gradient vanishes.
    model = tiny_model()
    adapters = LoRAAdapters.init(model, 1, rank=4, alpha=8.0)
    for tensor in adapters.parameters():
        tensor.requires_grad_(True)
    with attached(model, adapters) as router:
        router.route([0], None)
        loss = model.loss(*dataset(model, 2, 10, 1))
    grads = torch.autograd.grad(loss, adapters.parameters())
    assert all(float(g.abs().max()) == 0 for g in grads[: len(adapters.A)])
    assert all(float(g.abs().max()) > 0 for g in grads[len(adapters.A):])


def test_importance_bad_input():
    model = tiny_model()
    with pytest.raises(ValueError, match="datasets"):
        importance(model, [], "not a dataset")
    tokens = random_tokens(model, 1, 5)
    with pytest.raises(ValueError, match="empty loss_mask"):
        importance(model, [(tokens, tokens, torch.zeros_like(tokens))], dataset(model, 1, 5, 1))
