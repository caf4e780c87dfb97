"""DecodeStep (lmsleep/decode_step.py) against its reference, SleepLM.wake: the same logits, memory and level
records, bit for bit, step after step; and wake's path wherever the fast one does not apply."""
import pytest
import torch

from lmsleep.decode_step import DecodeStep, supports
from lmsleep.layers import AttentionMemory
from lmsleep.stream import SleepStream, memory_rows, memory_with_room

from helpers import random_tokens, tiny_model

CONFIGS = {
    "one block, SwiGLU": dict(layout="A", eviction="none"),
    "two blocks, two levels": dict(layout="AA", eviction="none", memory_levels=2, expert_pool=4, expert_rank=3),
    "three blocks, three levels": dict(layout="AAA", eviction="none", memory_levels=3, expert_pool=3, expert_rank=2),
    "sliding window, one level": dict(layout="AA", eviction="sliding", window=5, memory_levels=1, expert_pool=2),
}
EXPERTS = {"none": [], "one": [0], "two apart": [0, 2]}


def model_for(config: str, experts: str, dtype: torch.dtype):
    """A tiny model whose every level has the active experts `experts` (slots past its pool left out), each
    with random factors and gate weights, so that it acts."""
    model = tiny_model(dtype=dtype, seed=3, **CONFIGS[config])
    torch.manual_seed(4)
    wanted = EXPERTS[experts]
    with torch.no_grad():
        for block in model.blocks:
            for level in getattr(block.mlp, "levels", []):
                slots = [slot for slot in wanted if slot < level.pool_size]
                for _ in range(max(slots) + 1 if slots else 0):
                    level.unlock()
                for slot in range(max(slots) + 1 if slots else 0):
                    if slot in slots:
                        level.A[slot].normal_(0, 0.3)
                        level.B[slot].normal_(0, 0.3)
                        level.pool_router[slot].normal_(0, 0.5)
                    else:
                        level.reset(slot)
                assert level.active_slots() == slots
    return model


def equal_memories(a: list, b: list) -> bool:
    return all(set(x.tensors()) == set(y.tensors()) and all(torch.equal(x.tensors()[k], y.tensors()[k])
                                                         for k in x.tensors()) for x, y in zip(a, b))


def level_records(model) -> list:
    out = []
    for block in model.blocks:
        for level in getattr(block.mlp, "levels", []):
            gates = None if level.last_gates is None else (level.last_gates[0], level.last_gates[1].clone())
            out.append((level.last_routed.clone(), gates))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("experts", list(EXPERTS))
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("room", [True, False], ids=["caches with room", "growing caches"])
def test_a_decode_step_is_wake_bit_for_bit(config, experts, dtype, room):
    model = model_for(config, experts, dtype)
    assert supports(model)
    prefix, steps = random_tokens(model, 5, 4, seed=6), random_tokens(model, 5, 7, seed=7)
    with torch.inference_mode():
        stream = SleepStream(model, 5)
        stream.feed(prefix)  # the sliding model has ended a window here: its memory holds retained keys
        memory = memory_with_room(stream.memory, steps.shape[1]) if room else stream.memory
        fast, plain = memory, memory_rows(memory, torch.arange(5))  # the reference gets its own copy
        step = DecodeStep(model)
        assert step.fast
        for t in range(steps.shape[1]):
            tokens = steps[:, t : t + 1]
            logits, fast = step(tokens, fast)
            fast_records = level_records(model)
            expected, _, plain = model.wake(tokens, plain)
            assert torch.equal(logits, expected[:, -1]), t
            assert equal_memories(fast, plain), t
            for (routed, gates), (routed_ref, gates_ref) in zip(fast_records, level_records(model)):
                assert torch.equal(routed, routed_ref)
                assert (gates is None) == (gates_ref is None)
                if gates is not None:
                    assert gates[0] == gates_ref[0] and torch.equal(gates[1], gates_ref[1])
        if room:  # the steady state wrote in place: one buffer throughout
            assert all(m.key_buffer is n.key_buffer for m, n in zip(fast, memory) if m.key_buffer is not None)


def test_what_the_fast_path_does_not_cover_goes_through_wake():
    model = model_for("two blocks, two levels", "one", torch.float64)
    tokens = random_tokens(model, 3, 1, seed=8)
    with torch.no_grad():
        _, _, memory = model.wake(random_tokens(model, 3, 4, seed=9), model.empty_memory())
        expected = model.wake(tokens, memory)[0][:, -1]

        calls = []
        handle = model.blocks[0].mlp.levels[1].base[0].down.register_forward_hook(lambda *_: calls.append(1))
        step = DecodeStep(model)  # a hook (as LoRA copies add): it must run, so wake runs
        assert not step.fast and not supports(model)
        assert torch.equal(step(tokens, memory)[0], expected) and calls == [1]
        handle.remove()
        assert DecodeStep(model).fast

        level = model.blocks[0].mlp.levels[0]
        level.dreaming = torch.Generator().manual_seed(0)  # dreaming picks random experts: wake's path
        assert not DecodeStep(model).fast
        level.dreaming = None

        two_tokens = random_tokens(model, 3, 2, seed=10)
        assert torch.equal(DecodeStep(model)(two_tokens, memory)[0], model.wake(two_tokens, memory)[0][:, -1])
    with torch.enable_grad():  # grad enabled: wake's training path, with its graph
        model.blocks[0].mlp.levels[0].A.requires_grad_(True)
        logits, _ = DecodeStep(model)(tokens, memory)
        assert logits.grad_fn is not None
        assert torch.equal(logits, model.wake(tokens, memory)[0][:, -1])

    assert not supports(tiny_model(layout="AG"))  # a hybrid: its Gated-DeltaNet blocks run as modules
    assert not supports(tiny_model(layout="AA", eviction="none", memory_levels=1, level_experts=2))  # a router


def test_continue_from_decodes_as_before_with_the_fast_step(monkeypatch):
    """replay.continue_from's completions with the fast step equal those with wake's path."""
    from lmsleep.continual import replay
    from lmsleep import decode_step

    model = model_for("two blocks, two levels", "one", torch.float32)
    prefix = random_tokens(model, 4, 5, seed=11)
    with torch.no_grad():
        logits, _, memory = model.wake(prefix, model.empty_memory())
    fast = replay.continue_from(model, memory, logits[:, -1], 9, 1.0, 5)
    monkeypatch.setattr(decode_step, "supports", lambda model: False)
    assert not replay.DecodeStep(model).fast  # now wake's path
    plain = replay.continue_from(model, memory, logits[:, -1], 9, 1.0, 5)
    assert torch.equal(fast, plain)
    assert not isinstance(memory[0], AttentionMemory) or memory[0].key_buffer is None  # the caller's memory untouched
