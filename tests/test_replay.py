"""The cheaper sleep (issue 19, item 5) against its plain references: replay drawn ahead in one batched
generation (continual.replay) against one `stream.sample` per seed and a teacher forward per sample; the
batched consolidation (SeedingConfig.batched) against the plain per-step one; a stream's rotated-key cache
against rotating every key at every step."""
from dataclasses import replace

import pytest
import torch

from lmsleep.layers import Attention, AttentionMemory
from lmsleep.continual.replay import Ahead, sample_groups
from lmsleep.continual.seeding import SeedingConfig, consolidate, prepare_student, snapshot, trainable_parameters
from lmsleep.stream import SleepStream, sample

from helpers import random_tokens, tiny_model

MODELS = {
    "attention, no eviction": dict(memory_levels=2, expert_pool=3, expert_rank=4, layout="A", eviction="none"),
    "hybrid, windows of 7, 2 passes": dict(memory_levels=2, expert_pool=3, expert_rank=4, sleep_passes=2),
}


def model_with_expert(kind: str, seed: int = 0):
    model = tiny_model(seed=seed, **MODELS[kind])
    with torch.no_grad():
        model.head.weight.mul_(20)  # peaked distributions: samples that differ when anything differs
    return model


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("temperature", [1.0, 0.0], ids=["sampled", "greedy"])
@pytest.mark.parametrize("with_context", [True, False], ids=["context", "no-context"])
def test_groups_are_the_plain_samples_and_their_logits_the_forward(kind, temperature, with_context):
    model = model_with_expert(kind)
    prompts = random_tokens(model, 3, 2, seed=5)
    context = random_tokens(model, 3, 4, seed=6) if with_context else None
    seeds = [11, 12, 13, 14]
    groups = sample_groups(model, prompts, 9, temperature, seeds, context)
    assert groups.tokens.shape == (4, 3, 11) and groups.logits.shape == (4, 3, 9, model.config.vocab_size)
    for i, seed in enumerate(seeds):
        plain = sample(model, prompts, 9, temperature, seed, context)
        assert torch.equal(groups.tokens[i], plain)
        read = plain if context is None else torch.cat([context, plain], dim=1)
        with torch.no_grad():
            logits = model(read)[:, read.shape[1] - plain.shape[1]:][:, 1:-1]
        torch.testing.assert_close(groups.logits[i], logits, rtol=1e-9, atol=1e-9)


def test_ahead_in_small_blocks_hands_out_what_one_block_draws():
    model = model_with_expert("attention, no eviction")
    prompts = torch.zeros(2, 1, dtype=torch.long)
    seeds = [3, 1, 4, 1, 5, 9, 2]
    whole = Ahead(model, prompts, 5, 1.0, seeds)
    per_vocab = 2 * 5 * model.config.vocab_size
    small = Ahead(model, prompts, 5, 1.0, seeds, budget=2 * per_vocab)  # two seeds per block
    assert whole.block >= len(seeds) and small.block == 2
    for i in range(len(seeds)):
        assert torch.equal(whole[i][0], small[i][0])
        torch.testing.assert_close(whole[i][1], small[i][1], rtol=1e-9, atol=1e-9)  # another batch: rounding
    with pytest.raises(IndexError):
        small[len(seeds)]


CASES = {
    "distil + imitate + unrelated": dict(alpha=0.5, unrelated=1.0),
    "distil only": dict(alpha=1.0, unrelated=1.0),
    "on-policy (λ = 0.5), reverse KL": dict(alpha=0.5, lam=0.5, beta=1.0, unrelated=0.0),
    "generalized JSD, no blank": dict(alpha=0.7, beta=0.5, unrelated=1.0),
    "one-token samples (the cut leaves one token)": dict(alpha=0.5, unrelated=0.0, sample_length=1),
}


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("case", list(CASES))
def test_batched_consolidation_is_the_plain_one(kind, case):
    """Same losses, the same trained expert, the same report, up to float rounding (float64 here)."""
    cfg = SeedingConfig(**{**dict(steps=4, lr=1e-2, batch_size=3, sample_length=5, group_size=2, seed=7), **CASES[case]})
    results = {}
    for batched in (False, True):
        model = model_with_expert(kind)
        teacher = snapshot(model)
        context = random_tokens(model, 1, 4, seed=3)
        blank = None if case.endswith("no blank") else torch.full_like(context, 1)
        new, _ = prepare_student(model, None, 0, torch.Generator().manual_seed(0))
        report = consolidate(teacher, model, new, torch.zeros(1, 1, dtype=torch.long), replace(cfg, batched=batched),
                             context=context, blank=blank, unrelated=[torch.tensor([[2]]), torch.tensor([[3, 4]])])
        results[batched] = report, [p.detach().clone() for p in trainable_parameters(new)]
    (plain, plain_params), (fast, fast_params) = results[False], results[True]
    torch.testing.assert_close(torch.tensor(fast.losses), torch.tensor(plain.losses), rtol=1e-9, atol=1e-9)
    for a, b in zip(fast_params, plain_params):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    for name in ("divergence_before", "divergence_after", "reward_before", "reward_after", "opens_on_content",
                 "opens_on_unrelated"):
        expected = getattr(plain, name)
        assert getattr(fast, name) == (None if expected is None else pytest.approx(expected, rel=1e-9, abs=1e-9)), name


@pytest.mark.parametrize("retained", [0, 3], ids=["window-start", "sliding"])
def test_the_rotated_key_cache_changes_no_output(retained):
    """Streaming (grad off), attention rotates each key once and keeps it; with grad on it rotates every key of
    the window at every step. Token by token, the outputs are bit for bit the same."""
    torch.manual_seed(0)
    layer = Attention(16, 2, 8, retained_tokens=3, window=40).double()
    x = torch.randn(2, 25, 16, dtype=torch.float64)
    start = AttentionMemory()
    if retained:
        start = AttentionMemory(retained_keys=torch.randn(2, 2, retained, 8, dtype=torch.float64),
                                retained_values=torch.randn(2, 2, retained, 8, dtype=torch.float64))
    cached, plain = start, start
    for t in range(x.shape[1]):
        with torch.no_grad():
            fast, cached = layer(x[:, t : t + 1], cached)
        with torch.enable_grad():
            reference, plain = layer(x[:, t : t + 1], plain)
        assert cached.rotated_keys is not None and cached.rotated_keys.shape[2] == t + 1
        assert torch.equal(fast, reference.detach()), t


@pytest.mark.parametrize("kind", list(MODELS))
def test_repeated_rows_are_read_once_and_sampled_as_the_plain_sampler_samples_them(kind):
    model = model_with_expert(kind)
    prompts = random_tokens(model, 2, 3, seed=5).repeat_interleave(3, dim=0)
    context = random_tokens(model, 2, 5, seed=6).repeat_interleave(3, dim=0)
    context[-1, 0] = (context[-1, 0] + 1) % model.config.vocab_size  # one row whose context alone differs
    groups = sample_groups(model, prompts, 8, 1.0, [21, 22], context)
    for i, seed in enumerate([21, 22]):
        assert torch.equal(groups.tokens[i], sample(model, prompts, 8, 1.0, seed, context))


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_stream_whose_rows_are_taken_continues_as_one_fed_those_rows(kind):
    model = model_with_expert(kind)
    first, then = random_tokens(model, 2, 10, seed=1), random_tokens(model, 5, 9, seed=2)
    index = torch.tensor([1, 0, 0, 1, 1])
    taken = SleepStream(model, batch_size=2)
    taken.feed(first)  # past a window of 7 in the hybrid: its sleep, features and window start are taken too
    taken.take_rows(index)
    plain = SleepStream(model, batch_size=5)
    plain.feed(first[index])
    torch.testing.assert_close(taken.feed(then), plain.feed(then), rtol=1e-9, atol=1e-9)
    assert taken.batch_size == 5 and torch.equal(taken.total_passes, plain.total_passes)
    with pytest.raises(ValueError, match="index"):
        taken.take_rows(torch.tensor([5]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("budget", [None, 1], ids=["all-ahead", "one-token-at-a-time"])
def test_draws_ahead_pick_what_multinomial_picks_per_group(dtype, budget, monkeypatch):
    from lmsleep.continual import draws
    from lmsleep.decoding import Sampling, pick, seeded

    if budget is not None:
        monkeypatch.setattr(draws, "BUDGET", budget)
    groups, rows, vocab, length = 3, 4, 11, 6
    logits = torch.randn(length, groups * rows, vocab, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 3
    for temperature in (1.0, 0.7, 0.0):
        sampling = Sampling(temperature)
        drawn = draws.Draws(sampling, [seeded(seed) for seed in (5, 6, 7)], length)
        assert drawn.ahead == (temperature > 0)
        plain = [seeded(seed) for seed in (5, 6, 7)]
        for t in range(length):
            expected = torch.cat([pick(logits[t, i * rows : (i + 1) * rows], sampling, g).tokens
                                  for i, g in enumerate(plain)])
            assert torch.equal(drawn(logits[t]), expected)
        with pytest.raises(RuntimeError):
            drawn(logits[0])  # made for `length` tokens
    nan = torch.full((groups * rows, vocab), float("nan"), dtype=dtype)
    with pytest.raises(RuntimeError):
        draws.Draws(Sampling(1.0), [seeded(1)] * groups, 1)(nan)


def test_draws_with_top_k_or_top_p_call_multinomial_as_pick_does():
    from lmsleep.continual.draws import Draws
    from lmsleep.decoding import Sampling, pick, seeded

    logits = torch.randn(5, 8, 13, generator=torch.Generator().manual_seed(1)) * 3
    for sampling in (Sampling(1.0, top_k=3), Sampling(1.0, top_p=0.8)):
        drawn, plain = Draws(sampling, [seeded(2), seeded(3)], 5), [seeded(2), seeded(3)]
        assert not drawn.ahead
        for t in range(5):
            expected = torch.cat([pick(logits[t, i * 4 : (i + 1) * 4], sampling, g).tokens for i, g in enumerate(plain)])
            assert torch.equal(drawn(logits[t]), expected)


@pytest.mark.parametrize("layout", ["contiguous", "permuted"])
def test_rotary_in_four_ops_is_the_textbook_rotation_bit_for_bit(layout):
    from lmsleep.ops.attention import rotary

    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(3, 5, 2, 4, 8, generator=generator)  # [batch, time, 2, heads, dim], as qkv lays it out
    base = raw.permute(2, 0, 3, 1, 4) if layout == "permuted" else raw.permute(2, 0, 3, 1, 4).contiguous()
    grad = torch.randn(2, 3, 4, 5, 8, generator=generator)

    def textbook(x, start):
        angles = torch.arange(start, start + x.shape[-2], dtype=torch.float64)[:, None] * \
            10000.0 ** (-torch.arange(4, dtype=torch.float64) / 4)[None, :]
        cos, sin = angles.cos().float(), angles.sin().float()
        x1, x2 = x[..., :4], x[..., 4:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    results = []
    for rotate in (lambda x: rotary(x, 3, 10000.0), lambda x: textbook(x, 3)):
        x = base.detach().clone() if layout == "contiguous" else raw.detach().clone().requires_grad_(True)
        leaf = x
        if layout == "permuted":
            x = x.permute(2, 0, 3, 1, 4)
        else:
            x.requires_grad_(True)
        out = rotate(x)
        (out * grad).sum().backward()
        results.append((out.detach(), out.is_contiguous(), leaf.grad))
    (ours, ours_contiguous, our_grad), (plain, plain_contiguous, plain_grad) = results
    assert torch.equal(ours, plain) and ours_contiguous == plain_contiguous
    assert torch.equal(our_grad, plain_grad)
    positions = torch.tensor([3, 4, 5, 6, 7])
    assert torch.equal(rotary(base, positions, 10000.0), ours)  # the gathered positions read the same table


def test_a_cache_with_room_decodes_as_one_that_grows():
    """AttentionMemory.with_room (replay.continue_from allocates its caches once): the same outputs bit for
    bit, in buffers that are never replaced."""
    torch.manual_seed(0)
    layer = Attention(16, 2, 8)
    x = torch.randn(3, 12, 16)
    with torch.no_grad():
        _, start = layer(x[:, :5], AttentionMemory())
        roomy = start.with_room(7)
        buffer = roomy.key_buffer
        grown = start
        for t in range(5, 12):
            fast, roomy = layer(x[:, t : t + 1], roomy)
            plain, grown = layer(x[:, t : t + 1], grown)
            assert torch.equal(fast, plain), t
            assert roomy.key_buffer is buffer and buffer.shape[2] == 12
    with torch.enable_grad():
        assert start.with_room(3) is start  # training keeps no buffers


def test_training_reads_a_rotary_table_first_built_under_inference_mode(monkeypatch):
    """The decodes of replay run under torch.inference_mode; the rotary table they may build first is an
    ordinary tensor, which a training forward (and its backward) can use afterwards."""
    from lmsleep.ops import attention as ops

    monkeypatch.setattr(ops, "_ROTARY_TABLES", {})
    model = model_with_expert("attention, no eviction")
    tokens = random_tokens(model, 2, 6, seed=3)
    with torch.inference_mode():
        model(tokens)
    assert all(not t.is_inference() for table in ops._ROTARY_TABLES.values() for t in table)
    model(tokens).square().mean().backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exponentials_are_exponential_s_numbers_and_leave_the_generator_as_it_does(dtype):
    from lmsleep.continual import draws

    for shape in [(1,), (7, 3), (16, 32, 105), (1 << 20,)]:
        plain, fast = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
        expected = torch.empty(shape, dtype=dtype).exponential_(generator=plain)
        assert torch.equal(draws.exponentials(shape, dtype, fast), expected), shape
        assert torch.equal(plain.get_state(), fast.get_state())
    if dtype == torch.float32:
        assert draws._vectorised_ok  # the vectorised draws are the ones used (and checked) here


@pytest.mark.parametrize("kind", ["attention, no eviction", "hybrid, windows of 7, 2 passes"])
def test_a_stream_with_reserved_room_feeds_as_one_without(kind):
    """SleepStream.reserve (sample_groups makes room for the tokens it will draw): the same logits bit for bit,
    across a window's end (the hybrid sleeps and evicts in the reserved stretch)."""
    model = model_with_expert(kind)
    tokens = random_tokens(model, 3, 12, seed=5)
    roomy, plain = SleepStream(model, 3), SleepStream(model, 3)
    roomy.feed(tokens[:, :2])
    plain.feed(tokens[:, :2])
    roomy.reserve(9)
    caches = [m for m in roomy.memory if isinstance(m, AttentionMemory)]
    assert caches and all(m.key_buffer.shape[2] == 2 + min(9, roomy._window_left()) for m in caches)
    for t in range(2, 12):
        assert torch.equal(roomy.feed(tokens[:, t : t + 1]), plain.feed(tokens[:, t : t + 1])), t
    assert roomy.sleeps == plain.sleeps
    roomy.reserve(0)  # nothing to make room for
    with pytest.raises(ValueError, match="tokens"):
        roomy.reserve(-1)
