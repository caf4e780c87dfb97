"""Adaptive sleep: each row sleeps until its fast state converges (lmsleep.adaptive), in the training
forward, the stream and generate, with the passes each row ran reported."""
import math

import pytest
import torch

from lmsleep import Adaptive
from lmsleep.adaptive import relative_change
from lmsleep.stream import SleepStream

from helpers import random_tokens, tiny_model

L = 7
MIXED = 0.3  # on these random models the relative change per pass is ~0.1-0.4: rows stop at different passes


def build(eviction="hard", loop=(0, None), layout="GAGAG"):
    return tiny_model(layout=layout, eviction=eviction, sleep_passes=3, loop_start=loop[0], loop_end=loop[1])


def states(model, memory):
    return [memory[i].state for i in model.fast_blocks()]


def reference(model, tokens, policy):
    """Adaptive sleep of one row, written from the definition: window by window, sleep with a fixed n
    for n = 2, 3, ... from the same wake pass and stop at the first n whose S_n moved less than ε·‖S_n‖
    (norms over all the looped fast blocks' states) from S_{n−1}. Returns (logits, passes per window)."""
    memory, logits, used = model.empty_memory(), [], []
    for start in range(0, tokens.shape[1], L):
        window_start = memory
        out, h1, woke = model.wake(tokens[:, start : start + L], memory)
        logits.append(out)
        previous, slept, n = states(model, woke), woke, 1
        for n in range(2, policy.max_passes + 1):
            slept = model.sleep(h1, woke, window_start, n)
            current = states(model, slept)
            change = math.sqrt(sum(float((c - p).pow(2).sum()) for p, c in zip(previous, current)))
            norm = math.sqrt(sum(float(c.pow(2).sum()) for c in current))
            if change < policy.tolerance * norm:
                break
            previous = current
        if n == 1:
            slept = model.sleep(h1, woke, window_start, 1)
        used.append(n)
        memory = model.evict(slept)
    return torch.cat(logits, dim=1), used


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
@pytest.mark.parametrize("loop", [(0, None), (1, 4)], ids=["full_loop", "partial_loop"])
def test_forward_follows_the_definition_row_by_row(eviction, loop):
    model = build(eviction, loop)
    tokens = random_tokens(model, 3, 4 * L + 3)
    policy = Adaptive(MIXED, 6)
    with torch.no_grad():
        logits, used = model(tokens, passes=policy, return_passes=True)
        assert used.shape == (3, 5)
        assert len(set(used[:, :4].flatten().tolist())) > 1, "the test needs rows that stop at different passes"
        for row in range(3):
            expected_logits, expected_used = reference(model, tokens[row : row + 1], policy)
            torch.testing.assert_close(logits[row : row + 1], expected_logits, rtol=1e-9, atol=1e-9)
            assert used[row].tolist() == expected_used


def test_a_rows_result_does_not_depend_on_its_batch():
    model = build("sliding", (1, 4))
    tokens = random_tokens(model, 4, 3 * L)
    policy = Adaptive(MIXED, 5)
    with torch.no_grad():
        together, used = model(tokens, passes=policy, return_passes=True)
        for row in range(4):
            alone, alone_used = model(tokens[row : row + 1], passes=policy, return_passes=True)
            torch.testing.assert_close(together[row : row + 1], alone, rtol=1e-9, atol=1e-9)
            assert used[row].tolist() == alone_used[0].tolist()


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_tiny_epsilon_is_fixed_n_max_and_huge_epsilon_is_two_passes(eviction):
    model = build(eviction)
    tokens = random_tokens(model, 2, 3 * L + 2)
    with torch.no_grad():
        for tolerance, n in ((1e-300, 5), (1e300, 2)):
            logits, used = model(tokens, passes=Adaptive(tolerance, 5), return_passes=True)
            torch.testing.assert_close(logits, model(tokens, passes=n), rtol=0, atol=0)
            assert (used == n).all()
        # N_max = 1 never sleeps: N = 1, whatever ε.
        logits, used = model(tokens, passes=Adaptive(1e300, 1), return_passes=True)
        torch.testing.assert_close(logits, model(tokens, passes=1), rtol=0, atol=0)
        assert (used == 1).all()


def test_fixed_passes_are_reported_and_prediction_windows_count_one():
    model = build()
    tokens = random_tokens(model, 2, 3 * L + 2)
    mask = torch.zeros_like(tokens)
    mask[:, 2 * L + 1] = 1  # the third window carries the loss: one pass
    with torch.no_grad():
        _, used = model(tokens, loss_mask=mask, passes=4, return_passes=True)
        _, adaptive = model(tokens, loss_mask=mask, passes=Adaptive(1e-300, 4), return_passes=True)
    assert used.tolist() == [[4, 4, 1, 4]] * 2
    assert adaptive.tolist() == used.tolist()


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
@pytest.mark.parametrize("loop", [(0, None), (1, 4)], ids=["full_loop", "partial_loop"])
def test_stream_equals_forward_under_adaptive_and_reports_each_sleep(eviction, loop):
    model = build(eviction, loop)
    tokens = random_tokens(model, 3, 4 * L + 3)
    policy = Adaptive(MIXED, 6)
    with torch.no_grad():
        expected, used = model(tokens, passes=policy, return_passes=True)
    stream = SleepStream(model, batch_size=3, passes=policy)
    got, reported = [], []
    for t in range(tokens.shape[1]):
        got.append(stream.feed(tokens[:, t : t + 1]))
        if stream.position == 0:  # the window just filled and slept
            reported.append(stream.last_passes.clone())
    torch.testing.assert_close(torch.cat(got, dim=1), expected, rtol=1e-9, atol=1e-9)
    assert stream.sleeps == 4
    torch.testing.assert_close(torch.stack(reported, dim=1), used[:, :4])
    torch.testing.assert_close(stream.total_passes, used[:, :4].sum(1))
    in_blocks = SleepStream(model, batch_size=3, passes=policy)
    torch.testing.assert_close(in_blocks.feed(tokens), expected, rtol=1e-9, atol=1e-9)


def test_greedy_generate_under_adaptive_matches_the_forward():
    model = build("sliding", (1, 4))
    prompt = random_tokens(model, 1, 5)
    policy = Adaptive(MIXED, 6)
    stream = SleepStream(model, passes=policy)
    generated = stream.generate(prompt, 16)
    sequence = torch.cat([prompt, generated], dim=1)
    with torch.no_grad():
        logits, used = model(sequence, passes=policy, return_passes=True)
    torch.testing.assert_close(generated, logits[:, 4:-1].argmax(-1))
    # generate feeds its last token too: 5 + 16 = 3 full windows slept
    assert stream.sleeps == 3 and stream.total_passes.tolist() == [int(used[0, :3].sum())]


def test_save_and_restore_keep_the_policy_and_the_counts(tmp_path):
    model = build("sliding", (1, 4))
    tokens = random_tokens(model, 2, 4 * L)
    stream = SleepStream(model, batch_size=2, passes=Adaptive(MIXED, 6))
    stream.feed(tokens[:, :17])
    stream.save(tmp_path / "memory.safetensors")
    expected = stream.feed(tokens[:, 17:])
    restored = SleepStream.load(model, tmp_path / "memory.safetensors")
    assert restored.passes == Adaptive(MIXED, 6)
    torch.testing.assert_close(restored.feed(tokens[:, 17:]), expected, rtol=0, atol=0)
    torch.testing.assert_close(restored.total_passes, stream.total_passes, rtol=0, atol=0)
    torch.testing.assert_close(restored.last_passes, stream.last_passes, rtol=0, atol=0)


def test_gradients_flow_under_adaptive():
    model = build().train()
    tokens = random_tokens(model, 2, 3 * L)
    mask = torch.zeros_like(tokens)
    mask[:, 2 * L :] = 1
    model.loss(tokens, tokens, mask, passes=Adaptive(MIXED, 4)).backward()
    first = model.embed.weight.grad[tokens[:, :L].flatten()]
    assert first.abs().max() > 0  # window 1 reaches the loss only through the slept fast state


def test_relative_change_is_the_frobenius_norm_over_all_states_per_row():
    previous = [torch.zeros(2, 1, 2, 2), torch.zeros(2, 3)]
    current = [torch.zeros(2, 1, 2, 2), torch.zeros(2, 3)]
    current[0][0, 0, 0, 0] = 3.0
    current[1][0, 2] = 4.0  # row 0: ‖S‖ = 5, change 5
    previous[1][0, 2] = 4.0  # ... now change 3: 3 / 5
    assert relative_change(previous, current).tolist() == [pytest.approx(0.6), 0.0]  # row 1: zero, unchanged
    previous[0][1, 0, 1, 1] = 1.0  # row 1: the state went to zero from non-zero
    assert relative_change(previous, current)[1].item() == math.inf


@pytest.mark.parametrize("tolerance, max_passes, field", [
    (0.0, 4, "tolerance"), (-1e-3, 4, "tolerance"), (math.nan, 4, "tolerance"), (math.inf, 4, "tolerance"),
    ("0.1", 4, "tolerance"), (1e-2, 0, "max_passes"), (1e-2, -3, "max_passes"), (1e-2, 2.5, "max_passes"),
])
def test_bad_policies_are_refused_by_name(tolerance, max_passes, field):
    with pytest.raises(ValueError, match=rf"Adaptive\.{field}.*got {max_passes if field == 'max_passes' else ''}"):
        Adaptive(tolerance, max_passes)


@pytest.mark.parametrize("changes, why", [
    ({"layout": "AA"}, "no fast-weight block"),
    ({"layout": "GAA", "loop_start": 1}, "no fast-weight block in its looped range"),
    ({"layout": "AG", "eviction": "none"}, "eviction='none'"),
])
def test_models_with_nothing_to_measure_refuse_adaptive(changes, why):
    model = tiny_model(**changes)
    tokens = random_tokens(model, 1, 9)
    with pytest.raises(ValueError, match=why):
        model(tokens, passes=Adaptive(1e-2, 4))
    with pytest.raises(ValueError, match=why):
        SleepStream(model, passes=Adaptive(1e-2, 4))


def test_a_memory_file_from_before_adaptive_sleep_counts_its_fixed_passes(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from lmsleep.io import checksum

    model = build()
    stream = SleepStream(model, batch_size=2)  # N = 3
    stream.feed(random_tokens(model, 2, 2 * L + 3))
    path = tmp_path / "memory.safetensors"
    stream.save(path)
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != "checksum"}
    state = json.loads(metadata["state"])
    del state["last_passes"], state["total_passes"]
    metadata["state"] = json.dumps(state)
    save_file(tensors, str(path), metadata={**metadata, "checksum": checksum(tensors, metadata)})
    restored = SleepStream.load(model, path)
    assert restored.total_passes.tolist() == [6, 6] and restored.last_passes.tolist() == [3, 3]
