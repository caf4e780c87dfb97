"""Memory levels as an MLP kind (layers.levels): the expert pool's masks, unlocking and reset, routing, and
a paper-1 hybrid that carries levels (its stream still equals its training forward)."""
import pytest
import torch

from lmsleep import SleepLM
from lmsleep.layers import SwiGLU
from lmsleep.layers.levels import ExpertPoolExhausted, MemoryLevel, MemoryLevels
from lmsleep.stream import SleepStream

from helpers import random_tokens, tiny_model


def level(**options) -> MemoryLevel:
    torch.manual_seed(0)
    return MemoryLevel(12, 20, **options).double()


def train_slot(lvl: MemoryLevel, slot: int) -> None:
    with torch.no_grad():
        lvl.A[slot].normal_()
        lvl.B[slot].normal_()
        lvl.pool_router[slot].normal_()


def test_one_level_with_one_base_expert_is_a_swiglu():
    lvl = level()
    swiglu = SwiGLU(12, 20).double()
    swiglu.load_state_dict(lvl.base[0].state_dict())
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    assert torch.equal(lvl(x), swiglu(x))
    chain = MemoryLevels(12, 20, 1).double()
    chain.levels[0].load_state_dict(lvl.state_dict())
    assert torch.equal(chain(x), swiglu(x))


@pytest.mark.parametrize("gating", ["sigmoid", "sum", "softmax"])
def test_a_masked_expert_changes_no_output_and_gets_no_gradient(gating):
    lvl = level(pool=3, gating=gating)
    lvl.unlock()
    train_slot(lvl, 0)
    train_slot(lvl, 2)  # slot 2 holds weights but is masked
    x = torch.randn(2, 4, 12, dtype=torch.float64)
    masked_output = lvl(x)
    with torch.no_grad():
        lvl.A[2].mul_(5)
        lvl.B[2].add_(1)
    assert torch.equal(lvl(x), masked_output)
    lvl(x).square().sum().backward()
    for p in (lvl.A, lvl.B):
        assert p.grad[2].abs().max() == 0 and p.grad[1].abs().max() == 0
        assert p.grad[0].abs().max() > 0
    if gating != "sum":
        assert lvl.pool_router.grad[2].abs().max() == 0
    if gating == "sigmoid":  # (a softmax over one active expert is 1 whatever its logit: no gradient there)
        assert lvl.pool_router.grad[0].abs().max() > 0


def test_unlocking_changes_no_output_and_reset_restores_the_masked_state_exactly():
    lvl = level(pool=2, gating="softmax")
    x = torch.randn(2, 4, 12, dtype=torch.float64)
    before_output, before_state = lvl(x), {k: v.clone() for k, v in lvl.state_dict().items()}
    generator = torch.Generator().manual_seed(3)
    slot = lvl.unlock(generator)
    assert slot == 0 and lvl.active.tolist() == [True, False]
    assert torch.equal(lvl(x), before_output)  # B = 0
    assert lvl.A[0].std().item() == pytest.approx(0.02, rel=0.2) and lvl.B[0].abs().max() == 0
    train_slot(lvl, 0)
    assert not torch.allclose(lvl(x), before_output)
    lvl.reset(0)
    assert torch.equal(lvl(x), before_output)
    for name, value in lvl.state_dict().items():
        assert torch.equal(value, before_state[name]), name


def test_an_exhausted_pool_says_how_to_enlarge_it():
    lvl = level(pool=2)
    lvl.unlock(), lvl.unlock()
    with pytest.raises(ExpertPoolExhausted, match="expert_pool"):
        lvl.unlock()
    lvl.reset(1)
    assert lvl.unlock() == 1


def test_router_runs_the_top_expert_and_dreaming_adds_a_random_other():
    lvl = level(base_experts=4)
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    y = lvl(x)
    assert lvl.last_routed.shape == (2, 9, 4) and (lvl.last_routed.sum(-1) == 1).all()
    top = lvl.router(x).argmax(-1)
    assert lvl.last_routed.gather(-1, top[..., None]).all()
    lvl.dreaming = torch.Generator().manual_seed(0)
    dreamt = lvl(x)
    assert (lvl.last_routed.sum(-1) == 2).all()  # a random other expert really runs for every token
    assert lvl.last_routed.gather(-1, top[..., None]).all()
    assert not torch.allclose(dreamt, y)
    lvl.dreaming = None
    assert torch.equal(lvl(x), y)


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_a_sleep_hybrid_with_memory_levels_streams_as_it_trains(eviction):
    model = tiny_model(memory_levels=2, level_experts=2, expert_pool=2, sleep_passes=3, eviction=eviction)
    for block in model.blocks:
        for lvl in block.mlp.levels:
            lvl.unlock()
            train_slot(lvl, 0)
    tokens = random_tokens(model, 2, 19)
    with torch.no_grad():
        expected = model(tokens)
        streamed = SleepStream(model, batch_size=2).feed(tokens)
    torch.testing.assert_close(streamed, expected, rtol=1e-9, atol=1e-9)


def test_levels_in_the_config_build_and_train():
    model = tiny_model(memory_levels=3, expert_pool=2)
    assert all(len(block.mlp.levels) == 3 for block in model.blocks)
    groups = model.optimizer_groups()
    adamw = {id(p) for p in groups["adamw"]}
    assert all(id(block.mlp.levels[0].A) in adamw for block in model.blocks)
    assert isinstance(model, SleepLM) and model.estimate_flops([0] * 7 + [1] * 7) > 0


def test_a_model_with_unlocked_experts_saves_and_loads_exactly(tmp_path):
    from lmsleep.io import load_model, save_model

    model = tiny_model(memory_levels=2, expert_pool=3)
    for block in model.blocks:
        block.mlp.levels[1].unlock()
        train_slot(block.mlp.levels[1], 0)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    tokens = random_tokens(model, 2, 9)
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


def test_a_level_can_hold_an_existing_module_as_its_base():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.GELU(), torch.nn.Linear(20, 12)).double()
    lvl = MemoryLevel(12, None, base=mlp, pool=2, dtype=torch.float64)
    assert lvl.base[0] is mlp and lvl.A.dtype == torch.float64
    x = torch.randn(2, 4, 12, dtype=torch.float64)
    assert torch.equal(lvl(x), mlp(x))
    with pytest.raises(ValueError, match="a level given a base module has exactly one base expert, got base_experts=2"):
        MemoryLevel(12, None, base=mlp, base_experts=2)


def test_a_level_without_base_experts_is_its_pool_alone():
    lvl = level(base_experts=0, pool=2)
    x = torch.randn(2, 4, 12, dtype=torch.float64)
    assert len(lvl.base) == 0 and torch.equal(lvl(x), torch.zeros_like(x))
    slot = lvl.unlock()
    train_slot(lvl, slot)
    gates = torch.sigmoid(4.0 * x @ lvl.pool_router[slot] - 4.0)
    expected = gates[..., None] * torch.einsum("...r,dr->...d", x @ lvl.A[slot].t(), lvl.B[slot])
    torch.testing.assert_close(lvl(x), expected)
    lvl.dreaming = torch.Generator().manual_seed(0)  # the random extra expert can only be the pool's
    torch.testing.assert_close(lvl(x), torch.einsum("...r,dr->...d", x @ lvl.A[slot].t(), lvl.B[slot]))


def test_a_chain_over_an_existing_mlp_computes_it_until_an_expert_learns():
    torch.manual_seed(0)
    mlp = SwiGLU(12, 20).double()
    chain = MemoryLevels(12, None, 3, base=mlp, pool=2, dtype=torch.float64)
    assert chain.levels[-1].base[0] is mlp and [len(lvl.base) for lvl in chain.levels] == [0, 0, 1]
    x = torch.randn(2, 4, 12, dtype=torch.float64)
    assert torch.equal(chain(x), mlp(x))
    fast = chain.levels[0]
    train_slot(fast, fast.unlock())
    y1 = fast(x)
    torch.testing.assert_close(chain(x), y1 + mlp(x + y1))  # h_1 = x + y_1 feeds the slower levels


def test_the_active_slots_follow_every_change_of_the_mask():
    """MemoryLevel reads its active slots once per change of the mask (its version counter): unlock, reset,
    load_state_dict, a write into the mask, a copy and a conversion are all seen by the next forward."""
    import copy

    lvl = level(pool=3)
    x = torch.randn(2, 4, 12, dtype=torch.float64)
    lvl(x)
    assert lvl.active_slots() == [] and lvl.last_gates is None
    lvl.unlock()
    train_slot(lvl, 0)
    lvl(x)
    assert lvl.active_slots() == [0] and lvl.last_gates[0] == [0]
    twin = copy.deepcopy(lvl)  # a teacher is such a copy, made before or after a slot changes
    lvl.unlock()
    assert lvl.active_slots() == [0, 1] and twin.active_slots() == [0]
    fresh = copy.deepcopy(lvl)
    assert fresh.active_slots() == [0, 1]
    lvl.reset(0)
    lvl(x)
    assert lvl.last_gates[0] == [1]
    with torch.no_grad():
        lvl.active[2] = True
    assert lvl.active_slots() == [1, 2]
    lvl.load_state_dict(twin.state_dict())
    assert lvl.active_slots() == [0]
    assert torch.equal(lvl(x), twin(x))
    assert lvl.float().active_slots() == [0]  # a conversion replaces no buffer values
    held = lvl.active_slots()
    held.append(5)  # a caller's list is its own
    assert lvl.active_slots() == [0]


@pytest.mark.parametrize("slots", [[0], [0, 1], [0, 2], [1, 2, 3]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_level_without_grad_computes_what_it_computes_with_grad_bit_for_bit(slots, dtype):
    """Without grad (a decode) the low-rank experts run as matmuls instead of einsums: the same numbers."""
    torch.manual_seed(1)
    lvl = MemoryLevel(64, 96, rank=8, pool=4).to(dtype)
    for slot in range(max(slots) + 1):
        lvl.unlock()
        train_slot(lvl, slot)
    for slot in set(range(max(slots) + 1)) - set(slots):
        lvl.reset(slot)
    for shape in [(32, 1), (40, 16), (8, 9), (1, 21), (648, 1)]:
        x = torch.randn(*shape, 64, dtype=dtype)
        with torch.enable_grad():
            trained = lvl(x)
        with torch.no_grad():
            decoded = lvl(x)
        with torch.inference_mode():
            inferred = lvl(x)
        assert torch.equal(trained.detach(), decoded) and torch.equal(decoded, inferred), shape
