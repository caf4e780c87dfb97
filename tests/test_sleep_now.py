"""Sleep on demand: SleepStream.sleep_now consolidates the partial window and evicts; the training forward
with `boundaries` at those points gives the same logits (both eviction modes, N = 1, 2, 3)."""
import pytest
import torch

from lmsleep import Adaptive, SleepConfig, SleepLM
from lmsleep.ops.attention import rotary, window_attention
from lmsleep.stream import SleepStream

from helpers import random_tokens, tiny_model

L = 7
GRID = [(eviction, passes, loop) for eviction in ("hard", "sliding") for passes in (1, 2, 3)
        for loop in ((0, None), (1, 4))]
# Sleeps at odd points: right after a start, twice in a row one token apart, after a full window, and
# a long stretch where the L-token rule ends windows between them.
SLEEPS = [1, 2, 6, 9, 16, 20, 21, 33]


def grid_id(case):
    eviction, passes, loop = case
    return f"{eviction}-N{passes}-{'full' if loop[1] is None else 'partial'}"


def build(eviction, passes, loop):
    return tiny_model(layout="GAGAG", eviction=eviction, sleep_passes=passes, loop_start=loop[0], loop_end=loop[1])


def stream_with_sleeps(model, tokens, sleeps, passes=None):
    stream = SleepStream(model, batch_size=tokens.shape[0], passes=passes)
    outputs, done = [], 0
    for point in sleeps + [tokens.shape[1]]:
        outputs.append(stream.feed(tokens[:, done:point]))
        done = point
        if point < tokens.shape[1] and stream.position:  # at 16 the window filled and slept by itself
            stream.sleep_now()
    return torch.cat(outputs, dim=1), stream


@pytest.mark.parametrize("case", GRID, ids=[grid_id(c) for c in GRID])
def test_stream_with_sleeps_on_demand_equals_forward_with_those_boundaries(case):
    model = build(*case)
    tokens = random_tokens(model, 2, 37)
    with torch.no_grad():
        expected = model(tokens, boundaries=SLEEPS)
        plain = model(tokens)
    got, stream = stream_with_sleeps(model, tokens, SLEEPS)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    # The sleeps changed what later tokens see (else the test would prove nothing).
    assert (expected[:, 2:] - plain[:, 2:]).abs().max() > 1e-4
    # windows: [0,1) [1,2) [2,6) [6,9) [9,16) [16,20) [20,21) [21,28) [28,33) [33,37)
    assert model.windows(37, SLEEPS) == [(0, 1), (1, 2), (2, 6), (6, 9), (9, 16), (16, 20), (20, 21), (21, 28),
                                         (28, 33), (33, 37)]
    assert stream.sleeps == 9 and stream.position == 4 and stream.tokens_seen == 37


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_sleep_now_under_adaptive_equals_forward(eviction):
    model = build(eviction, 3, (1, 4))
    tokens = random_tokens(model, 3, 31)
    policy = Adaptive(0.3, 6)
    with torch.no_grad():
        expected, used = model(tokens, passes=policy, boundaries=SLEEPS[:6], return_passes=True)
    got, stream = stream_with_sleeps(model, tokens, SLEEPS[:6], policy)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(stream.total_passes, used[:, :-1].sum(1))


def test_sleep_now_returns_the_passes_and_starts_a_fresh_window():
    model = build("hard", 3, (0, None))
    stream = SleepStream(model, batch_size=2)
    stream.feed(random_tokens(model, 2, 10))
    assert stream.position == 3
    assert stream.sleep_now().tolist() == [3, 3]
    assert (stream.position, stream.sleeps, stream.tokens_seen) == (0, 2, 10)
    assert stream.features == [] and all(t.numel() == 0 or name == "state" for m in stream.memory
                                         for name, t in m.tensors().items())


def test_boundaries_at_window_ends_change_nothing():
    model = build("sliding", 2, (0, None))
    tokens = random_tokens(model, 1, 23)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, boundaries=[7, 14, 21, 23]), model(tokens), rtol=0, atol=0)


def test_a_window_never_exceeds_l():
    model = build("hard", 1, (0, None))
    for boundaries in ([], [3], [3, 4, 5], [10, 11, 30], [1, 8, 15]):
        spans = model.windows(40, boundaries)
        assert spans[0][0] == 0 and spans[-1][1] == 40
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert all(0 < end - start <= L for start, end in spans)
        assert set(boundaries) <= {end for _, end in spans}


def test_after_a_partial_window_sliding_attention_sees_the_last_l_tokens_at_their_true_distance():
    """One attention layer, sliding, N = 1: after a sleep on demand at 3 tokens, position t still sees
    exactly tokens t − L + 1 .. t, at their real distances, as a fresh window of those tokens would."""
    torch.manual_seed(0)
    model = SleepLM(SleepConfig(vocab_size=23, d_model=32, layout="A", n_heads=2, head_dim=8, mlp_hidden=48,
                                window=L, eviction="sliding")).double().eval()
    tokens = random_tokens(model, 1, 12)
    with torch.no_grad():
        logits = model(tokens, boundaries=[3])
        for t in range(3, 10):  # the second window [3, 10)
            alone = model(tokens[:, max(0, t - L + 1) : t + 1])[:, -1]
            torch.testing.assert_close(logits[:, t], alone, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("retained", [0, 1, 3, 6])
def test_window_attention_places_retained_keys_just_before_the_window(retained):
    """The op against attention written with absolute positions: R retained keys, then the window."""
    generator = torch.Generator().manual_seed(0)
    offset, seen, theta = L - 1, 5, 10000.0
    q, keys, values = (torch.randn(1, 2, seen, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    old_keys, old_values = (torch.randn(1, 2, retained, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    got = window_attention(q, keys, values, old_keys, old_values, offset, theta)
    position = torch.arange(retained + seen)  # absolute: the retained keys first
    all_keys = rotary(torch.cat([old_keys, keys], dim=2), position, theta)
    all_values = torch.cat([old_values, values], dim=2)
    query_position = position[retained:]
    visible = (position[None, :] <= query_position[:, None]) & (position[None, :] > query_position[:, None] - L)
    expected = torch.nn.functional.scaled_dot_product_attention(
        rotary(q, query_position, theta), all_keys, all_values, attn_mask=visible)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_sleep_now_on_an_empty_window_is_refused():
    model = build("hard", 2, (0, None))
    stream = SleepStream(model)
    with pytest.raises(ValueError, match="empty window"):
        stream.sleep_now()
    stream.feed(random_tokens(model, 1, L))  # a full window sleeps by itself
    with pytest.raises(ValueError, match="empty window"):
        stream.sleep_now()
    stream.feed(random_tokens(model, 1, 2))
    stream.sleep_now()
    with pytest.raises(ValueError, match="empty window"):
        stream.sleep_now()
    assert stream.sleeps == 2


def test_sleep_now_without_windows_is_refused():
    model = SleepLM(SleepConfig.full_attention(vocab_size=23, d_model=32, n_heads=2, head_dim=8, mlp_hidden=48))
    stream = SleepStream(model)
    stream.feed(torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="eviction='none'"):
        stream.sleep_now()
    with pytest.raises(ValueError, match="eviction='none'"):
        model(torch.tensor([[1, 2, 3]]), boundaries=[1])


@pytest.mark.parametrize("boundaries, match", [
    ([0], r"boundaries\[0\] must be an integer in \[1, 10\]"),
    ([3, 11], r"boundaries\[1\] must be an integer in \[1, 10\]"),
    ([3, 3], "strictly increasing"),
    ([5, 2], "strictly increasing"),
    ([2.5], r"boundaries\[0\]"),
    ("35", "list of token positions"),
    (4, "list of token positions"),
])
def test_bad_boundaries_are_refused_by_name(boundaries, match):
    model = build("hard", 2, (0, None))
    with pytest.raises(ValueError, match=match):
        model(random_tokens(model, 1, 10), boundaries=boundaries)
