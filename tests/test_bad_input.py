"""Every input a user can get wrong gives a clear error naming the problem (never a silent wrong result)."""
import pytest
import torch

from lmsleep import SleepConfig
from lmsleep.io import save_model
from lmsleep.ops import gated_delta_rule
from lmsleep.stream import SleepStream

from helpers import random_tokens, tiny_config, tiny_model

BAD_CONFIGS = [
    ({"vocab_size": 0}, "vocab_size"),
    ({"d_model": -4}, "d_model"),
    ({"window": 0}, "window"),
    ({"sleep_passes": 0}, "sleep_passes"),
    ({"sleep_passes": 2.5}, "sleep_passes"),
    ({"layout": ""}, "layout"),
    ({"layout": "AXG"}, "layout"),
    ({"eviction": "soft"}, "eviction"),
    ({"loop_start": 4}, "loop_start"),
    ({"loop_start": 2, "loop_end": 2}, "loop_end"),
    ({"loop_end": 9}, "loop_end"),
    ({"eviction": "none", "sleep_passes": 3}, "sleep_passes"),
    ({"head_dim": 7}, "head_dim"),
]


@pytest.mark.parametrize("changes,field", BAD_CONFIGS, ids=[f for _, f in BAD_CONFIGS])
def test_invalid_config_values_are_refused(changes, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**changes)


def test_config_json_with_unknown_fields_is_refused():
    text = tiny_config().to_json().replace('"window"', '"windw"')
    with pytest.raises(ValueError, match="windw"):
        SleepConfig.from_json(text)
    with pytest.raises(ValueError, match="JSON"):
        SleepConfig.from_json("{not json")


@pytest.mark.parametrize("bad_id", [-1, 23, 1000])
def test_token_ids_outside_the_vocabulary(bad_id):
    model = tiny_model()
    tokens = random_tokens(model, 1, 10)
    tokens[0, 4] = bad_id
    with pytest.raises(ValueError, match=rf"id {bad_id}.*vocabulary \[0, 23\)"):
        model(tokens)
    with pytest.raises(ValueError, match="vocabulary"):
        SleepStream(model).feed(tokens)


def test_tokens_of_the_wrong_type_or_shape():
    model = tiny_model()
    with pytest.raises(TypeError, match="int64"):
        model(torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        model(torch.zeros(5, dtype=torch.long)[None, :, None])
    with pytest.raises(ValueError, match="batch size 2"):
        SleepStream(model, batch_size=2).feed(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="passes"):
        model(torch.zeros(1, 5, dtype=torch.long), passes=0)
    with pytest.raises(ValueError, match="loss_mask"):
        model(torch.zeros(1, 5, dtype=torch.long), loss_mask=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="nothing to predict"):
        tokens = torch.zeros(1, 5, dtype=torch.long)
        model.loss(tokens, tokens, torch.zeros_like(tokens))


def op_inputs(batch=1, time=5, heads=2, key_dim=4, value_dim=3):
    return dict(
        q=torch.randn(batch, time, heads, key_dim), k=torch.randn(batch, time, heads, key_dim),
        v=torch.randn(batch, time, heads, value_dim), g=-torch.rand(batch, time, heads), beta=torch.rand(batch, time, heads),
    )


BAD_OP_INPUTS = [
    ("q", lambda x: x["q"][0], r"q must be \[batch, time, heads, dim\]"),
    ("k", lambda x: x["k"][..., :3], "q and k must have the same shape"),
    ("v", lambda x: x["v"][:, :4], "v must share"),
    ("g", lambda x: x["g"][..., None], "g must be"),
    ("beta", lambda x: x["beta"][:, :2], "beta must be"),
    ("v", lambda x: x["v"].double(), "share one dtype"),
    ("q", lambda x: x["q"].long(), "floating"),
    ("q", lambda x: x["q"].numpy(), "torch.Tensor"),
]


@pytest.mark.parametrize("name,corrupt,message", BAD_OP_INPUTS, ids=[m.split()[0] + "-" + n for n, _, m in BAD_OP_INPUTS])
def test_op_rejects_wrong_shapes_and_dtypes(name, corrupt, message):
    inputs = op_inputs()
    inputs[name] = corrupt(inputs)
    with pytest.raises((ValueError, TypeError), match=message):
        gated_delta_rule(**inputs)


def test_op_rejects_bad_state_and_chunk_size():
    with pytest.raises(ValueError, match="initial_state must be"):
        gated_delta_rule(**op_inputs(), initial_state=torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        gated_delta_rule(**op_inputs(), chunk_size=0)


def test_memory_state_files_that_do_not_fit_are_refused(tmp_path):
    model = tiny_model(sleep_passes=2)
    with pytest.raises(FileNotFoundError, match="memory state"):
        SleepStream.load(model, tmp_path / "missing.safetensors")
    stream = SleepStream(model)
    stream.feed(random_tokens(model, 1, 10))
    path = tmp_path / "memory.safetensors"
    stream.save(path)
    other = tiny_model(sleep_passes=3)
    with pytest.raises(ValueError, match="different model config: sleep_passes"):
        SleepStream.load(other, path)
    save_model(model, tmp_path / "model")
    with pytest.raises(ValueError, match="not an lmsleep memory-state file"):
        SleepStream.load(model, tmp_path / "model" / "model.safetensors")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        SleepStream.load(model, path)


def test_stream_arguments():
    model = tiny_model()
    with pytest.raises(ValueError, match="batch_size"):
        SleepStream(model, batch_size=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SleepStream(model).generate(torch.zeros(1, 2, dtype=torch.long), -1)
