"""The run directory: metrics survive a torn last line, a checkpoint survives a crash at any moment of its
save (every step of the swap, and a real training process SIGKILLed again and again), and an old pickled
training state is refused without being unpickled."""
import json
import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmsleep.rundir import PICKLED_TRAINING_FILE, TRAINING_FILE, RunDirectory
from lmsleep.train import TrainConfig, Trainer

from helpers import tiny_model

MODEL = {"layout": "AG", "d_model": 16, "mlp_hidden": 32, "n_heads": 2, "head_dim": 8, "n_fast_heads": 2,
         "fast_key_dim": 8, "fast_value_dim": 8, "sleep_passes": 2}


def tiny_train_config(**changes) -> TrainConfig:
    base = dict(task="rule110", task_options={"t_min": 1, "t_max": 2, "bits": 6, "strings": 2}, model=MODEL,
                steps=30, batch_size=4, warmup=2, eval_every=10, eval_size=8, log_every=1, checkpoint_every=1,
                final_eval_passes=[1, 2])
    return TrainConfig(**{**base, **changes})


def test_metrics_log_read_and_truncate(tmp_path):
    run = RunDirectory(tmp_path / "run")
    assert run.records() == []
    run.start('{"a": 1}\n')
    assert run.config_path.read_text() == '{"a": 1}\n' and run.records() == []
    for step in (1, 2, 3):
        run.log({"step": step, "loss": 1.0 / step})
    assert [r["step"] for r in run.records()] == [1, 2, 3]
    run.truncate_after(2)
    assert [r["step"] for r in run.records()] == [1, 2]
    run.start('{"a": 2}\n')  # a fresh start forgets the old records
    assert run.records() == []


def test_a_torn_last_line_is_skipped_and_dropped_on_resume(tmp_path):
    run = RunDirectory(tmp_path)
    run.start("{}\n")
    run.log({"step": 1, "loss": 0.5})
    run.log({"step": 2, "loss": 0.4})
    with open(run.metrics_path, "a") as handle:  # a process killed while writing its third record
        handle.write('{"step": 3, "lo')
    assert [r["step"] for r in run.records()] == [1, 2]
    run.truncate_after(2)
    run.log({"step": 3, "loss": 0.3})
    assert [r["step"] for r in run.records()] == [1, 2, 3]
    assert run.metrics_path.read_text().endswith('"loss": 0.3}\n')


def test_a_damaged_line_before_the_last_is_refused_by_name(tmp_path):
    run = RunDirectory(tmp_path)
    run.metrics_path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl is corrupt: line 2 is not JSON"):
        run.records()
    run.metrics_path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"line 2 is not a record with a step"):
        run.records()


def test_state_for_sweeps(tmp_path):
    run = RunDirectory(tmp_path)
    assert run.state(4, needs_final_eval=True) == "new"
    run.start("{}\n")
    run.log({"step": 2, "eval": {}})
    run.save_checkpoint(tiny_model(), {"step": 2})
    assert run.state(4, needs_final_eval=True) == "partial"
    run.log({"step": 4, "eval": {}})
    assert run.state(4, needs_final_eval=False) == "done"
    assert run.state(4, needs_final_eval=True) == "partial"
    run.log({"step": 4, "final_eval": {}})
    assert run.state(4, needs_final_eval=True) == "done"


class Crash(Exception):
    pass


def _crash_on_operation(monkeypatch, number: int) -> list[str]:
    """Make the `number`-th file operation of a checkpoint save crash (-1: none); return the operations seen.
    A crashing removal first removes one file, as a process killed in the middle of it would."""
    import lmsleep.rundir as rundir

    seen: list[str] = []

    def crashing(name, real, partial=None):
        def operation(*args, **kwargs):
            seen.append(name)
            if len(seen) - 1 == number:
                if partial is not None:
                    partial(*args)
                raise Crash(name)
            return real(*args, **kwargs)
        return operation

    def remove_one_file(path, *args):
        files = sorted(Path(path).glob("*")) if Path(path).is_dir() else []
        if files:
            files[0].unlink()

    monkeypatch.setattr(rundir, "save_model", crashing("save_model", rundir.save_model))
    monkeypatch.setattr(rundir, "save_tensors", crashing("save_tensors", rundir.save_tensors))
    monkeypatch.setattr(rundir.shutil, "rmtree", crashing("rmtree", shutil.rmtree, remove_one_file))
    monkeypatch.setattr(Path, "rename", crashing("rename", Path.rename))
    return seen


def test_a_crash_at_any_step_of_a_checkpoint_save_leaves_a_checkpoint(tmp_path, monkeypatch):
    models = [tiny_model(seed=seed) for seed in range(3)]
    with monkeypatch.context() as patch:
        operations = _crash_on_operation(patch, -1)
        reference = RunDirectory(tmp_path / "reference")
        reference.save_checkpoint(models[0], {"step": 1})
        operations.clear()
        reference.save_checkpoint(models[1], {"step": 2})
    assert operations == ["rmtree", "save_model", "save_tensors", "rmtree", "rename", "rename", "rmtree"]
    for number in range(len(operations)):
        run = RunDirectory(tmp_path / f"crash-{number}")
        run.save_checkpoint(models[0], {"step": 1})
        with monkeypatch.context() as patch:
            _crash_on_operation(patch, number)
            with pytest.raises(Crash):
                run.save_checkpoint(models[1], {"step": 2})
        model, state = run.load_checkpoint()
        assert state["step"] in (1, 2)
        torch.testing.assert_close(model.state_dict(), models[state["step"] - 1].state_dict(), rtol=0, atol=0)
        run.save_checkpoint(models[2], {"step": 3})  # the next save cleans up and succeeds
        model, state = run.load_checkpoint()
        assert state["step"] == 3 and sorted(p.name for p in run.path.iterdir()) == ["checkpoint"]


def test_an_old_pickled_training_state_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # unpickling this object creates the marker file
            return open, (str(marker), "w")

    checkpoint = tmp_path / "run" / "checkpoint"
    checkpoint.mkdir(parents=True)
    torch.save({"step": 3, "payload": Payload()}, checkpoint / PICKLED_TRAINING_FILE)
    assert RunDirectory(tmp_path / "run").state(30, needs_final_eval=False) == "partial"  # a sweep tries --resume
    with pytest.raises(ValueError, match=r"training.pt was written by an older lmsleep as a pickle; it is not "
                                         r"loaded because unpickling a file can run arbitrary code"):
        Trainer(tiny_train_config(), tmp_path / "run", resume=True, progress=False)
    assert not marker.exists()
    torch.load(checkpoint / PICKLED_TRAINING_FILE, weights_only=False)  # the file was truly malicious
    assert marker.exists()


def _train(out: str, cfg_json: str) -> None:
    """A training process as a sweep runs it: resume when there is a checkpoint, else start afresh."""
    cfg = TrainConfig.from_json(cfg_json)
    resume = RunDirectory(out).state(cfg.steps, bool(cfg.final_eval_passes)) == "partial"
    Trainer(cfg, out, resume=resume, progress=False).run()


def _last_step(run: RunDirectory) -> int:
    try:
        return max((r["step"] for r in run.records()), default=0)
    except (ValueError, FileNotFoundError):  # caught mid-rewrite
        return 0


def test_a_run_sigkilled_again_and_again_resumes_and_ends_like_an_uninterrupted_one(tmp_path):
    cfg = tiny_train_config()
    straight = Trainer(cfg, tmp_path / "straight", progress=False).run()
    per_step = straight[-1]["wall_s"] / cfg.steps
    context = multiprocessing.get_context("fork")  # a real process, without paying for a fresh interpreter
    run, delays = RunDirectory(tmp_path / "killed"), random.Random(0)
    kills = mid_save = 0
    for _ in range(10):
        if run.state(cfg.steps, True) == "done":
            break
        logged = _last_step(run)
        process = context.Process(target=_train, args=(str(run.path), cfg.to_json()))
        process.start()
        deadline = time.monotonic() + 60
        while process.is_alive() and _last_step(run) <= logged and time.monotonic() < deadline:
            time.sleep(0.002)  # until it trains past what was logged before, then kill it within a few steps
        time.sleep(delays.uniform(0, 3 * per_step))
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.join()
        mid_save += (run.path / "checkpoint.new").exists() or (run.path / "checkpoint.old").exists()
        if run.has_checkpoint():
            assert run.load_checkpoint()[1]["step"] <= cfg.steps  # whatever the moment, it loads
    process = context.Process(target=_train, args=(str(run.path), cfg.to_json()))
    process.start()
    process.join(timeout=120)
    assert process.exitcode == 0 and run.state(cfg.steps, True) == "done"
    assert kills >= 5
    print(f"{kills} kills, {mid_save} left a checkpoint swap unfinished")

    def without_wall(directory):
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in RunDirectory(directory).records()]

    assert without_wall(run.path) == without_wall(tmp_path / "straight")
    for name in ("model.safetensors", TRAINING_FILE):
        straight, killed = (load_file(str(d / "checkpoint" / name)) for d in (tmp_path / "straight", run.path))
        assert straight.keys() == killed.keys()
        for key in straight:  # weights, optimiser moments and RNG state, bit for bit
            assert torch.equal(straight[key], killed[key]), (name, key)
    assert json.loads((run.path / "train.json").read_text()) == json.loads(cfg.to_json())


def test_the_report_reads_runs_through_the_run_directory(tmp_path):
    from lmsleep.report import load_runs

    run = RunDirectory(tmp_path / "sleep-N1-s0")
    run.start(tiny_train_config(steps=4).to_json())
    run.log({"step": 4, "eval": {"N2": {"exact": 0.5}}})
    with open(run.metrics_path, "a") as handle:
        handle.write('{"step": 5, "ev')  # a run killed mid-write still reports what it logged
    (runs,) = load_runs(tmp_path)
    assert runs["name"] == "sleep-N1-s0" and [e["step"] for e in runs["evals"]] == [4] and runs["steps"] == 4
    run.config_path.write_text('{"steps": ')
    with pytest.raises(ValueError, match="train.json is not valid JSON"):
        load_runs(tmp_path)
