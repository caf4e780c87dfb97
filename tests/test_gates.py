"""Experts with an off path (issue 18, item 2) and the random expert of dreaming on the default model (item 4),
checked against their definitions in layers.levels."""
import pytest
import torch

from lmsleep.layers.levels import CLOSED_OFFSET, GATE_SCALE, OPEN, MemoryLevel


def level(pool=3, **options) -> MemoryLevel:
    torch.manual_seed(0)
    return MemoryLevel(12, 20, pool=pool, **options).double()


def trained(lvl: MemoryLevel, slot: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lvl.A[slot] = torch.randn(lvl.A.shape[1:], generator=g, dtype=torch.float64)
        lvl.B[slot] = torch.randn(lvl.B.shape[1:], generator=g, dtype=torch.float64)
        lvl.pool_router[slot] = torch.randn(lvl.pool_router.shape[1:], generator=g, dtype=torch.float64)


@pytest.mark.parametrize("gating", ["sigmoid", "sum", "softmax"])
def test_unlocking_changes_no_output_for_every_gating(gating):
    lvl = level(gating=gating)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    before = lvl(x)
    lvl.unlock(torch.Generator().manual_seed(1))
    assert torch.equal(lvl(x), before)
    trained(lvl, 0, 2)
    alone = lvl(x)
    lvl.unlock(torch.Generator().manual_seed(3))  # a second expert beside a trained one
    if gating == "softmax":
        # a softmax over the active experts gives the new one mass: the trained one's share drops, so the output
        # moves (a reason "softmax" is an ablation, not the default; it cannot be both trainable and absent)
        assert not torch.allclose(lvl(x), alone)
    else:
        torch.testing.assert_close(lvl(x), alone, rtol=0, atol=1e-13)  # (a sum over two rounds differently)
    lvl.reset(1)
    assert torch.equal(lvl(x), alone)


def test_the_default_gate_is_the_definition_and_starts_closed():
    lvl = level()
    assert lvl.gating == "sigmoid"
    slots = [lvl.unlock(torch.Generator().manual_seed(s)) for s in (1, 2)]
    trained(lvl, slots[0], 5)
    trained(lvl, slots[1], 6)
    x = torch.randn(4, 7, 12, dtype=torch.float64)
    base = lvl.base[0](x)
    expected = base.clone()
    for slot in slots:
        gate = torch.sigmoid(GATE_SCALE * (x @ lvl.pool_router[slot]) - CLOSED_OFFSET)
        expected = expected + gate[..., None] * ((x @ lvl.A[slot].t()) @ lvl.B[slot].t())
    torch.testing.assert_close(lvl(x), expected)
    fresh = level()
    fresh.unlock()
    assert set(fresh.opening(x).values()) == {0.0}  # a new expert's gate: σ(−CLOSED_OFFSET) < OPEN everywhere
    assert torch.sigmoid(torch.tensor(-CLOSED_OFFSET)) < OPEN


def test_a_gate_can_shut_an_expert_off_where_sum_and_softmax_cannot():
    x = torch.randn(3, 6, 12, dtype=torch.float64)
    outputs = {}
    for gating in ("sigmoid", "sum", "softmax"):
        lvl = level(gating=gating)
        base = lvl.base[0](x)
        lvl.unlock()
        trained(lvl, 0, 7)
        with torch.no_grad():
            lvl.pool_router[0] = -10 * x.reshape(-1, 12).mean(0) / x.reshape(-1, 12).mean(0).norm()  # gate logit ≪ 0
            lvl.pool_router[0] *= 0 if gating != "sigmoid" else 1
        outputs[gating] = (lvl(x) - base).abs().max().item()
    assert outputs["sum"] > 0.1 and outputs["softmax"] > 0.1  # one active expert: always fully on
    lvl = level()
    lvl.unlock()
    trained(lvl, 0, 7)
    with torch.no_grad():
        lvl.pool_router[0] = 0  # logit = −CLOSED_OFFSET: mostly off, and more so when pushed further
    small = (lvl(x) - lvl.base[0](x)).abs().max().item()
    assert small < 0.05 * outputs["sum"]


def test_while_dreaming_the_pool_takes_part_with_one_base_expert():
    lvl = level()  # the default: one base expert per level, nothing to route among base experts
    for seed in (1, 2):
        trained(lvl, lvl.unlock(torch.Generator().manual_seed(seed)), seed + 10)
    with torch.no_grad():
        lvl.pool_router.zero_()  # both gates closed (σ(−4)) on every token
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    awake = lvl(x)
    _, gates = lvl.last_gates
    assert (gates < OPEN).all()
    lvl.dreaming = torch.Generator().manual_seed(0)
    dreaming = lvl(x)
    slots, gates = lvl.last_gates
    forced = gates == 1.0
    assert (forced.sum(-1) == 1).all()  # one random low-rank expert forced open per token
    assert forced[..., 0].any() and forced[..., 1].any()  # both experts get picked somewhere
    assert not torch.allclose(dreaming, awake)  # so the experts that run change the output
    lvl.dreaming = None
    assert torch.equal(lvl(x), awake)


def test_while_dreaming_with_no_expert_anywhere_to_add_nothing_changes():
    lvl = level()
    x = torch.randn(2, 4, 12, dtype=torch.float64)
    awake = lvl(x)
    lvl.dreaming = torch.Generator().manual_seed(0)
    assert torch.equal(lvl(x), awake)
