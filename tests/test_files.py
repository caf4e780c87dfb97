"""Model files (safetensors + JSON config) round-trip, and refuse what does not match."""
import json

import pytest
import torch

from lmsleep.io import CONFIG_FILE, WEIGHTS_FILE, load_model, save_model

from helpers import random_tokens, tiny_model


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_save_and_load_round_trip(tmp_path, tie):
    model = tiny_model(tie_embeddings=tie, sleep_passes=2, eviction="sliding")
    save_model(model, tmp_path)
    loaded = load_model(tmp_path).double().eval()
    assert loaded.config == model.config
    tokens = random_tokens(model, 2, 17)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model(tokens), rtol=0, atol=0)
    assert (loaded.head.weight is loaded.embed.weight) == tie


def test_loading_refuses_a_config_that_does_not_match_the_weights(tmp_path):
    save_model(tiny_model(), tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["d_model"] = 48
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="d_model"):
        load_model(tmp_path)


def test_loading_refuses_missing_and_truncated_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config"):
        load_model(tmp_path / "nothing")
    save_model(tiny_model(), tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_model(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="weights"):
        load_model(tmp_path)


def test_a_failed_save_never_overwrites_a_good_file(tmp_path, monkeypatch):
    model = tiny_model()
    save_model(model, tmp_path)
    good = (tmp_path / WEIGHTS_FILE).read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("lmsleep.io.save_file", crash)
    with torch.no_grad():
        model.embed.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, tmp_path)
    assert (tmp_path / WEIGHTS_FILE).read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
