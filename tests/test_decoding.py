"""Next-token picking (lmsleep.decoding) and sampled generation from the streaming engine."""
import math

import pytest
import torch

from lmsleep.decoding import Generation, Sampling, generator_for, pick, sampling_logprobs
from lmsleep.stream import SleepStream

from helpers import random_tokens, tiny_model

# One row of logits with distinct, well separated probabilities (no ties, no nucleus boundary near a test p).
LOGITS = torch.tensor([2.0, 0.3, 1.1, -1.0, 1.6, 0.0, -0.4, 0.8], dtype=torch.float64)


def reference_q(logits: torch.Tensor, temperature: float, top_k=None, top_p=None) -> list[float]:
    """The sampling distribution written out token by token, independently of decoding.py."""
    weights = [math.exp(z / temperature) for z in logits.tolist()]
    order = sorted(range(len(weights)), key=lambda i: -weights[i])
    kept = order[: top_k or len(order)]
    if top_p is not None:
        total = sum(weights[i] for i in kept)
        nucleus, mass = [], 0.0
        for i in kept:
            nucleus.append(i)
            mass += weights[i] / total
            if mass >= top_p:
                break
        kept = nucleus
    total = sum(weights[i] for i in kept)
    return [weights[i] / total if i in kept else 0.0 for i in range(len(weights))]


def chi_square_limit(dof: int, z: float = 4.0) -> float:
    """Upper chi-square quantile (Wilson-Hilferty); z = 4 is a false alarm about once in 30,000 runs."""
    a = 2 / (9 * dof)
    return dof * (1 - a + z * math.sqrt(a)) ** 3


def chi_square(counts: torch.Tensor, expected: list[float]) -> tuple[float, int]:
    n = int(counts.sum())
    kept = [i for i, p in enumerate(expected) if p > 0]
    statistic = sum((counts[i].item() - n * expected[i]) ** 2 / (n * expected[i]) for i in kept)
    return statistic, len(kept) - 1


def draw(logits_row: torch.Tensor, n: int, seed: int, **options) -> torch.Tensor:
    """Token counts [vocab] of n independent draws (one batch of n identical rows)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = pick(logits_row.expand(n, -1), Sampling(**options), generator).tokens
    return torch.bincount(tokens, minlength=logits_row.shape[-1])


# ----- the pure picker -----


def test_greedy_is_argmax_and_ignores_top_k_and_top_p():
    logits = torch.randn(16, 11, generator=torch.Generator().manual_seed(0))
    for sampling in (None, Sampling(), Sampling(0.0, top_k=3, top_p=0.5)):
        picked = pick(logits, sampling)
        torch.testing.assert_close(picked.tokens, logits.argmax(-1))
        torch.testing.assert_close(picked.logprob, logits.log_softmax(-1).amax(-1))
        assert (picked.sampling_logprob == 0).all()


@pytest.mark.parametrize("temperature", [0.05, 1.0, 7.0])
def test_top_k_one_and_a_tiny_top_p_are_greedy_at_any_temperature(temperature):
    logits = torch.randn(64, 13, generator=torch.Generator().manual_seed(1))
    for options in ({"top_k": 1}, {"top_p": 1e-6}):
        picked = pick(logits, Sampling(temperature, **options), torch.Generator().manual_seed(2))
        torch.testing.assert_close(picked.tokens, logits.argmax(-1))
        assert (picked.sampling_logprob == 0).all()  # a one-token set is certain


def test_a_seed_reproduces_the_tokens_and_other_seeds_differ():
    logits = torch.zeros(200, 10)  # uniform: any two seeds give different sequences of 200 draws
    sampling = Sampling(1.0)
    first = pick(logits, sampling, torch.Generator().manual_seed(5)).tokens
    again = pick(logits, sampling, torch.Generator().manual_seed(5)).tokens
    other = pick(logits, sampling, torch.Generator().manual_seed(6)).tokens
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_rows_are_drawn_independently_each_from_its_own_logits():
    # Row r puts all its mass (under top_k=2) on tokens 2r and 2r+1, equally.
    rows, vocab, repeats = 4, 8, 3000
    logits = torch.full((rows, vocab), -5.0)
    for r in range(rows):
        logits[r, 2 * r : 2 * r + 2] = 3.0
    tokens = pick(logits.repeat(repeats, 1), Sampling(1.0, top_k=2), torch.Generator().manual_seed(0)).tokens
    tokens = tokens.view(repeats, rows)
    for r in range(rows):
        assert set(tokens[:, r].tolist()) == {2 * r, 2 * r + 1}
        share = (tokens[:, r] == 2 * r).float().mean().item()
        assert abs(share - 0.5) < 4 * math.sqrt(0.25 / repeats)
    # identical rows of one batch do not share their random numbers
    assert len(set(tokens[:20, 0].tolist())) == 2


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 1.0},
        {"temperature": 0.5},
        {"temperature": 2.0, "top_k": 3},
        {"temperature": 1.0, "top_p": 0.8},
        {"temperature": 1.5, "top_k": 5, "top_p": 0.6},
    ],
    ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()),
)
def test_empirical_frequencies_match_the_restricted_renormalised_softmax(options):
    n = 40_000
    counts = draw(LOGITS, n, seed=3, **options)
    expected = reference_q(LOGITS, **options)
    for i, p in enumerate(expected):
        if p == 0:
            assert counts[i] == 0, f"token {i} is outside the kept set but was drawn {int(counts[i])} times"
    statistic, dof = chi_square(counts, expected)
    assert statistic < chi_square_limit(dof), (statistic, counts.tolist(), expected)
    # The test has power: the same draws are refused against the distribution that forgets the temperature.
    if options["temperature"] != 1:
        untempered = reference_q(LOGITS, **{**options, "temperature": 1.0})
        assert chi_square(counts, untempered)[0] > chi_square_limit(dof)


def test_tokens_outside_the_top_k_never_appear():
    logits = torch.randn(500, 30, generator=torch.Generator().manual_seed(4))
    tokens = pick(logits, Sampling(3.0, top_k=4), torch.Generator().manual_seed(0)).tokens
    top = logits.topk(4, dim=-1).indices
    assert (top == tokens[:, None]).any(-1).all()


def test_log_probabilities_are_under_the_model_and_the_sampling_distribution():
    logits = torch.randn(300, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7), requires_grad=True)
    sampling = Sampling(0.7, top_k=5, top_p=0.9)
    picked = pick(logits, sampling, torch.Generator().manual_seed(1))
    rows = torch.arange(300)
    torch.testing.assert_close(picked.logprob, logits.log_softmax(-1)[rows, picked.tokens])
    for r in range(0, 300, 37):
        q = reference_q(logits[r].detach(), 0.7, 5, 0.9)
        assert picked.sampling_logprob[r].item() == pytest.approx(math.log(q[picked.tokens[r]]), rel=1e-9)
    q_all = sampling_logprobs(logits, sampling).exp()
    torch.testing.assert_close(q_all.sum(-1), torch.ones(300, dtype=torch.float64))
    picked.logprob.sum().backward()  # REINFORCE scores sampled tokens with gradients
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": "1"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"temperature": 1.0, "top_k": 0}, "top_k"),
        ({"temperature": 1.0, "top_k": 2.5}, "top_k"),
        ({"temperature": 1.0, "top_p": 0.0}, "top_p"),
        ({"temperature": 1.0, "top_p": 1.5}, "top_p"),
        ({"temperature": 1.0, "top_p": -0.2}, "top_p"),
    ],
)
def test_bad_sampling_arguments_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**options)


def test_bad_logits_and_generator_arguments_are_refused():
    with pytest.raises(ValueError, match=r"logits must be a tensor \[batch, vocab\]"):
        pick(torch.zeros(5))
    with pytest.raises(ValueError, match="seed or a generator, not both"):
        generator_for("cpu", 1, torch.Generator())
    with pytest.raises(ValueError, match="seed must be an integer"):
        generator_for("cpu", "7")
    with pytest.raises(TypeError, match="torch.Generator"):
        generator_for("cpu", None, 7)


# ----- generation from the stream -----


def stream_of(model, batch):
    return SleepStream(model, batch_size=batch)


def test_sampled_generation_is_reproducible_by_seed():
    model = tiny_model(sleep_passes=2, eviction="sliding")
    prompt = random_tokens(model, 3, 9)
    options = {"temperature": 1.3, "top_p": 0.95}
    first = stream_of(model, 3).generate(prompt, 15, seed=11, **options)
    again = stream_of(model, 3).generate(prompt, 15, generator=torch.Generator().manual_seed(11), **options)
    other = stream_of(model, 3).generate(prompt, 15, seed=12, **options)
    assert first.shape == (3, 15)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_top_k_one_generation_is_greedy_generation():
    model = tiny_model(sleep_passes=2)
    prompt = random_tokens(model, 2, 5)
    greedy = stream_of(model, 2).generate(prompt, 12)
    assert torch.equal(stream_of(model, 2).generate(prompt, 12, temperature=2.0, top_k=1, seed=0), greedy)


def test_generated_log_probabilities_match_the_model_forward():
    model = tiny_model(sleep_passes=2, eviction="sliding")
    prompt = random_tokens(model, 2, 6)
    out = stream_of(model, 2).generate(prompt, 10, temperature=1.0, top_k=6, seed=3, return_logprobs=True)
    assert isinstance(out, Generation) and out.mask.all()
    with torch.no_grad():
        logits = model(torch.cat([prompt, out.tokens], dim=1))[:, 5:-1]  # the positions that predicted them
    expected = logits.log_softmax(-1).gather(-1, out.tokens[..., None])[..., 0]
    torch.testing.assert_close(out.logprob, expected)
    q = torch.stack([sampling_logprobs(logits[:, t], Sampling(1.0, top_k=6)) for t in range(10)], dim=1)
    torch.testing.assert_close(out.sampling_logprob, q.gather(-1, out.tokens[..., None])[..., 0])


def test_rows_that_emit_the_stop_token_keep_emitting_it():
    model = tiny_model()
    prompt = random_tokens(model, 4, 5)
    free = stream_of(model, 4).generate(prompt, 20, temperature=1.5, seed=2)
    stop = int(free[0, 3])  # row 0 emits it at step 3 at the latest
    stream = stream_of(model, 4)
    out = stream.generate(prompt, 20, temperature=1.5, seed=2, stop_token=stop, return_logprobs=True)
    for row in range(4):
        hits = (free[row] == stop).nonzero()
        end = int(hits[0]) + 1 if len(hits) else 20
        # identical draws up to the first stop (the random stream is shared), then the stop token
        assert torch.equal(out.tokens[row, :end], free[row, :end])
        assert (out.tokens[row, end:] == stop).all()
        assert out.mask[row].tolist() == [True] * end + [False] * (20 - end)
        assert (out.logprob[row, end:] == 0).all() and (out.sampling_logprob[row, end:] == 0).all()
    # generation ends once every row has stopped: the stream has only seen tokens up to the last stop
    assert stream.tokens_seen == 5 + int(out.mask.sum(-1).max())


def test_every_row_stopping_ends_generation_early():
    model = tiny_model()
    prompt = random_tokens(model, 1, 4).repeat(2, 1)  # two identical rows: the same greedy first token
    first = stream_of(model, 2).generate(prompt, 1)
    assert first[0, 0] == first[1, 0]
    stream = stream_of(model, 2)
    out = stream.generate(prompt, 10, stop_token=int(first[0, 0]), return_logprobs=True)
    assert (out.tokens == first[0, 0]).all() and out.tokens.shape == (2, 10)
    assert out.mask.tolist() == [[True] + [False] * 9] * 2
    assert stream.tokens_seen == 5  # the prompt and the one stop token, then no more passes


def test_bad_generation_arguments_are_refused_before_the_prompt_is_fed():
    model = tiny_model()
    stream = stream_of(model, 1)
    prompt = random_tokens(model, 1, 4)
    for options, message in [
        ({"temperature": -1.0}, "temperature"), ({"temperature": 1.0, "top_k": 0}, "top_k"),
        ({"temperature": 1.0, "top_p": 2.0}, "top_p"), ({"seed": 1, "generator": torch.Generator()}, "not both"),
        ({"stop_token": model.config.vocab_size}, "stop_token"), ({"stop_token": -1}, "stop_token"),
    ]:
        with pytest.raises(ValueError, match=message):
            stream.generate(prompt, 3, **options)
    assert stream.tokens_seen == 0
    empty = stream.generate(prompt, 0, return_logprobs=True)
    assert empty.tokens.shape == empty.logprob.shape == empty.mask.shape == (1, 0)
