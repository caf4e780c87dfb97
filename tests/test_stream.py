"""The streaming wake/sleep engine gives the training forward's logits token for token, keeps memory bounded
by L, and its memory state survives a save/restore (also in another process)."""
import subprocess
import sys
import textwrap

import pytest
import torch

from lmsleep import SleepConfig, SleepLM
from lmsleep.io import save_model
from lmsleep.stream import SleepStream

from helpers import random_tokens, tiny_model

GRID = [
    (eviction, passes, loop)
    for eviction in ("hard", "sliding")
    for passes in (1, 2, 3)
    for loop in ((0, None), (1, 4))
]


def grid_id(case):
    eviction, passes, loop = case
    return f"{eviction}-N{passes}-{'full' if loop[1] is None else 'partial'}"


def build(eviction, passes, loop):
    return tiny_model(layout="GAGAG", eviction=eviction, sleep_passes=passes, loop_start=loop[0], loop_end=loop[1])


@pytest.mark.parametrize("case", GRID, ids=[grid_id(c) for c in GRID])
def test_streaming_logits_equal_the_training_forward(case):
    model = build(*case)
    tokens = random_tokens(model, 2, 4 * 7 + 3)  # four full windows and a partial one
    with torch.no_grad():
        expected = model(tokens)
    one_by_one = SleepStream(model, batch_size=2)
    got = torch.cat([one_by_one.feed(tokens[:, t : t + 1]) for t in range(tokens.shape[1])], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    assert one_by_one.sleeps == 4 and one_by_one.position == 3
    in_blocks = SleepStream(model, batch_size=2)
    cuts = [0, 5, 6, 19, 20, 31]  # blocks that straddle window boundaries
    got = torch.cat([in_blocks.feed(tokens[:, a:b]) for a, b in zip(cuts, cuts[1:])], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_stream_at_another_n_matches_forward_at_that_n():
    model = build("hard", 1, (0, None))
    tokens = random_tokens(model, 1, 20)
    with torch.no_grad():
        expected = model(tokens, passes=4)
    stream = SleepStream(model, passes=4)
    torch.testing.assert_close(stream.feed(tokens), expected)


def test_full_attention_stream_matches_forward():
    model = SleepLM(SleepConfig.full_attention(vocab_size=23, d_model=32, n_heads=2, head_dim=8, mlp_hidden=48)).double()
    tokens = random_tokens(model, 1, 40)
    with torch.no_grad():
        expected = model(tokens)
    stream = SleepStream(model)
    got = torch.cat([stream.feed(tokens[:, t : t + 1]) for t in range(40)], dim=1)
    torch.testing.assert_close(got, expected)


def memory_elements(stream: SleepStream) -> int:
    tensors = [t for m in stream.memory for t in m.tensors().values()] + stream.features
    return sum(t.numel() for t in tensors)


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_memory_is_bounded_by_the_window(eviction):
    model = build(eviction, 3, (0, None))
    stream = SleepStream(model)
    sizes = []
    for t in range(20 * 7):
        stream.feed(torch.tensor([[t % model.config.vocab_size]]))
        sizes.append(memory_elements(stream))
    # The same peak in window 2 as in window 20: nothing grows with the stream length.
    assert max(sizes[7:14]) == max(sizes[-7:]) == max(sizes)


def test_greedy_generation_matches_argmax_of_the_forward():
    model = build("sliding", 2, (0, None))
    prompt = random_tokens(model, 1, 10)
    generated = SleepStream(model).generate(prompt, 12)
    sequence = torch.cat([prompt, generated], dim=1)
    with torch.no_grad():
        logits = model(sequence)
    torch.testing.assert_close(generated, logits[:, 9:-1].argmax(-1))


@pytest.mark.parametrize("case", [("hard", 3, (1, 4)), ("sliding", 2, (0, None)), ("sliding", 3, (1, 4))], ids=grid_id)
@pytest.mark.parametrize("cut", [3, 7, 12])
def test_save_and_restore_mid_stream_gives_identical_continuations(tmp_path, case, cut):
    model = build(*case)
    tokens = random_tokens(model, 2, 30)
    stream = SleepStream(model, batch_size=2)
    stream.feed(tokens[:, :cut])
    stream.save(tmp_path / "memory.safetensors")
    expected = stream.feed(tokens[:, cut:])
    restored = SleepStream.load(model, tmp_path / "memory.safetensors")
    assert (restored.position, restored.tokens_seen) == (cut % 7, cut)
    torch.testing.assert_close(restored.feed(tokens[:, cut:]), expected, rtol=0, atol=0)


def test_restore_in_another_process(tmp_path):
    model = build("sliding", 3, (1, 4))
    save_model(model, tmp_path / "model")
    tokens = random_tokens(model, 1, 33)
    stream = SleepStream(model)
    stream.feed(tokens[:, :17])
    stream.save(tmp_path / "memory.safetensors")
    expected = stream.feed(tokens[:, 17:])
    torch.save(tokens[:, 17:].clone(), tmp_path / "rest.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from lmsleep.io import load_model
        from lmsleep.stream import SleepStream
        model = load_model({str(tmp_path / 'model')!r}).double().eval()
        stream = SleepStream.load(model, {str(tmp_path / 'memory.safetensors')!r})
        torch.save(stream.feed(torch.load({str(tmp_path / 'rest.pt')!r})), {str(tmp_path / 'out.pt')!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=0)
