"""AttachedLM: a transformers causal LM with levels attached, through the learner's protocol (logits, loss,
token checks, blocks, a KV-cached stream, the tensors a learner file keeps, the base's fingerprint)."""
import pytest
import torch

pytest.importorskip("transformers")

from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM  # noqa: E402

from lmsleep.continual import attach  # noqa: E402
from lmsleep.continual.causal_lm import AttachedLM, AttachedStream, fingerprint  # noqa: E402
from lmsleep.stream import open_stream  # noqa: E402
from lmsleep.continual.levels import level_modules  # noqa: E402

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)
MAKERS = {"llama": lambda: LlamaForCausalLM(LlamaConfig(**TINY)),
          "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(head_dim=8, **TINY))}


@pytest.fixture(params=list(MAKERS))
def lm(request):
    torch.manual_seed(0)
    model = MAKERS[request.param]().eval()
    return AttachedLM(attach(model, layers=[0, 2], levels=2, pool=3), name="tiny")


def test_protocol_surface(lm):
    assert lm.config.memory_levels == 2 and lm.config.layers == (0, 2) and lm.config.vocab_size == 64
    assert lm.config.expert_pool == 3 and lm.config.base.endswith(":tiny")
    assert [len(level_modules(lm, level)) for level in range(2)] == [2, 2]
    tokens = torch.randint(0, 64, (2, 9))
    logits = lm(tokens)
    assert logits.shape == (2, 9, 64)
    mask = torch.zeros(2, 8, dtype=torch.long)
    mask[:, 5:] = 1
    expected = torch.nn.functional.cross_entropy(logits[:, :-1][mask.bool()], tokens[:, 1:][mask.bool()])
    assert torch.allclose(lm.loss(tokens[:, :-1], tokens[:, 1:], mask), expected, atol=1e-6)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lm.check_tokens(torch.tensor([[3, 64]]))


def test_the_stream_reads_in_pieces_what_the_model_reads_at_once(lm):
    tokens = torch.randint(0, 64, (3, 11))
    stream = open_stream(lm, 3)
    assert isinstance(stream, AttachedStream)
    pieces = torch.cat([stream.feed(tokens[:, :4]), stream.feed(tokens[:, 4:5]), stream.feed(tokens[:, 5:])], dim=1)
    with torch.no_grad():
        assert torch.allclose(pieces, lm(tokens), atol=1e-5)


def test_greedy_generation_equals_transformers_generate(lm):
    prompt = torch.randint(0, 64, (2, 5))
    ours = open_stream(lm, 2).generate(prompt, 7)
    theirs = lm.lm.generate(prompt, max_new_tokens=7, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert torch.equal(ours, theirs[:, 5:])


def test_sampling_is_seeded_and_rows_can_be_repeated(lm):
    prompt = torch.randint(0, 64, (2, 4))
    a, b = (open_stream(lm, 2).generate(prompt, 6, temperature=1.0, seed=3) for _ in range(2))
    assert torch.equal(a, b)
    stream = open_stream(lm, 2)
    stream.feed(prompt)
    stream.take_rows(torch.tensor([1, 1, 0]))
    follow = torch.randint(0, 64, (3, 2))
    with torch.no_grad():
        expected = lm(torch.cat([prompt[[1, 1, 0]], follow], dim=1))[:, -2:]
    assert torch.allclose(stream.feed(follow), expected, atol=1e-5)


def test_learner_tensors_are_only_what_attach_added(lm):
    kept = lm.learner_tensors()
    assert kept and all(name.split(".")[-1] in ("A", "B", "pool_router", "active") for name in kept)
    assert not any(".base." in name for name in kept)
    level = level_modules(lm, 0)[1]
    slot = level.unlock(torch.Generator().manual_seed(0))
    with torch.no_grad():
        level.B[slot].fill_(0.5)
    saved = {name: t.clone() for name, t in lm.learner_tensors().items()}
    level.reset(slot)
    lm.load_learner_tensors(saved)
    assert level.active[slot] and bool((level.B[slot] == 0.5).all())
    assert all(torch.equal(t, saved[name]) for name, t in lm.learner_tensors().items())
    with pytest.raises(ValueError, match="does not fit"):
        lm.load_learner_tensors({k: v for k, v in list(saved.items())[1:]})


def test_the_fingerprint_tells_bases_apart_and_ignores_experts(lm):
    before = fingerprint(lm.lm)
    level_modules(lm, 0)[0].unlock(torch.Generator().manual_seed(1))
    assert fingerprint(lm.lm) == before == lm.config.fingerprint
    torch.manual_seed(5)
    other = AttachedLM(attach(MAKERS["llama"]().eval(), layers=[0, 2], levels=2, pool=3), name="tiny")
    assert other.config.fingerprint != lm.config.fingerprint
    with pytest.raises(ValueError, match="saved for the base"):
        lm.check_config(other.config, "learner state x.safetensors")
