"""Training: resumed runs end exactly like uninterrupted ones, 2-process DDP follows the 1-process loss
curve, non-finite steps are skipped and never saved, optimiser groups and schedule are as the paper."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from helpers import crash_and_resume
from lmsleep.cli import main
from lmsleep.rundir import RunDirectory
from lmsleep.train import TrainConfig, Trainer, lr_factor

TINY_MODEL = {"d_model": 32, "mlp_hidden": 64, "n_heads": 2, "head_dim": 8, "n_fast_heads": 2, "fast_key_dim": 8,
              "fast_value_dim": 8, "sleep_passes": 2}


def tiny_train_config(**changes) -> TrainConfig:
    base = dict(task="rule110", task_options={"t_min": 1, "t_max": 2}, model=TINY_MODEL, steps=8, batch_size=8,
                warmup=2, eval_every=4, eval_size=16, log_every=2, checkpoint_every=3, eval_passes=[1, 2])
    return TrainConfig(**{**base, **changes})


def metrics(path, drop=("wall_s",)):
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


def test_interrupted_and_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, monkeypatch):
    cfg = tiny_train_config()
    Trainer(cfg, tmp_path / "straight", progress=False).run()

    resumed = crash_and_resume(cfg, tmp_path / "resumed", monkeypatch, crash_at=5)  # the step-3 checkpoint + 2 steps
    assert resumed.step == 3
    resumed.run()

    assert metrics(tmp_path / "resumed") == metrics(tmp_path / "straight")
    _, a = RunDirectory(tmp_path / "straight").load_checkpoint()
    _, b = RunDirectory(tmp_path / "resumed").load_checkpoint()
    assert a["step"] == b["step"] == 8
    from lmsleep.io import load_model

    for (name, p), q in zip(load_model(tmp_path / "straight" / "checkpoint").named_parameters(),
                            load_model(tmp_path / "resumed" / "checkpoint").parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_resume_refuses_a_different_configuration(tmp_path):
    Trainer(tiny_train_config(steps=3), tmp_path, progress=False).run()
    with pytest.raises(ValueError, match=r"different configuration \(fields \['lr'\]\)"):
        Trainer(tiny_train_config(steps=3, lr=1e-3), tmp_path, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(tiny_train_config(), tmp_path / "empty", resume=True, progress=False)


def test_non_finite_steps_are_skipped_logged_and_never_saved(tmp_path, monkeypatch):
    cfg = tiny_train_config(steps=4, checkpoint_every=1)
    trainer = Trainer(cfg, tmp_path, progress=False)
    before = {n: p.clone() for n, p in trainer.model.named_parameters()}
    real_loss = trainer.model.loss

    def poisoned(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if trainer.step == 0 else loss

    monkeypatch.setattr(trainer.model, "loss", poisoned)
    trainer.run()
    records = metrics(tmp_path)
    assert records[0]["step"] == 1 and records[0]["skipped"] == "non-finite loss or gradient"
    assert records[-1]["skipped_steps"] == 1
    # The skipped step changed nothing (Adam/Muon states untouched), later steps trained.
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert any((p - before[n]).abs().max() > 0 for n, p in trainer.model.named_parameters())


def test_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    trainer = Trainer(tiny_train_config(steps=2), tmp_path, progress=False)
    trainer.run()
    saved = (tmp_path / "checkpoint" / "model.safetensors").read_bytes()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("inf"))
    trainer.save_checkpoint()
    assert (tmp_path / "checkpoint" / "model.safetensors").read_bytes() == saved
    assert "non-finite weights" in metrics(tmp_path)[-1]["warning"]


def test_optimizer_groups_and_schedule():
    from lmsleep import SleepLM

    model = SleepLM(tiny_train_config().model_config())
    groups = model.optimizer_groups()
    muon, adamw = groups["muon"], groups["adamw"]
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() == 2 for p in muon)
    adamw_names = {names[id(p)] for p in adamw}
    assert {"embed.weight", "head.weight"} <= adamw_names
    assert any("decay_input" in n for n in adamw_names) and any("A_log" in n for n in adamw_names)
    assert len(muon) + len(adamw) == len(list(model.parameters()))
    cfg = tiny_train_config(steps=100, warmup=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(100, cfg) == pytest.approx(0.1) and 0.1 < lr_factor(55, cfg) < 1.0


def test_two_process_ddp_matches_one_process(tmp_path):
    common = ["train", "--task", "rule110", "--opt", "t_min=1", "--opt", "t_max=1", "--steps", "4",
              "--batch-size", "8", "--eval-every", "4", "--eval-size", "8", "--log-every", "1",
              "--checkpoint-every", "4", "--d-model", "32", "--mlp-hidden", "64", "--passes", "2", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as probe:  # a free loopback port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         "-m", "lmsleep.cli", *common, "--out", str(tmp_path / "two")],
        check=True, env=env, capture_output=True,
    )
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    losses_one = [r["loss"] for r in one if "loss" in r]
    losses_two = [r["loss"] for r in two if "loss" in r]
    assert len(losses_one) == len(losses_two) == 4
    assert losses_one == pytest.approx(losses_two, rel=1e-4, abs=1e-5)
    assert one[-1]["eval"]["N2"]["loss"] == pytest.approx(two[-1]["eval"]["N2"]["loss"], rel=1e-4)


def test_train_cli_errors_are_clear(capsys):
    assert main(["train", "--task", "nope", "--out", "/tmp/x"]) == 2
    assert "TrainConfig.task must be one of" in capsys.readouterr().err
    assert main(["train", "--task", "rule110", "--opt", "bits", "--out", "/tmp/x"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


DEPO_CURRICULUM = [{"until": 3, "task_options": {"k_max": 1}}, {"until": 5, "task_options": {"k_max": 2}}]


def test_curriculum_stages_set_the_training_data_and_never_the_held_out_set(tmp_path, monkeypatch):
    cfg = tiny_train_config(task="depo", task_options={"k_max": 6}, steps=8, curriculum=DEPO_CURRICULUM)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    seen = {}
    real_generate = trainer.task.generate

    def spy(options, n, seed):
        seen[trainer.step] = options.k_max
        return real_generate(options, n, seed)

    monkeypatch.setattr(trainer.task, "generate", spy)
    for _ in range(cfg.steps):
        trainer._train_batch()
        trainer.step += 1
    assert seen == {0: 1, 1: 1, 2: 1, 3: 2, 4: 2, 5: 6, 6: 6, 7: 6}
    assert int(trainer.eval_batch["bucket"].max()) > 2  # the held-out set keeps k up to k_max = 6


@pytest.mark.parametrize(
    "curriculum,message",
    [([{"until": 5, "task_options": {}}, {"until": 5, "task_options": {}}], "increasing"),
     ([{"until": 9, "task_options": {}}], r"in \[1, 8\]"),
     ([{"until": 2}], "must be {'until'"),
     ([{"until": 2, "task_options": {"hops": 1}}], "task_options.*unknown.*hops"),
     ([{"until": 2, "task_options": {"queries": 2}}], "not the layout"),
     ({"until": 2}, r"curriculum must be list\[dict\] or null")],
)
def test_bad_curriculum_is_refused(curriculum, message):
    with pytest.raises(ValueError, match=message):
        tiny_train_config(task="depo", task_options={"k_max": 6}, curriculum=curriculum)


def test_train_cli_stages_become_the_curriculum(capsys):
    import argparse

    from lmsleep.train_cli import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--task", "depo", "--out", "x", "--steps", "10",
                              "--stage", "4:k_max=1", "--stage", "8:k_min=1,k_max=2"])
    assert config_from_args(args).curriculum == [
        {"until": 4, "task_options": {"k_max": 1}}, {"until": 8, "task_options": {"k_min": 1, "k_max": 2}}]
    assert main(["train", "--task", "depo", "--stage", "4:k_max", "--out", "/tmp/x"]) == 2
    assert "--stage expects UNTIL:KEY=VALUE" in capsys.readouterr().err


def test_init_from_starts_a_run_at_another_n_from_a_trained_model(tmp_path):
    from lmsleep.io import load_model

    Trainer(tiny_train_config(steps=3), tmp_path / "source", progress=False).run()
    source = load_model(tmp_path / "source" / "checkpoint")
    for path in (tmp_path / "source", tmp_path / "source" / "checkpoint"):  # a run directory or its checkpoint/
        cfg = tiny_train_config(steps=2, init_from=str(path), model={**TINY_MODEL, "sleep_passes": 3})
        trainer = Trainer(cfg, tmp_path / "fine", progress=False)
        assert trainer.model.config.sleep_passes == 3
        for (name, p), q in zip(trainer.model.named_parameters(), source.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    fresh = Trainer(tiny_train_config(steps=2, model={**TINY_MODEL, "sleep_passes": 3}), tmp_path / "x", progress=False)
    assert not torch.equal(fresh.model.embed.weight, source.embed.weight)  # the check above could fail
    trainer.run()  # and it trains from there, its optimiser state fresh
    assert json.loads((tmp_path / "fine" / "train.json").read_text())["init_from"] == str(path)


def test_init_from_refuses_another_architecture_or_a_missing_model(tmp_path):
    Trainer(tiny_train_config(steps=1), tmp_path / "source", progress=False).run()
    wider = tiny_train_config(init_from=str(tmp_path / "source"), model={**TINY_MODEL, "mlp_hidden": 96})
    with pytest.raises(ValueError, match="init_from: .*another architecture.*mlp_hidden: 64 vs 96"):
        Trainer(wider, tmp_path / "wider", progress=False)
    with pytest.raises(FileNotFoundError, match="init_from: no model directory"):
        Trainer(tiny_train_config(init_from=str(tmp_path / "nowhere")), tmp_path / "y", progress=False)
    with pytest.raises(ValueError, match="init_from must be a model directory path"):
        tiny_train_config(init_from="")


def test_train_cli_init_from(tmp_path):
    import argparse

    from lmsleep.train_cli import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--task", "depo", "--out", "x", "--init-from", "runs/a/checkpoint"])
    assert config_from_args(args).init_from == "runs/a/checkpoint"
