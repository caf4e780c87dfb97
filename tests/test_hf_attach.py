"""Memory levels on Hugging Face causal LMs (continual.hf_levels): on tiny random Llama, Qwen2 and Qwen3 models,
attaching and unlocking change no output, a trained expert changes the output and nothing but itself, greedy
generate() (KV cache) is unchanged, detach gives the original back bit for bit, and mistakes are one-line errors."""
import pytest
import torch

pytest.importorskip("transformers")

from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config  # noqa: E402
from transformers import Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM  # noqa: E402

from lmsleep.continual import attach, detach, levels_of  # noqa: E402
from lmsleep.continual.hf_levels import attached  # noqa: E402
from lmsleep.layers.levels import MemoryLevels  # noqa: E402

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=64, max_position_embeddings=64)
ARCHITECTURES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**TINY)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**TINY)),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(head_dim=8, **TINY)),
}


@pytest.fixture(params=list(ARCHITECTURES))
def model(request):
    torch.manual_seed(0)
    return ARCHITECTURES[request.param]().eval()


def tokens(batch=2, time=12, seed=1):
    return torch.randint(0, TINY["vocab_size"], (batch, time), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model, ids=None):
    return model(tokens() if ids is None else ids).logits


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("levels", [1, 2, 3], ids=lambda k: f"levels{k}")
def test_attach_changes_no_output_and_holds_the_same_mlp(model, levels):
    before = logits(model)
    mlps = [layer.mlp for layer in model.model.layers]
    assert attach(model, levels=levels, rank=4, pool=3) is model
    for layer, mlp in zip(model.model.layers, mlps):
        assert isinstance(layer.mlp, MemoryLevels) and len(layer.mlp.levels) == levels
        assert layer.mlp.levels[-1].base[0] is mlp  # the pretrained MLP itself, no copy
        assert all(len(level.base) == 0 for level in layer.mlp.levels[:-1])  # faster levels: pools alone
    assert torch.equal(logits(model), before)
    assert [len(ls) for ls in levels_of(model)] == [2] * levels


def test_unlocking_changes_no_output(model):
    before = logits(model)
    attach(model, levels=2)
    for level in (lvl for per_level in levels_of(model) for lvl in per_level):
        level.unlock(torch.Generator().manual_seed(3))
    assert torch.equal(logits(model), before)


def test_a_trained_expert_changes_the_output_and_nothing_else(model):
    attach(model, levels=2, pool=3)
    level = levels_of(model)[0][1]  # the fast level of layer 1
    slot = level.unlock(torch.Generator().manual_seed(3))
    before, params = logits(model), snapshot(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in level.pool_tensors:
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(level.pool_tensors, lr=1.0)
    ids = tokens()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        level.keep_only_gradient_of(slot)
        optimizer.step()
    assert (logits(model) - before).abs().max() > 1e-4
    pool_names = {name for name, p in model.named_parameters() if any(p is t for t in level.pool_tensors)}
    assert len(pool_names) == 3
    for name, p in model.named_parameters():
        if name in pool_names:
            others = [j for j in range(level.pool_size) if j != slot]
            assert torch.equal(p[others], params[name][others]), name
            assert not torch.equal(p[slot], params[name][slot]), name
        else:
            assert torch.equal(p, params[name]), name  # base MLPs, every other level and expert: untouched


@pytest.mark.parametrize("levels", [1, 2], ids=lambda k: f"levels{k}")
def test_detach_gives_the_original_back(model, levels):
    names, state = snapshot(model), model.state_dict()
    mlps = [layer.mlp for layer in model.model.layers]
    attach(model, levels=levels)
    assert len(snapshot(model)) > len(names)
    level = levels_of(model)[0][0]
    level.reset(level.unlock())  # unlocked, then pruned: holds nothing again
    assert detach(model) is model
    assert all(layer.mlp is mlp for layer, mlp in zip(model.model.layers, mlps))
    after = snapshot(model)
    assert list(after) == list(names) and all(torch.equal(after[n], names[n]) for n in names)
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert attached(model) == {}


def test_detach_refuses_while_a_level_holds_experts_unless_discarded(model):
    before = logits(model)
    mlps = [layer.mlp for layer in model.model.layers]
    attach(model, levels=2)
    levels_of(model)[1][0].unlock()
    with torch.no_grad():
        levels_of(model)[0][1].A[2] = 1.0  # a masked slot holding values (not kept masked)
    with pytest.raises(ValueError, match=r"layer 0 level 1: experts in slots \[0\]; layer 1 level 0: non-zero values"):
        detach(model)
    assert isinstance(model.model.layers[0].mlp, MemoryLevels)  # refused: nothing changed
    detach(model, discard=True)
    assert all(layer.mlp is mlp for layer, mlp in zip(model.model.layers, mlps))
    assert torch.equal(logits(model), before)


def test_greedy_generate_is_unchanged(model):
    prompt = tokens(batch=1, time=6)
    generate = dict(max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    before = model.generate(prompt, **generate)
    attach(model, levels=2)
    for per_level in levels_of(model):
        per_level[0].unlock()
    assert torch.equal(model.generate(prompt, **generate), before)


def test_a_subset_of_layers(model):
    before = logits(model)
    first = model.model.layers[0].mlp
    attach(model, layers=[1], levels=2)
    assert model.model.layers[0].mlp is first
    assert list(attached(model)) == [1]
    assert [len(ls) for ls in levels_of(model)] == [1, 1]
    assert torch.equal(logits(model), before)
    with pytest.raises(ValueError, match=r"already has memory levels attached \(layers \[1\]\)"):
        attach(model, layers=[0])
    detach(model)
    assert model.model.layers[0].mlp is first


def test_pools_take_the_mlp_dtype():
    torch.manual_seed(0)
    model = ARCHITECTURES["llama"]().to(torch.bfloat16).eval()
    before = logits(model)
    attach(model)
    assert all(t.dtype == torch.bfloat16 for level in levels_of(model)[0] for t in level.pool_tensors)
    assert torch.equal(logits(model), before)


def test_attach_to_a_bare_decoder():
    torch.manual_seed(0)
    decoder = ARCHITECTURES["llama"]().model  # LlamaModel: layers at model.layers
    attach(decoder, layers=[0])
    assert list(attached(decoder)) == [0]


@pytest.mark.parametrize("layers, message", [
    ([2], r"layers\[0\] = 2 is out of range: LlamaForCausalLM has 2 decoder layers \(0\.\.1\)"),
    ([0, -1], r"layers\[1\] = -1 is out of range"),
    ([1, 1], r"layers lists a layer twice"),
    ([], r"layers must be None \(all\) or a non-empty list"),
    (["0"], r"layers\[0\] must be an integer"),
], ids=["past-the-end", "negative", "twice", "empty", "not-an-int"])
def test_bad_layers(layers, message):
    model = ARCHITECTURES["llama"]()
    with pytest.raises(ValueError, match=message):
        attach(model, layers=layers)
    assert attached(model) == {}


@pytest.mark.parametrize("options, message", [
    (dict(levels=0), r"levels must be a positive integer, got 0"),
    (dict(rank=0), r"rank must be a positive integer"),
    (dict(pool=2.5), r"pool must be a positive integer"),
    (dict(gating="max"), r"gating must be one of \('sigmoid', 'sum', 'softmax'\), got 'max'"),
], ids=["levels", "rank", "pool", "gating"])
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        attach(ARCHITECTURES["llama"](), **options)


def test_models_without_recognisable_layers():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=16))
    for model, name in ((gpt2, "GPT2LMHeadModel"), (torch.nn.Linear(2, 2), "Linear")):
        with pytest.raises(ValueError, match=rf"^{name} has no decoder layers with an MLP that attach recognises "
                                             r"\(looked for model\.model\.layers\[i\]\.mlp or model\.layers\[i\]\.mlp"):
            attach(model)


def test_detach_and_levels_of_need_attached_levels(model):
    with pytest.raises(ValueError, match="has no memory levels attached: nothing to detach"):
        detach(model)
    with pytest.raises(ValueError, match=r"no memory levels attached; call lmsleep\.continual\.attach\(model\) first"):
        levels_of(model)
