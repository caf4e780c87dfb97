"""The SQuAD benchmark end to end on a tiny random Llama saved as a model directory, with a two-passage file
(no download): every system runs, closed-book scores and forgetting come out for each; the fine-tuning rates are
tuned once on validation passages that no seed tests on; bad flags are named."""
import argparse
import json

import pytest
import torch

pytest.importorskip("transformers")

from hf_tiny import chat_tokenizer, llama  # noqa: E402

from lmsleep.continual.bench import squad as bench  # noqa: E402
from lmsleep.continual.bench import squad_systems, squad_tuning  # noqa: E402

PASSAGES = [{"title": f"T{i}", "context": f"Ada {i} was born in Paris.",
             "questions": [{"question": "Where was Ada born?", "answer": "Paris"}]} for i in range(7)]


@pytest.fixture
def world(tmp_path, monkeypatch):
    torch.manual_seed(0)
    llama(layers=1).save_pretrained(tmp_path / "model")
    chat_tokenizer().save_pretrained(tmp_path / "model")
    (tmp_path / "squad.json").write_text(json.dumps(PASSAGES))
    monkeypatch.setattr(squad_systems.demo_real, "SEEDING", {"steps": 1, "batch_size": 2, "sample_length": 4,
                                                              "lr": 1e-3, "unrelated_length": 3})
    return tmp_path


def _args(world, **changes):
    args = dict(model=str(world / "model"), passages=1, questions=1, probe=1, steps=1, squad=str(world / "squad.json"),
                systems=",".join(squad_systems.SYSTEMS), forgetting_budget=2.5, out=str(world / "out"))
    return argparse.Namespace(**{**args, **changes})


def test_every_system_is_scored(world):
    ticks = []
    result = bench.run_seed(_args(world), 0, lambda n=1: ticks.append(n))
    assert set(result["systems"]) == {"base", "in-context", *squad_systems.SYSTEMS}
    assert sum(ticks) == bench.units(_args(world))
    assert set(result["learning_rates"]) == set(squad_tuning.TUNED)
    assert all(lr in squad_tuning.GRID for lr in result["learning_rates"].values())
    for name, row in result["systems"].items():
        assert {"em", "f1", "contains", "reading", "forgetting", "cpu_s"} <= set(row), name
        assert 0 <= row["f1"] <= 100
    assert result["systems"]["sleep"]["cpu_s"] > 0 and result["systems"]["base"]["forgetting"] == 0


def test_bad_flags_are_named(world):
    with pytest.raises(ValueError, match="--systems: unknown"):
        bench.systems(_args(world, systems="sleep,magic"))
    with pytest.raises(ValueError, match="--passages must be at least 1"):
        bench.systems(_args(world, passages=0))
    with pytest.raises(ValueError, match="--forgetting-budget must be at least 0"):
        bench.systems(_args(world, forgetting_budget=-1.0))
    with pytest.raises(ValueError, match="needs test passages up to 4; the file has 3 before its validation"):
        bench.run_seed(_args(world, passages=2), 1, lambda n=1: None)


def test_validation_passages_are_held_out():
    held = squad_tuning.split(list(range(20)), probe=2)
    assert held == {"validation": [14, 15], "validation_probe": [16, 17], "probe": [18, 19], "first_held": 14}


def test_rates_are_tuned_once_and_reused(world, monkeypatch):
    args = _args(world, systems="finetune")
    base, tokenizer = bench.load_causal_lm(args.model)
    held = squad_tuning.split(squad_tuning.squad.load(args.squad), args.probe)
    ticks = []
    first = squad_tuning.tune(args, ["finetune"], base, tokenizer, held, lambda n=1: ticks.append(n))
    assert sum(ticks) == squad_tuning.units(["finetune"]) == len(squad_tuning.GRID) * squad_tuning.VALIDATION
    assert set(first["tried"]["finetune"]) == {str(lr) for lr in squad_tuning.GRID}
    assert all(len(outcomes) == squad_tuning.VALIDATION for outcomes in first["tried"]["finetune"].values())
    assert first["validation_passages"] == ["T3", "T4"]
    monkeypatch.setattr(squad_systems, "make", lambda *a, **k: pytest.fail("tuned again"))
    assert squad_tuning.tune(args, ["finetune"], base, tokenizer, held, lambda n=1: None)["lrs"] == first["lrs"]
    with pytest.raises(pytest.fail.Exception, match="tuned again"):  # other arguments: tuned again
        squad_tuning.tune(_args(world, systems="finetune", steps=2), ["finetune"], base, tokenizer, held, lambda n=1: None)


def test_the_runner_writes_the_report(world):
    from lmsleep.continual.bench import runner

    args = _args(world, systems="finetune", seeds=[0], out=str(world / "out"), threads=1, cache_dir=None)
    runner.run(bench, args)
    report = (world / "out" / "report.md").read_text()
    assert "| finetune |" in report and "Table 3" in report
