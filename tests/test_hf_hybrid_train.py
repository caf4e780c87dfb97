"""Training a transformers Gated-DeltaNet hybrid with sleep (SleepConfig.architecture "qwen3.5"): `lmsleep train`
builds a randomly initialised Qwen3.5 from the config's dimensions, trains it with the same loop, writes the same
checksummed checkpoints, resumes bit for bit, evaluates at each N; its optimizer groups and FLOPs are the
model's own; bad configs are refused by name."""
import json
import sys

import pytest
import torch

pytest.importorskip("transformers")

from helpers import crash_and_resume  # noqa: E402
from lmsleep.cli import main  # noqa: E402
from lmsleep.config import SleepConfig  # noqa: E402
from lmsleep.io import load_model  # noqa: E402
from lmsleep.model import build_model  # noqa: E402
from lmsleep.rundir import RunDirectory  # noqa: E402
from lmsleep.sweep import expand  # noqa: E402
from lmsleep.train import TrainConfig, Trainer  # noqa: E402

QWEN = {"architecture": "qwen3.5", "layout": "AG", "d_model": 32, "mlp_hidden": 64, "n_heads": 2, "head_dim": 8,
        "n_fast_heads": 2, "fast_key_dim": 8, "fast_value_dim": 8, "sleep_passes": 2}


def qwen_train_config(**changes) -> TrainConfig:
    base = dict(task="rule110", task_options={"t_min": 1, "t_max": 2}, model=QWEN, steps=6, batch_size=8, warmup=2,
                eval_every=3, eval_size=16, log_every=2, checkpoint_every=2, eval_passes=[1, 2])
    return TrainConfig(**{**base, **changes})


def metrics(path):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in RunDirectory(path).records()]


def test_the_config_builds_transformers_qwen3_5_with_its_dimensions_made_to_sleep():
    from transformers import Qwen3_5ForCausalLM

    from lmsleep.hf.hybrid_lm import HybridLM

    model = build_model(SleepConfig(**QWEN, window=16))
    assert isinstance(model, HybridLM) and isinstance(model.causal_lm, Qwen3_5ForCausalLM)
    hf = model.causal_lm.config
    assert hf.layer_types == ["full_attention", "linear_attention"] and hf.hidden_size == 32
    assert (hf.num_attention_heads, hf.head_dim, hf.linear_num_value_heads, hf.linear_value_head_dim) == (2, 8, 2, 8)
    groups = {name: {id(p) for p in params} for name, params in model.optimizer_groups().items()}
    named = dict(model.named_parameters())
    gdn = "causal_lm.model.layers.1.linear_attn."
    assert id(named["causal_lm.model.layers.0.self_attn.q_proj.weight"]) in groups["muon"]
    assert id(named[gdn + "in_proj_qkv.weight"]) in groups["muon"]
    for name in (gdn + "in_proj_a.weight", gdn + "in_proj_b.weight", gdn + "A_log", gdn + "conv1d.weight",
                 "causal_lm.model.embed_tokens.weight", "causal_lm.lm_head.weight"):
        assert id(named[name]) in groups["adamw"], name
    assert len(groups["muon"]) + len(groups["adamw"]) == len(named)
    # the decay starts as Gated DeltaNet's (slow enough to carry a window), not transformers' placeholder dt_bias = 1
    decay_rate = named[gdn + "A_log"].exp() * torch.nn.functional.softplus(named[gdn + "dt_bias"])
    assert bool((decay_rate <= 16 * 0.1).all()) and bool((named[gdn + "A_log"].exp() >= 1).all())
    mask = [0] * 16 + [1] * 16  # a consolidation window, then an answer window
    n1 = build_model(SleepConfig(**{**QWEN, "sleep_passes": 1}, window=16)).estimate_flops(mask)
    assert model.estimate_flops(mask) > n1 > 0  # the second pass over the first window costs


def test_lmsleep_train_trains_checkpoints_and_evaluates_a_qwen3_5_at_each_n(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--task", "rule110", "--opt", "t_min=1", "--opt", "t_max=2", "--architecture", "qwen3.5",
                 "--layout", "AG", "--d-model", "32", "--mlp-hidden", "64", "--n-heads", "2", "--head-dim", "8",
                 "--n-fast-heads", "2", "--passes", "2", "--steps", "2", "--batch-size", "4", "--eval-size", "8",
                 "--eval-every", "2", "--eval-passes", "1", "2", "--out", str(out), "--no-progress"]) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["step"] == 2 and set(final["eval"]) == {"N1", "N2"}
    assert json.loads((out / "train.json").read_text())["model"]["architecture"] == "qwen3.5"
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    assert saved["architecture"] == "qwen3.5" and saved["sleep_passes"] == 2
    loaded, state = RunDirectory(out).load_checkpoint()
    assert type(loaded).__name__ == "HybridLM" and state["step"] == 2
    tokens = torch.randint(0, loaded.config.vocab_size, (2, 40))
    again = load_model(out / "checkpoint")
    torch.testing.assert_close(loaded(tokens), again(tokens), rtol=0, atol=0)


def test_an_interrupted_qwen3_5_run_resumes_exactly_like_an_uninterrupted_one(tmp_path, monkeypatch):
    cfg = qwen_train_config()
    Trainer(cfg, tmp_path / "straight", progress=False).run()
    resumed = crash_and_resume(cfg, tmp_path / "resumed", monkeypatch, crash_at=3)  # after the step-2 checkpoint
    assert resumed.step == 2
    resumed.run()
    assert metrics(tmp_path / "resumed") == metrics(tmp_path / "straight")
    assert any("N2" in r.get("eval", {}) for r in metrics(tmp_path / "straight"))
    for (name, p), q in zip(load_model(tmp_path / "straight" / "checkpoint").named_parameters(),
                            load_model(tmp_path / "resumed" / "checkpoint").parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_a_sweep_of_qwen3_5_runs_names_each_n(tmp_path):
    sweep = {"name": "q", "base": {"task": "rule110", "model": {"architecture": "qwen3.5", "layout": "AG"}},
             "grid": {"model": ["sleep"], "passes": [1, 4], "seed": [0]}}
    runs = expand(sweep)
    assert [(name, cfg.model_config().sleep_passes, cfg.model_config().architecture) for name, cfg in runs] == [
        ("sleep-N1-s0", 1, "qwen3.5"), ("sleep-N4-s0", 4, "qwen3.5")]
    with pytest.raises(ValueError, match="eviction must be 'hard' or 'sliding' for architecture 'qwen3.5'"):
        expand({**sweep, "grid": {"model": ["full-attention"]}})


@pytest.mark.parametrize("fields, message", [
    ({"architecture": "qwen9"}, "SleepConfig.architecture must be one of"),
    ({"memory_levels": 1}, "memory_levels must be 0 for architecture 'qwen3.5'"),
    ({"tie_embeddings": True}, "tie_embeddings must be False for architecture 'qwen3.5'"),
])
def test_bad_qwen3_5_configs_are_refused_by_name(fields, message):
    with pytest.raises(ValueError, match=message):
        qwen_train_config(model={**QWEN, **fields})


def test_a_missing_transformers_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "lmsleep.hf.hybrid_lm", None)  # as if transformers could not be imported
    with pytest.raises(ImportError, match="architecture 'qwen3.5' needs transformers"):
        build_model(SleepConfig(**QWEN))
    from lmsleep.model import SleepLM

    with pytest.raises(ValueError, match="SleepLM builds lmsleep's own blocks"):
        SleepLM(SleepConfig(**QWEN))


def test_hf_export_of_a_qwen3_5_run_is_a_qwen3_5_that_sleeps_as_trained_once_wrapped(tmp_path, capsys):
    from transformers import Qwen3_5ForCausalLM

    from lmsleep.hf import sleep_hybrid

    Trainer(qwen_train_config(steps=2, eval_every=2), tmp_path / "run", progress=False).run()
    assert main(["hf-export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert "sleep_hybrid(model, window=8, passes=2, eviction='hard')" in capsys.readouterr().out
    trained = load_model(tmp_path / "run" / "checkpoint")
    wrapped = sleep_hybrid(Qwen3_5ForCausalLM.from_pretrained(tmp_path / "hf"), window=8, passes=2)
    tokens = torch.randint(0, trained.config.vocab_size, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(wrapped.model(tokens), trained(tokens), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["qwen3_5", "qwen3_next", "olmo_hybrid"])
def test_a_wrapped_pretrained_hybrid_has_the_loss_optimizer_groups_and_flops_too(arch):
    from test_hf_hybrid import ARCHITECTURES, tokens

    from lmsleep.hf import sleep_hybrid

    causal_lm = ARCHITECTURES[arch]()
    sleeper = sleep_hybrid(causal_lm, window=8, passes=2).model
    groups = sleeper.optimizer_groups()
    assert sum(map(len, groups.values())) == len(list(causal_lm.parameters())) and groups["muon"]
    assert id(causal_lm.get_input_embeddings().weight) in {id(p) for p in groups["adamw"]}
    mask = [0] * 8 + [1] * 8
    assert sleeper.estimate_flops(mask) > sleep_hybrid(causal_lm, window=8, passes=1).model.estimate_flops(mask)
    x = tokens(2, 16)
    sleeper.loss(x, x, torch.tensor([mask, mask])).backward()
    assert all(p.grad is not None for p in groups["muon"])
