"""Dreaming (continual.dreaming) on its own: the model never changes, selection keeps k + b, rewards follow
τ with the "every" / "best" switch, ReST-EM trains only on rewarded pairs, the random expert changes what runs."""
import pytest
import torch

from lmsleep.continual.dreaming import DreamingConfig, dream, random_experts, rest_em_data, rewards_for
from lmsleep.layers.levels import MemoryLevel

from helpers import random_tokens, tiny_model

CFG = DreamingConfig(dreams=5, dream_length=4, keep_top=2, keep_random=1, rank=2, steps=3, generator_steps=2)


def model_and_context():
    model = tiny_model(memory_levels=1, level_experts=3, layout="A", eviction="none", dtype=torch.float32)
    return model, random_tokens(model, 1, 6, seed=2)


def test_a_dream_round_keeps_k_plus_b_and_never_changes_the_model():
    model, context = model_and_context()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def measure(m):  # τ: minus the loss on the context (a model that learnt it scores higher)
        with torch.no_grad():
            logits = m(context[:, :-1])
        calls.append(1)
        return -torch.nn.functional.cross_entropy(logits[0], context[0, 1:]).item()

    report = dream(model, context, measure, CFG)
    (round_,) = report.rounds
    assert len(round_.dreams) == 5 and all(len(d) == 4 for d in round_.dreams)
    assert len(round_.kept) == 3 == len(set(round_.kept)) == len(round_.rewards) == len(round_.measures)
    assert sorted(round_.kept[:2]) == sorted(sorted(range(5), key=lambda i: -round_.scores[i])[:2])
    assert round_.rewards == [int(m > round_.measure_before) for m in round_.measures]
    assert len(calls) == 1 + 3
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert (report.generator is not None) == any(round_.rewards)
    assert round_.generator_trained_on == sum(round_.rewards)


def test_reward_switch_every_or_best():
    assert rewards_for([0.1, 0.5, 0.3], 0.2, "every") == [0, 1, 1]
    assert rewards_for([0.1, 0.5, 0.3], 0.2, "best") == [0, 1, 0]
    assert rewards_for([0.1, 0.15], 0.2, "best") == [0, 0]


def test_rest_em_trains_only_on_rewarded_pairs():
    context = torch.tensor([[1, 2, 3]])
    dreams = torch.tensor([[4, 5], [6, 7], [8, 9]])
    tokens, targets, mask = rest_em_data(context, dreams, [0, 1, 1])
    assert tokens.tolist() == [[1, 2, 3, 6], [1, 2, 3, 8]] and targets.tolist() == [[2, 3, 6, 7], [2, 3, 8, 9]]
    assert mask.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]  # the loss is on the dream, not on C
    assert rest_em_data(context, dreams, [0, 0, 0]) is None


def test_the_random_expert_changes_which_experts_run():
    model, context = model_and_context()
    levels = [m for m in model.modules() if isinstance(m, MemoryLevel)]
    with torch.no_grad():
        plain = model(context)
    assert all((level.last_routed.sum(-1) == 1).all() for level in levels)
    with random_experts(model, seed=3), torch.no_grad():
        dreamt = model(context)
        assert all((level.last_routed.sum(-1) == 2).all() for level in levels)  # one more expert per token
    assert not torch.allclose(plain, dreamt)
    with torch.no_grad():
        assert torch.equal(model(context), plain)  # off again after dreaming


@pytest.mark.parametrize("field,value", [("keep_top", -1), ("reward_mode", "all"), ("dreams", 0), ("lr", 0.0)])
def test_bad_dreaming_values_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        DreamingConfig(**{field: value})


def test_bad_measure_or_context_is_refused():
    model, context = model_and_context()
    with pytest.raises(TypeError, match="measure"):
        dream(model, context, 0.5, CFG)
    with pytest.raises(ValueError, match="context"):
        dream(model, context[:, :1], lambda m: 0.0, CFG)


def test_dream_datasets_read_the_prefix_unscored_and_propose_keeps_k_plus_b():
    from lmsleep.continual.dreaming import dream_datasets, propose

    model, context = model_and_context()
    dreams = torch.randint(1, 5, (3, 5))
    prefix = torch.tensor([[7, 7, 2]])
    for d, (tokens, targets, mask) in zip(dreams, dream_datasets(dreams, prefix)):
        assert torch.equal(tokens[0], torch.cat([prefix[0], d])[:-1])
        assert torch.equal(targets[0][mask[0].bool()], d)  # exactly the dream's tokens are scored
    cfg = DreamingConfig(dreams=5, dream_length=4, keep_top=2, keep_random=1, rank=2, steps=1)
    sampled, datasets, scores, kept = propose(model, context, cfg, seed=3, prefix=prefix)
    assert sampled.shape == (5, 4) and len(datasets) == 5 and scores.shape == (5,)
    assert len(kept) == 3 and len(set(kept)) == 3
    assert set(torch.topk(scores, 2).indices.tolist()) <= set(kept)
