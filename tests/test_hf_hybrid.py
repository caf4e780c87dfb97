"""lmsleep.hf.sleep_hybrid on transformers' own Gated-DeltaNet hybrids (tiny random configs, no download):
N = 1 over one window is the plain model; greedy generate() equals the argmax of the training forward token
for token (windows, N ∈ {1, 2, 3}, both evictions, adaptive, sleep on demand); memory stays bounded by L;
the pretrained weights are shared, never copied; gradients flow through the passes; other architectures are
refused, naming what is missing."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from lmsleep import Adaptive  # noqa: E402
from lmsleep.hf import SleepCache, sleep_hybrid  # noqa: E402
from lmsleep.hf import gdn  # noqa: E402

VOCAB = 64
TYPES = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
GDN = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8)
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
              num_key_value_heads=1, pad_token_id=0, eos_token_id=None)  # no stop: full lengths


def qwen3_5(layer_types=TYPES):
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    return Qwen3_5ForCausalLM(Qwen3_5TextConfig(**COMMON, **GDN, head_dim=16, layer_types=layer_types))


def qwen3_next():
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    return Qwen3NextForCausalLM(Qwen3NextConfig(**COMMON, **GDN, head_dim=16, layer_types=TYPES, num_experts=4,
                                                num_experts_per_tok=2, moe_intermediate_size=16,
                                                shared_expert_intermediate_size=16, mlp_only_layers=[0, 2]))


def olmo_hybrid():
    from transformers import OlmoHybridConfig, OlmoHybridForCausalLM

    types = ["linear_attention"] * 3 + ["full_attention"]  # OLMo-Hybrid's pattern: three GDN layers per attention
    return OlmoHybridForCausalLM(OlmoHybridConfig(**COMMON, **GDN, layer_types=types))


ARCHITECTURES = {"qwen3_5": qwen3_5, "qwen3_next": qwen3_next, "olmo_hybrid": olmo_hybrid}


def tiny(arch="qwen3_5", seed=0):
    """A tiny model with sharp, history-dependent predictions (weights at a larger scale than the initial
    one, whose near-flat logits make greedy decoding repeat one token whatever the memory holds)."""
    torch.manual_seed(seed)
    model = ARCHITECTURES[arch]().eval()
    generator = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(2.0 / p.shape[-1] ** 0.5 * torch.randn(p.shape, generator=generator))
    return model


def tokens(batch, length, seed=1):
    return torch.randint(2, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))  # no pad/eos


def greedy(wrapped, prompt, new, **options):
    return wrapped.generate(prompt, max_new_tokens=new, do_sample=False, **options)


def forward_argmax(wrapped, sequence, **options):
    """What the training forward predicts after each token: the argmax of its logits."""
    with torch.no_grad():
        return wrapped.model(sequence, **options).argmax(-1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_pass_over_a_window_covering_the_sequence_is_the_plain_model(arch):
    model = tiny(arch)
    x = tokens(2, 12)
    with torch.no_grad():
        plain = model(x).logits
        for eviction in ("hard", "sliding"):
            logits = sleep_hybrid(model, window=12, passes=1, eviction=eviction)(x).logits
            torch.testing.assert_close(logits, plain, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
@pytest.mark.parametrize("passes", [1, 2, 3])
@pytest.mark.parametrize("window", [3, 5])
def test_greedy_generate_equals_the_training_forwards_argmax_token_for_token(window, passes, eviction):
    wrapped = sleep_hybrid(tiny(), window=window, passes=passes, eviction=eviction)
    prompt, new = tokens(2, 4), 3 * window + 2
    out = greedy(wrapped, prompt, new)
    assert out.shape == (2, 4 + new)
    assert torch.equal(out[:, 4:], forward_argmax(wrapped, out)[:, 3:-1])


@pytest.mark.parametrize("arch", ["qwen3_next", "olmo_hybrid"])
def test_the_other_architectures_generate_as_their_training_forward_predicts(arch):
    for eviction in ("hard", "sliding"):
        wrapped = sleep_hybrid(tiny(arch), window=4, passes=3, eviction=eviction)
        out = greedy(wrapped, tokens(2, 3), 10)
        assert torch.equal(out[:, 3:], forward_argmax(wrapped, out)[:, 2:-1])


def test_sleep_changes_what_the_model_predicts_and_a_looped_range_can_be_chosen():
    model, x = tiny(), tokens(2, 15)
    logits = {n: sleep_hybrid(model, window=5, passes=n)(x).logits for n in (1, 3)}
    assert torch.equal(logits[1][:, :5], logits[3][:, :5])  # the first window is before any sleep
    assert not torch.allclose(logits[1][:, 5:], logits[3][:, 5:])
    looped = sleep_hybrid(model, window=5, passes=3, loop_start=1, loop_end=3)
    out = greedy(looped, tokens(1, 3), 12)
    assert torch.equal(out[:, 3:], forward_argmax(looped, out)[:, 2:-1])


def test_the_training_forward_backpropagates_through_every_pass():
    model = tiny()
    model.train()
    wrapped = sleep_hybrid(model, window=4, passes=2)
    x = tokens(2, 12)
    wrapped(x, labels=x).loss.backward()
    gdn_layer = model.model.layers[0].linear_attn
    assert gdn_layer.A_log.grad is not None and gdn_layer.in_proj_qkv.weight.grad.abs().sum() > 0
    loss_checkpointed = wrapped.model(x, use_checkpoint=True)
    torch.testing.assert_close(loss_checkpointed, wrapped.model(x))


def test_weights_are_shared_not_copied_and_the_original_model_is_left_as_it_was():
    model = tiny()
    before = {name: p.clone() for name, p in model.state_dict().items()}
    functions = {name: getattr(transformers.models.qwen3_5.modeling_qwen3_5, name) for name in gdn.ROUTED_FUNCTIONS}
    wrapped = sleep_hybrid(model, window=4, passes=2)
    greedy(wrapped, tokens(1, 3), 5)
    assert wrapped.causal_lm is model
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    wrapped_params = {p.data_ptr() for p in wrapped.parameters()}
    assert {p.data_ptr() for p in model.parameters()} == wrapped_params
    assert model.config._attn_implementation == wrapped.config._attn_implementation
    assert all(getattr(transformers.models.qwen3_5.modeling_qwen3_5, name) is f for name, f in functions.items())


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_the_cache_is_bounded_by_the_window_however_long_the_output(eviction):
    window = 4
    wrapped = sleep_hybrid(tiny(), window=window, passes=2, eviction=eviction)
    cache = SleepCache(wrapped.model)
    greedy(wrapped, tokens(1, 3), 40, cache=cache)
    assert cache.get_seq_length() == 42 and cache.sleeps == 42 // window
    for memory in cache.stream.memory:
        for name, t in memory.tensors().items():
            if name in ("keys", "values", "retained_keys", "retained_values"):
                assert t.shape[2] <= window
            elif name == "conv_tail":  # the last conv_kernel_size − 1 inputs of the window
                assert t.shape[1] == wrapped.config.linear_conv_kernel_dim - 1


def test_sleep_now_on_the_cache_is_the_forward_with_that_window_boundary():
    wrapped = sleep_hybrid(tiny(), window=5, passes=3, eviction="sliding")
    prompt = tokens(2, 4)
    cache = wrapped(prompt[:, :3], use_cache=True).cache  # read the first 3 tokens, then sleep on them
    assert torch.equal(cache.sleep_now(), torch.tensor([3, 3]))
    out = greedy(wrapped, prompt, 11, cache=cache)  # generate feeds the prompt's token not yet read
    expected = forward_argmax(wrapped, out, boundaries=[3])
    assert torch.equal(out[:, 4:], expected[:, 3:-1])
    assert not torch.equal(expected, forward_argmax(wrapped, out))  # the sleep on demand changed the predictions


def test_adaptive_sleep_generates_as_the_adaptive_forward_predicts():
    wrapped = sleep_hybrid(tiny(), window=4, passes=2)
    adaptive = Adaptive(0.3, 5)
    cache = SleepCache(wrapped.model, passes=adaptive)
    out = greedy(wrapped, tokens(2, 3), 13, cache=cache)
    assert torch.equal(out[:, 3:], forward_argmax(wrapped, out, passes=adaptive)[:, 2:-1])
    assert 2 <= int(cache.stream.last_passes.min()) and int(cache.stream.last_passes.max()) <= 5


def test_other_architectures_and_bad_settings_are_refused_naming_what_is_missing():
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ValueError, match="LlamaForCausalLM has no config.layer_types.*linear-attention"):
        sleep_hybrid(llama, window=4)
    with pytest.raises(ValueError, match="needs linear-attention \\(Gated-DeltaNet\\) layers.*has none"):
        sleep_hybrid(qwen3_5(["full_attention"] * 4), window=4)
    other = qwen3_5()
    other.model.layers[2].linear_attn = torch.nn.Identity()
    with pytest.raises(ValueError, match="layer 2 of Qwen3_5ForCausalLM is a linear-attention layer of another kind "
                                         "\\(Identity\\), not supported yet"):
        sleep_hybrid(other, window=4)
    model = qwen3_5()
    for options, field in [(dict(window=0), "window"), (dict(window=4, passes=0), "passes"),
                           (dict(window=4, eviction="soft"), "eviction"), (dict(window=4, loop_start=4), "loop_start"),
                           (dict(window=4, loop_start=2, loop_end=2), "loop_end")]:
        with pytest.raises(ValueError, match=field):
            sleep_hybrid(model, **options)
    wrapped = sleep_hybrid(model, window=4)
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    model.train()
    with pytest.raises(ValueError, match="gradient checkpointing drops the cache"):
        wrapped(tokens(1, 5))
    with pytest.raises(ValueError, match="packed sequences"):
        gdn.transformers_gated_delta_rule(*[torch.zeros(1, 1, 1, 2)] * 3, torch.zeros(1, 1, 1), torch.zeros(1, 1, 1),
                                          cu_seqlens=torch.tensor([0, 1]))
