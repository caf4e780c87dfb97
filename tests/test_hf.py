"""Hugging Face transformers: SleepLMConfig carries SleepConfig's fields and checks, SleepLMForCausalLM wraps
the same SleepLM, generate() decodes through the wake/sleep engine (greedy = SleepStream.generate token for
token, bounded memory, sampling, batches, beams, dict outputs, continuation), save/load round-trips bit for
bit, `lmsleep hf-export` converts a trained run, and foreign configs and caches are refused."""
import json
import subprocess
import sys
from dataclasses import asdict, fields

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, LlamaConfig  # noqa: E402

from helpers import random_tokens, tiny_config, tiny_model  # noqa: E402
from lmsleep import SleepConfig, SleepLM  # noqa: E402
from lmsleep.cli import main  # noqa: E402
from lmsleep.hf import SleepCache, SleepLMConfig, SleepLMForCausalLM  # noqa: E402
from lmsleep.io import load_model  # noqa: E402
from lmsleep.layers import AttentionMemory  # noqa: E402
from lmsleep.stream import SleepStream  # noqa: E402

CONFIGS = {  # (SleepConfig changes): the engine's variants that change what sleep and eviction do
    "N1-hard": dict(sleep_passes=1),
    "N3-hard": dict(sleep_passes=3),
    "N2-sliding": dict(sleep_passes=2, eviction="sliding"),
    "N3-loop1:3": dict(sleep_passes=3, loop_start=1, loop_end=3),
}


def hf_model(seed=0, **changes) -> SleepLMForCausalLM:
    """A tiny model with sharp, history-dependent predictions: at the initial scale (std 0.02) its logits are
    nearly flat and greedy decoding falls into a repeated token, which a wrong memory would also produce."""
    model = tiny_model(seed=seed, **changes)
    generator = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                scale = 1.0 if name == "embed.weight" else 2.0 / p.shape[-1] ** 0.5
                p.copy_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return SleepLMForCausalLM.from_sleep_lm(model)


def generate(model, prompt, **options):
    return model.generate(prompt, do_sample=False, **options)


# ----- config -----

def test_config_has_sleep_configs_fields_defaults_and_checks():
    assert {f.name: f.default for f in fields(SleepConfig)} == {
        f.name: getattr(SleepLMConfig(), f.name) for f in fields(SleepConfig)}
    config = tiny_config(sleep_passes=3, eviction="sliding", loop_end=3)
    assert SleepLMConfig.from_sleep_config(config).sleep_config() == config
    assert SleepLMConfig(**asdict(config)).to_dict()["window"] == config.window
    assert isinstance(AutoConfig.for_model("lmsleep", window=9), SleepLMConfig)
    for bad, field, error in [({"window": 0}, "SleepConfig.window", ValueError),
                              ({"eviction": "soft"}, "SleepConfig.eviction", ValueError),
                              ({"layout": "AX"}, "SleepConfig.layout", ValueError),
                              ({"loop_end": 9}, "SleepConfig.loop_end", ValueError),
                              ({"window": "8"}, "SleepConfig.window", TypeError)]:
        with pytest.raises(error, match=field):
            SleepLMConfig(**bad)


def test_configs_of_another_model_type_are_refused(tmp_path):
    with pytest.raises(ValueError, match="model_type 'llama'"):
        SleepLMConfig.from_dict(LlamaConfig().to_dict())
    with pytest.raises(ValueError, match="another architecture"):
        SleepLMConfig(model_type="llama")
    LlamaConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not 'lmsleep'"):
        SleepLMConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not 'lmsleep'"):
        SleepLMForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(TypeError, match="needs a SleepLMConfig.*LlamaConfig"):
        SleepLMForCausalLM(LlamaConfig())


# ----- the same SleepLM -----

def test_wraps_the_same_sleep_lm_built_and_initialised_the_same_way():
    config = tiny_config(sleep_passes=2)
    torch.manual_seed(5)
    reference = SleepLM(config)
    torch.manual_seed(5)
    model = SleepLMForCausalLM(SleepLMConfig.from_sleep_config(config))
    assert isinstance(model.model, SleepLM) and model.model.config == config
    assert list(model.model.state_dict()) == list(reference.state_dict())
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.model.state_dict()[name], tensor), name
    lm = tiny_model()
    assert SleepLMForCausalLM.from_sleep_lm(lm).model is lm  # no second model: its weights are shared
    with pytest.raises(ValueError, match="not the one config describes"):
        SleepLMForCausalLM(SleepLMConfig.from_sleep_config(tiny_config(window=9)), lm)


def test_forward_is_the_training_forward_and_its_loss_is_the_shifted_cross_entropy():
    model = hf_model(sleep_passes=2)
    tokens = random_tokens(model.model, 2, 20)
    labels = tokens.clone()
    labels[0, 3] = -100
    out = model(tokens, labels=labels)
    logits = model.model(tokens)
    assert torch.equal(out.logits, logits) and out.cache is None
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected.to(out.loss.dtype))
    out.loss.backward()  # gradients flow through the sleep algorithm
    assert model.model.embed.weight.grad is not None
    cached = model(tokens, use_cache=True)  # the same logits, streamed through a new cache
    assert isinstance(cached.cache, SleepCache) and cached.cache.get_seq_length() == 20
    torch.testing.assert_close(cached.logits, logits.detach(), atol=1e-9, rtol=1e-9)
    assert model(tokens, return_dict=False)[0].shape == logits.shape


# ----- generate through the wake/sleep engine -----

@pytest.mark.parametrize("changes", CONFIGS.values(), ids=CONFIGS.keys())
def test_greedy_generate_equals_sleep_stream_generate_token_for_token(changes):
    model = hf_model(**changes)
    prompt = random_tokens(model.model, 2, 5)
    new = 4 * model.config.window  # several sleeps during the generation
    out = generate(model, prompt, max_new_tokens=new)
    expected = SleepStream(model.model, batch_size=2).generate(prompt, new)
    assert out.shape == (2, 5 + new)
    assert torch.equal(out[:, :5], prompt) and torch.equal(out[:, 5:], expected)


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_the_cache_holds_the_wake_sleep_memory_bounded_by_the_window(eviction):
    model = hf_model(sleep_passes=3, eviction=eviction)
    L = model.config.window
    prompt = random_tokens(model.model, 1, 3)
    out = generate(model, prompt, max_new_tokens=6 * L + 2, return_dict_in_generate=True)
    cache = out.cache
    assert isinstance(cache, SleepCache)
    seen = 3 + 6 * L + 1  # generate never feeds the last token it picks
    assert cache.get_seq_length() == seen and cache.sleeps == seen // L and cache.position == seen % L
    for memory in cache.stream.memory:
        if isinstance(memory, AttentionMemory):
            window = 0 if memory.keys is None else memory.keys.shape[2]
            retained = 0 if memory.retained_keys is None else memory.retained_keys.shape[2]
            assert window == cache.position and retained == (L - 1 if eviction == "sliding" else 0)


def test_generation_continues_from_a_returned_cache():
    model = hf_model(sleep_passes=2)
    prompt = random_tokens(model.model, 2, 4)
    first = generate(model, prompt, max_new_tokens=10, return_dict_in_generate=True)
    continued = generate(model, first.sequences, cache=first.cache, max_new_tokens=9)
    assert torch.equal(continued, generate(model, prompt, max_new_tokens=19))


def test_batched_generate_equals_each_prompt_alone_and_max_new_tokens_sets_the_length():
    model = hf_model(sleep_passes=2)
    prompts = random_tokens(model.model, 3, 6)
    for new in (1, 2 * model.config.window + 3):
        out = generate(model, prompts, max_new_tokens=new)
        assert out.shape == (3, 6 + new)
        for row in range(3):
            assert torch.equal(out[row:row + 1], generate(model, prompts[row:row + 1], max_new_tokens=new))


def test_return_dict_in_generate_gives_the_engines_logits_at_each_step():
    model = hf_model(sleep_passes=3)
    prompt = random_tokens(model.model, 2, 5)
    new = 2 * model.config.window
    out = generate(model, prompt, max_new_tokens=new, return_dict_in_generate=True, output_logits=True,
                   output_scores=True)
    assert out.sequences.shape == (2, 5 + new) and len(out.logits) == len(out.scores) == new
    stream = SleepStream(model.model, batch_size=2)
    logits = stream.feed(prompt)[:, -1]
    for step in range(new):
        torch.testing.assert_close(out.logits[step], logits.float())
        logits = stream.feed(out.sequences[:, 5 + step, None])[:, -1]


def test_sampling_draws_from_the_models_distribution_reproducibly():
    model = hf_model(sleep_passes=2)
    prompt = random_tokens(model.model, 1, 9)
    options = dict(do_sample=True, max_new_tokens=12, top_k=0)
    torch.manual_seed(3)
    first = model.generate(prompt, **options)
    torch.manual_seed(3)
    assert torch.equal(model.generate(prompt, **options), first)
    torch.manual_seed(4)
    assert not torch.equal(model.generate(prompt, **options), first)
    torch.manual_seed(3)  # top_k = 1 keeps only the most likely token: greedy
    assert torch.equal(model.generate(prompt, do_sample=True, top_k=1, max_new_tokens=12),
                       generate(model, prompt, max_new_tokens=12))
    # The first sampled token of 4000 rows follows softmax(logits / T).
    rows, temperature = 4000, 1.5
    batch = prompt.expand(rows, -1).contiguous()
    torch.manual_seed(5)
    drawn = model.generate(batch, do_sample=True, top_k=0, temperature=temperature, max_new_tokens=1)[:, -1]
    expected = (model.model(prompt)[0, -1] / temperature).softmax(-1)
    frequency = torch.bincount(drawn, minlength=model.config.vocab_size) / rows
    assert (frequency - expected).abs().max() < 0.03


def test_beam_search_scores_are_the_models_log_probabilities_of_its_sequences():
    model = hf_model(sleep_passes=3)
    prompt = random_tokens(model.model, 2, 5)
    new = 2 * model.config.window + 3  # beams are reordered within windows and across sleeps
    out = model.generate(prompt, num_beams=3, max_new_tokens=new, length_penalty=0.0, early_stopping=True,
                         return_dict_in_generate=True, output_scores=True)
    sequences = out.sequences
    logprobs = model.model(sequences).log_softmax(-1)[:, 4:-1].gather(-1, sequences[:, 5:, None])[..., 0]
    torch.testing.assert_close(out.sequences_scores, logprobs.sum(-1).to(out.sequences_scores.dtype))


# ----- refusals -----

def test_foreign_caches_padding_and_rollbacks_are_refused():
    model = hf_model(sleep_passes=2)
    prompt = random_tokens(model.model, 1, 5)
    with pytest.raises(TypeError, match="SleepCache of this lmsleep model.*DynamicCache"):
        model.generate(prompt, cache=DynamicCache(), max_new_tokens=2)
    with pytest.raises(TypeError, match="SleepCache of this lmsleep model"):
        model(prompt, past_key_values=DynamicCache())
    other = hf_model(sleep_passes=2, seed=1)
    with pytest.raises(ValueError, match="memory of another model"):
        model.generate(prompt, cache=SleepCache(other.model), max_new_tokens=2)
    with pytest.raises(ValueError, match="another config"):
        model(prompt, cache=SleepCache(hf_model(window=9).model))
    with pytest.raises(ValueError, match="no padding"):
        model.generate(prompt.expand(2, -1), attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1] * 5]),
                       max_new_tokens=2)
    cache = model(prompt, use_cache=True).cache
    with pytest.raises(ValueError, match="cannot be cropped"):
        cache.crop(-1)
    with pytest.raises(ValueError, match="batch size 1"):
        model(prompt.expand(2, -1), cache=cache)
    with pytest.raises(TypeError, match="SleepLM"):
        SleepCache(model)


# ----- files -----

@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_save_pretrained_from_pretrained_round_trip_bit_identically(tmp_path, tie):
    model = hf_model(sleep_passes=3, tie_embeddings=tie).float()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "lmsleep"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is SleepLMForCausalLM and loaded.model.config == model.model.config
    assert not loaded.training
    original, restored = model.state_dict(), loaded.state_dict()
    assert list(original) == list(restored)
    for name, tensor in original.items():
        assert restored[name].dtype == tensor.dtype and torch.equal(restored[name], tensor), name
    assert (loaded.model.head.weight is loaded.model.embed.weight) == tie
    prompt = random_tokens(model.model, 1, 4)
    assert torch.equal(generate(loaded, prompt, max_new_tokens=20), generate(model, prompt, max_new_tokens=20))


def test_hf_export_converts_a_trained_run_in_one_command(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--task", "rule110", "--opt", "t_min=1", "--opt", "t_max=1", "--steps", "2",
                 "--batch-size", "2", "--eval-every", "2", "--eval-size", "2", "--d-model", "16",
                 "--mlp-hidden", "32", "--n-heads", "2", "--head-dim", "8", "--n-fast-heads", "2",
                 "--passes", "2", "--out", str(run), "--no-progress"]) == 0
    assert main(["hf-export", str(run), str(tmp_path / "hf")]) == 0
    assert "AutoModelForCausalLM.from_pretrained" in capsys.readouterr().out
    trained = load_model(run / "checkpoint")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert exported.model.config == trained.config
    for name, tensor in trained.state_dict().items():
        assert torch.equal(exported.model.state_dict()[name], tensor), name
    # a model directory exports too; a non-empty OUT_DIR and a missing source are refused by name
    assert main(["hf-export", str(run / "checkpoint"), str(tmp_path / "hf2")]) == 0
    assert main(["hf-export", str(run), str(tmp_path / "hf")]) == 2
    assert "is not an empty directory" in capsys.readouterr().err
    assert main(["hf-export", str(tmp_path / "nope"), str(tmp_path / "hf3")]) == 2
    assert "no directory at" in capsys.readouterr().err


def test_the_cli_starts_and_hf_export_explains_itself_without_transformers(tmp_path):
    code = ("import sys; sys.modules['transformers'] = None\n"  # `import transformers` now raises ImportError
            "from lmsleep.cli import main\n"
            f"sys.exit(main(['hf-export', {str(tmp_path)!r}, {str(tmp_path / 'out')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2
    assert "pip install 'lmsleep[hf]'" in result.stderr


def test_generate_sleeps_adaptively_through_a_cache_made_with_adaptive_passes():
    from lmsleep import Adaptive

    model = hf_model(sleep_passes=3)
    prompt = random_tokens(model.model, 2, 5)
    new = 3 * model.config.window
    adaptive = Adaptive(0.3, 6)
    out = generate(model, prompt, max_new_tokens=new, cache=SleepCache(model.model, passes=adaptive))
    stream = SleepStream(model.model, batch_size=2, passes=adaptive)
    expected = stream.generate(prompt, new)
    assert torch.equal(out[:, 5:], expected)
    fixed = generate(model, prompt, max_new_tokens=new, cache=SleepCache(model.model, passes=6))
    assert int(stream.total_passes.sum()) < 2 * 6 * (5 + new) // model.config.window  # it stopped early somewhere
    assert fixed.shape == out.shape
