"""Isolated LoRA fine-tunes (lmsleep.continual.lora): batched equals sequential, the original is untouched."""
import copy
import io

import pytest
import torch

from helpers import random_tokens, tiny_model
from lmsleep.continual.lora import LoRAAdapters, finetune, mlp_linears


def dataset(model, n, time, seed, answer_from=3):
    tokens = random_tokens(model, n, time, seed)
    targets = random_tokens(model, n, time, seed + 1000)
    mask = torch.zeros(n, time, dtype=torch.long)
    mask[:, answer_from:] = 1
    return tokens, targets, mask


def three_datasets(model):
    # Different data per copy, and different sizes (the unequal-groups path of the hook).
    return [dataset(model, 2, 10, 1), dataset(model, 3, 10, 2), dataset(model, 2, 10, 3)]


def state_bytes(model):
    buffer = io.BytesIO()
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, buffer)
    return buffer.getvalue()


def assert_same_adapters(a, b, atol):
    assert a.targets == b.targets
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)


SETTINGS = dict(rank=4, alpha=8.0, steps=6, lr=3e-2, seed=5)


@pytest.mark.parametrize("layout", ["AGAG", "AA"], ids=["hybrid", "attention-only"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_batched_equals_sequential(layout, optimizer):
    model = tiny_model(layout=layout)
    data = three_datasets(model)
    batched = finetune(model, data, optimizer=optimizer, batched=True, **SETTINGS)
    sequential = finetune(model, data, optimizer=optimizer, batched=False, **SETTINGS)
    assert batched.losses.shape == (6, 3)
    torch.testing.assert_close(batched.losses, sequential.losses, rtol=0, atol=1e-12)
    assert_same_adapters(batched.adapters, sequential.adapters, atol=1e-12)
    # It trained: B moved away from 0 and each copy's loss fell.
    assert all(float(B.abs().max()) > 0 for B in batched.adapters.B)
    assert bool((batched.losses[-1] < batched.losses[0]).all())


def test_equal_group_sizes_and_minibatches_equal_sequential():
    model = tiny_model()
    data = [dataset(model, 4, 9, seed) for seed in (1, 2, 3)]
    batched = finetune(model, data, batch_size=2, **SETTINGS)
    sequential = finetune(model, data, batch_size=2, batched=False, **SETTINGS)
    torch.testing.assert_close(batched.losses, sequential.losses, rtol=0, atol=1e-12)
    assert_same_adapters(batched.adapters, sequential.adapters, atol=1e-12)


def test_copies_that_sleep_differently_still_equal_sequential():
    # With N = 2, a window whose mask is zero over the batch gets a sleep pass. Copy 0 answers only in
    # the second window (its first window sleeps), copy 1 in both: stacked in one batch, copy 0's first
    # window would stop sleeping. They must run in separate forwards.
    model = tiny_model(sleep_passes=2)
    data = [dataset(model, 2, 14, 1, answer_from=8), dataset(model, 2, 14, 2, answer_from=2)]
    batched = finetune(model, data, **SETTINGS)
    sequential = finetune(model, data, batched=False, **SETTINGS)
    torch.testing.assert_close(batched.losses, sequential.losses, rtol=0, atol=1e-12)
    assert_same_adapters(batched.adapters, sequential.adapters, atol=1e-12)


def test_copy_does_not_depend_on_other_copies_data():
    model = tiny_model()
    data = three_datasets(model)
    first = finetune(model, data, **SETTINGS)
    changed = list(data)
    changed[2] = dataset(model, 2, 10, 77)
    second = finetune(model, changed, **SETTINGS)
    for x, y in zip(first.adapters.parameters(), second.adapters.parameters()):
        torch.testing.assert_close(x[:2], y[:2], rtol=0, atol=1e-14)
        assert not torch.allclose(x[2], y[2])  # copy 2 itself did see the change
    torch.testing.assert_close(first.losses[:, :2], second.losses[:, :2], rtol=0, atol=1e-14)
    assert not torch.allclose(first.losses[:, 2], second.losses[:, 2])


@pytest.mark.parametrize("layout", ["AGAG", "AA"], ids=["hybrid", "attention-only"])
def test_original_model_bit_identical(layout):
    model = tiny_model(layout=layout)
    model.blocks[0].mlp.down.weight.requires_grad_(False)  # a mixed pattern that must be restored as it was
    flags = [p.requires_grad for p in model.parameters()]
    before = state_bytes(model)
    tuned = finetune(model, three_datasets(model), **SETTINGS)
    with tuned.adapters.applied(model, index=1):
        assert not any(p.requires_grad for p in model.parameters())
        model(random_tokens(model, 2, 10)).sum()
    with pytest.raises(RuntimeError, match="boom"):  # hooks and flags are undone whatever happens
        with tuned.adapters.applied(model, index=0):
            raise RuntimeError("boom")
    assert state_bytes(model) == before
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(not m._forward_hooks for m in model.modules())


def test_fresh_adapter_changes_nothing():
    model = tiny_model()
    tokens = random_tokens(model, 3, 12)
    expected = model(tokens)
    adapters = LoRAAdapters.init(model, 4, rank=3, alpha=6.0, seed=1)
    assert all(float(A.abs().max()) > 0 for A in adapters.A)  # A random, B = 0
    with adapters.applied(model, index=2):
        assert torch.equal(model(tokens), expected)


def test_applied_equals_merged_weights():
    # W x + (α/r) B (A x) is the same function as the Linear with weight W + (α/r) B A.
    model = tiny_model()
    tuned = finetune(model, three_datasets(model), **SETTINGS).adapters
    tokens = random_tokens(model, 2, 12)
    for index in range(tuned.count):
        merged = copy.deepcopy(model)
        modules = dict(merged.named_modules())
        with torch.no_grad():
            for name, A, B in zip(tuned.targets, tuned.A, tuned.B):
                modules[name].weight += tuned.scale * B[index] @ A[index]
        with tuned.applied(model, index=index):
            torch.testing.assert_close(model(tokens), merged(tokens), rtol=0, atol=1e-12)


def test_batched_losses_equal_each_copy_alone():
    model = tiny_model()
    data = three_datasets(model)
    tuned = finetune(model, data, **SETTINGS).adapters
    losses = tuned.losses(model, data)
    for index, (tokens, targets, mask) in enumerate(data):
        with tuned.applied(model, index=index):
            torch.testing.assert_close(losses[index], model.loss(tokens, targets, mask), rtol=0, atol=1e-12)


def test_targets_default_and_by_name():
    model = tiny_model()
    assert mlp_linears(model) == [f"blocks.{i}.mlp.{name}" for i in range(4) for name in ("gate_up", "down")]
    data = three_datasets(model)
    names = ["blocks.1.mixer.qkv", "head"]
    batched = finetune(model, data, targets=names, **SETTINGS)
    sequential = finetune(model, data, targets=names, batched=False, **SETTINGS)
    assert batched.adapters.targets == tuple(names)
    assert batched.adapters.B[1].shape == (3, model.config.vocab_size, 4)
    assert_same_adapters(batched.adapters, sequential.adapters, atol=1e-12)


def test_bad_input():
    model = tiny_model()
    good = dataset(model, 2, 10, 1)
    with pytest.raises(ValueError, match="no module named 'blocks.9.mlp'"):
        finetune(model, [good], targets=["blocks.9.mlp"])
    with pytest.raises(TypeError, match="not an nn.Linear"):
        finetune(model, [good], targets=["blocks.0.mlp"])
    with pytest.raises(ValueError, match="datasets must be a non-empty list"):
        finetune(model, [])
    tokens, targets, mask = good
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"datasets\[1\] example 1 has an empty loss_mask"):
        finetune(model, [good, (tokens, targets, empty)])
    with pytest.raises(ValueError, match=r"datasets\[0\] targets must be \[n >= 1, T\]"):
        finetune(model, [(tokens, targets[:, :5], mask)])
    with pytest.raises(TypeError, match=r"datasets\[0\] loss_mask must be an integer tensor, got torch.float32"):
        finetune(model, [(tokens, targets, mask.float())])
    with pytest.raises(ValueError, match="optimizer must be one of"):
        finetune(model, [good], optimizer="rmsprop")
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        finetune(model, [good], rank=0)
    adapters = LoRAAdapters.init(model, 2, rank=2, alpha=4.0)
    with pytest.raises(ValueError, match="index must be an integer in"):
        with adapters.applied(model, index=2):
            pass
    with pytest.raises(ValueError, match="one dataset per adapter"):
        adapters.losses(model, [good])
