"""`lmsleep sweep`: run a grid of training jobs (task × model × N × seed) from a small JSON file, resumably.

A sweep file:

    {"name": "rule110-quick",
     "base": {TrainConfig fields: "task", "task_options", "model", "steps", "batch_size", ...},
     "grid": {"model": ["sleep", "matched-blocks"], "passes": [1, 4], "seed": [0, 1, 2],
              "task_options.t_min": [3, 4]},          # any TrainConfig field, dotted for nested ones
     "final_eval_passes": [1, 2, 3, 4, 5, 6, 7, 8]}  # N′ at which sleep models are evaluated at the end

Model kinds: "sleep" (the hybrid at N = passes), "full-attention" and "sliding-window" (transformers of
the same width and depth; passes ignored), "matched-blocks" (an N = 1 hybrid with `passes`× the blocks)
and "matched-steps" (an N = 1 hybrid trained `passes`× the steps): the compute-matched baselines.
Each run lives in OUT/<run name>/; a finished run is skipped, an interrupted one resumed.
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import validate
from .config import MODEL_KINDS, model_fields
from .io import write_text
from .rundir import RunDirectory
from .train import TrainConfig, Trainer

# The model kinds, plus one kind of training: "matched-steps", an N = 1 sleep model trained `passes`× the steps.
SWEEP_KINDS = (*MODEL_KINDS, "matched-steps")
BASELINES = ("full-attention", "sliding-window")  # they do not loop: one run whatever N

QUICK = {  # the built-in default: the README's main job
    "name": "rule110-quick",
    "base": {
        "task": "rule110", "task_options": {"strings": 4, "bits": 8, "t_min": 3, "t_max": 3},
        # Two blocks (one attention, one fast-weight): at N = 1 too shallow for t = 3 in this budget, so
        # the depth that sleep passes add shows (results/paper1.md, section 1).
        "model": {"layout": "AG", "d_model": 64}, "steps": 1000, "batch_size": 32, "warmup": 30,
        "eval_every": 100, "eval_size": 256, "log_every": 50, "checkpoint_every": 100,
    },
    "grid": {"model": ["sleep"], "passes": [1, 4], "seed": [0]},
    "final_eval_passes": [1, 2, 4, 8],
}


def load_sweep(path: str | None) -> dict:
    if path is None:
        return copy.deepcopy(QUICK)
    try:
        sweep = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"sweep file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"sweep file {path} is not valid JSON: {error}") from None
    check_sweep(sweep, f"sweep file {path}")
    return sweep


def check_sweep(sweep, what: str) -> None:
    """The shape of a sweep (its runs' values are checked by TrainConfig when the grid is expanded)."""
    if not isinstance(sweep, dict):
        raise validate.WrongType(f"{what} must be a JSON object, got {type(sweep).__name__}")
    unknown = sorted(set(sweep) - {"name", "base", "grid", "final_eval_passes", "description"})
    if unknown:
        raise ValueError(f"{what} has unknown fields {unknown}; known: name, base, grid, final_eval_passes, description")
    for key in ("base", "grid"):
        if not isinstance(sweep.get(key), dict):
            raise ValueError(f"{what} needs an object {key!r}")
    for key, values in sweep["grid"].items():
        if isinstance(values, list) and not values:
            raise ValueError(f"{what}: grid {key!r} is an empty list (no run would be made)")
    if not isinstance(sweep.get("name", ""), str):
        raise validate.WrongType(f"{what}: name must be a string, got {sweep['name']!r}")
    if sweep.get("final_eval_passes") is not None:
        validate.int_list(f"{what}: final_eval_passes", sweep["final_eval_passes"])


def _set(config: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for name in parents:
        config = config.setdefault(name, {})
        if not isinstance(config, dict):
            raise validate.WrongType(f"sweep grid key {dotted!r}: {name} is not an object")
    config[leaf] = value


def run_config(sweep: dict, point: dict) -> tuple[str, TrainConfig]:
    """The name and TrainConfig of one grid point."""
    config = copy.deepcopy(sweep["base"])
    kind = validate.one_of("sweep grid model", point.get("model", "sleep"), SWEEP_KINDS)
    passes = validate.positive_int("sweep grid passes", point.get("passes", 1))
    for key, value in point.items():
        if key not in ("model", "passes"):
            _set(config, key, value)
    if not isinstance(config.get("model", {}), dict):
        raise validate.WrongType(f"sweep base model must be an object of SleepConfig fields, got {config['model']!r}")
    final_passes = None if kind in BASELINES else sweep.get("final_eval_passes")
    if kind == "matched-steps":
        config["model"] = model_fields("sleep", config.get("model", {}), passes=1)
        steps = validate.positive_int("sweep base steps", config.get("steps", TrainConfig().steps))
        config["steps"] = steps * passes
        for key in ("eval_every", "checkpoint_every", "log_every"):
            if key in config:
                config[key] = validate.positive_int(f"sweep base {key}", config[key]) * passes
        for stage in config.get("curriculum") or []:  # the data stages stretch with the schedule
            if isinstance(stage, dict) and isinstance(stage.get("until"), int):  # TrainConfig checks the rest
                stage["until"] = stage["until"] * passes
    else:
        config["model"] = model_fields(kind, config.get("model", {}), passes)
    config["final_eval_passes"] = final_passes
    extras = "-".join(f"{k.split('.')[-1]}{v}" for k, v in point.items() if k not in ("model", "passes", "seed"))
    name = kind if kind in BASELINES else f"{kind}-N{passes}"
    name = "-".join(part for part in (name, extras, f"s{point.get('seed', 0)}") if part)
    return name, validate.from_dict(TrainConfig, config, f"sweep run {name}")


def expand(sweep: dict) -> list[tuple[str, TrainConfig]]:
    check_sweep(sweep, f"sweep {sweep.get('name', '')!r}" if isinstance(sweep, dict) else "sweep")
    grid = sweep["grid"]
    keys = list(grid)
    runs, seen = [], set()
    for values in itertools.product(*(grid[k] if isinstance(grid[k], list) else [grid[k]] for k in keys)):
        point = dict(zip(keys, values))
        if point.get("model") in BASELINES:
            point["passes"] = 1  # baselines do not loop: one run, whatever N
        name, cfg = run_config(sweep, point)
        if name not in seen:
            seen.add(name)
            runs.append((name, cfg))
    return runs


def run_state(directory: Path, cfg: TrainConfig) -> str:
    """'done', 'partial' (a checkpoint to resume) or 'new'."""
    return RunDirectory(directory).state(cfg.steps, needs_final_eval=bool(cfg.final_eval_passes))


def estimate_seconds(cfg: TrainConfig, probe_steps: int = 2) -> float:
    """Time a couple of training steps of this run in a scratch directory, scaled to the whole run."""
    import tempfile

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            trainer = Trainer(cfg, scratch, progress=False)
            trainer.train_step()  # warm-up
            started = time.perf_counter()
            for _ in range(probe_steps):
                trainer.train_step()
            per_step = (time.perf_counter() - started) / probe_steps
    finally:
        torch.set_num_threads(threads)
    evals = cfg.steps // cfg.eval_every + len(cfg.final_eval_passes or [])
    return per_step * cfg.steps * 1.05 + evals * per_step * cfg.eval_size / cfg.batch_size / 3


def run_sweep(sweep: dict, out: str | os.PathLike, jobs: int = 2, estimate_only: bool = False) -> list[str]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "sweep.json", json.dumps(sweep, indent=2) + "\n")
    runs = expand(sweep)
    todo = [(name, cfg) for name, cfg in runs if run_state(out / name, cfg) != "done"]
    print(f"sweep {sweep.get('name', '')}: {len(runs)} runs, {len(runs) - len(todo)} already done, {len(todo)} to run "
          f"with {jobs} in parallel (1 thread each)")
    if todo:
        seconds = [estimate_seconds(cfg) for _, cfg in todo]
        # Longest first, so that short runs fill the lanes at the end rather than a long one running alone.
        order = sorted(range(len(todo)), key=lambda i: -seconds[i])
        todo, seconds = [todo[i] for i in order], [seconds[i] for i in order]
        for (name, _), s in zip(todo, seconds):
            print(f"  {name}: about {s / 60:.1f} min")
        print(f"estimated time: about {_parallel_time(seconds, jobs) / 60:.0f} min")
    if estimate_only:
        return [name for name, _ in runs]
    from tqdm import tqdm

    pending = list(todo)
    active: list[tuple[str, subprocess.Popen]] = []
    failed = []
    with tqdm(total=len(todo), desc="sweep", unit="run") as bar:
        while pending or active:
            while pending and len(active) < jobs:
                name, cfg = pending.pop(0)
                active.append((name, _launch(out / name, cfg)))
            time.sleep(0.5)
            for item in list(active):
                name, process = item
                if process.poll() is not None:
                    active.remove(item)
                    if process.returncode != 0:
                        failed.append(name)
                        tqdm.write(f"run {name} failed (exit {process.returncode}); see {out / name / 'train.log'}")
                    bar.update(1)
    if failed:
        raise RuntimeError(f"{len(failed)} runs failed: {failed}; run the sweep again to resume them")
    return [name for name, _ in runs]


def _launch(directory: Path, cfg: TrainConfig) -> subprocess.Popen:
    directory.mkdir(parents=True, exist_ok=True)
    config_file = RunDirectory(directory).sweep_config_path
    write_text(config_file, cfg.to_json() + "\n")
    command = [sys.executable, "-m", "lmsleep.cli", "train", "--config", str(config_file), "--out", str(directory),
               "--no-progress", "--threads", "1"]
    if run_state(directory, cfg) == "partial":
        command.append("--resume")
    log = open(directory / "train.log", "a")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _parallel_time(seconds: list[float], jobs: int) -> float:
    lanes = [0.0] * jobs
    for s in seconds:  # runs start in order on the first free lane
        lanes[lanes.index(min(lanes))] += s
    return max(lanes)
