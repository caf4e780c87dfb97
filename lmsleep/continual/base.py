"""Pretrained bases, trained once and cached: `pretrained` for any world's TrainConfig, `pretrained_base`
for the `facts` world (spec: sleep-continual.md, Our
reproduction; issue 13, "Each world comes with a pretrained base").

The base is pretrained on in-context examples (passage, then questions; loss on the answers) about names
of pool 1 only, so every world a learner is tested on (pool 2, tasks.facts.world) holds new entities.
A base that cannot read is useless to the learner (consolidation cannot beat its teacher), so its
held-out in-context accuracy on new entities is measured and returned beside it; closed-book accuracy
on the same new entities is ~chance (1 / Options.values): it has never seen them.

    model, report = pretrained_base()      # trains (~2 minutes on 2 cores) or loads from the cache

The cache entry is a model directory (lmsleep.io) under $LMSLEEP_CACHE_DIR/bases/ or ~/.cache/lmsleep/bases/,
named by a hash of everything that determines the weights (train config, torch version); `report.json`
beside it holds the accuracies measured when it was trained. Whether a base is cached is known before
anything runs (`cached`), and so is about how long training it takes (`training_seconds`): a benchmark
counts a first-time base in the estimate it prints up front.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from .. import validate
from ..io import load_model, save_model, write_text
from ..config import SleepConfig
from ..model import SleepLM
from ..tasks import batch, facts, score
from ..train import TrainConfig, Trainer

# Chosen by measurement (results/facts-base.md).
OPTIONS = facts.Options(entities=2, attributes=3, values=8, questions=4)
MODEL_FIELDS = {"layout": "AAA", "eviction": "none", "d_model": 64}
TRAINING = {"batch_size": 32, "lr": 0.008, "adamw_lr": 0.012, "warmup": 30, "min_lr_ratio": 1.0}
STEPS = 600
HELD_OUT_SEED = 2**31 - 3  # passages about pool-2 entities, never trained on
HELD_OUT_SIZE = 512
REPORT_FILE = "report.json"
# Training seconds per estimated training FLOP (SleepLM.estimate_flops) on 2 shared cores, one thread:
# 3.5e-11 to 5.2e-11 over the facts (2 and 4 levels), languages and puzzles bases this machine trained.
SECONDS_PER_FLOP = 5e-11


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where bases are kept: `cache_dir`, else $LMSLEEP_CACHE_DIR/bases, else ~/.cache/lmsleep/bases."""
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get("LMSLEEP_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "lmsleep") / "bases"


def base_config(options: facts.Options = OPTIONS, model_fields: dict | None = None, steps: int = STEPS,
                seed: int = 0) -> TrainConfig:
    """The TrainConfig of a base: task facts on pool 1, constant learning rate after warm-up."""
    if not isinstance(options, facts.Options):
        raise TypeError(f"options must be a tasks.facts.Options, got {type(options).__name__}")
    if options.pool != 1 or options.context != 1:
        raise ValueError(f"a base is pretrained in context on name pool 1 (options.context = 1, options.pool = 1), "
                         f"got context = {options.context}, pool = {options.pool}")
    if model_fields is not None and not isinstance(model_fields, dict):
        raise TypeError(f"model_fields must be a dict of SleepConfig fields, got {type(model_fields).__name__}")
    model = dict(MODEL_FIELDS if model_fields is None else model_fields)
    validate.positive_int("steps", steps)
    return TrainConfig(task="facts", task_options=asdict(options), model=model, steps=steps, seed=seed,
                       eval_every=steps, eval_size=64, checkpoint_every=steps, log_every=max(1, steps // 20),
                       **TRAINING)


def cache_key(cfg: TrainConfig) -> str:
    """A short hash of what determines a base's weights."""
    from ..tasks import vocabulary

    identity = {"train": json.loads(cfg.to_json()), "torch": torch.__version__.split("+")[0],
                "vocabulary": vocabulary(cfg.task).identity}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def measure(model: SleepLM, options: facts.Options = OPTIONS, n: int = HELD_OUT_SIZE) -> dict:
    """Answer accuracy on new entities (name pool 2): in context (passage then one question) and closed book.
    One question per example: with several, a later answer can be guessed by elimination from the earlier
    ones (with 2 entities and every fact asked, the last answers were right 100% while the first was at
    chance), which is not reading."""
    model.eval()
    result = {}
    for name, context in (("in_context", 1), ("closed_book", 0)):
        held_out = facts.Options(**{**asdict(options), "pool": 2, "context": context, "questions": 1})
        data = batch(facts.generate(held_out, n, HELD_OUT_SEED))
        predicted = torch.cat([model(data["tokens"][i : i + 128]).argmax(-1) for i in range(0, n, 128)])
        scores = score(predicted, data)
        result[name] = round(scores["answer"], 4)
        result[f"{name}_value_first"] = round(scores["per_bucket"].get(1, float("nan")), 4)
    result["chance"] = round(1 / options.values, 4)
    return result


def pretrained_base(options: facts.Options = OPTIONS, model_fields: dict | None = None,
                    cache_dir: str | os.PathLike | None = None, steps: int = STEPS, seed: int = 0,
                    progress: bool = True) -> tuple[SleepLM, dict]:
    """The base model for `options` (in eval mode) and its report {"in_context", "closed_book", ..., "steps",
    "train_seconds", "cache"}: loaded from the cache when this exact config was trained before, else
    trained (lmsleep.train.Trainer), measured and cached. `model_fields` (SleepConfig fields, passed through
    unchanged) replaces MODEL_FIELDS; the task fills vocab_size, vocabulary and window."""
    cfg = base_config(options, model_fields, steps, seed)
    model, report = pretrained(cfg, lambda m: measure(m, options), cache_dir, progress)
    if progress:
        print(f"base {'loaded from' if report['loaded'] else 'trained in ' + str(report['train_seconds']) + ' s and cached in'} "
              f"{report['cache']}: in-context {report['in_context']:.1%}, closed-book {report['closed_book']:.1%} "
              f"on new entities")
    return model, report


def cache_entry(cfg: TrainConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the base `cfg` trains is (or will be) cached."""
    return cache_root(cache_dir) / cache_key(cfg)


def cached(cfg: TrainConfig, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether the base `cfg` trains is in the cache (a complete entry: its report is written last)."""
    return (cache_entry(cfg, cache_dir) / REPORT_FILE).is_file()


def training_seconds(cfg: TrainConfig) -> float:
    """About how long training the base `cfg` takes on 2 cores (its steps × batch × the model's estimated
    FLOPs per full-window example × SECONDS_PER_FLOP)."""
    config = cfg.model_config()
    per_example = SleepLM(config).estimate_flops([1] * config.window)
    return cfg.steps * cfg.batch_size * per_example * SECONDS_PER_FLOP


def with_requested_gating(model: SleepLM, cfg: TrainConfig) -> SleepLM:
    """A cached base's experts take the gating `cfg` asks for (its model fields, else the library's default):
    the weights do not depend on it (a base trains with its pools masked), but a base cached by an older
    lmsleep recorded the gating of its day ("sum")."""
    if model.config.memory_levels:
        from .levels import set_expert_gating

        set_expert_gating(model, cfg.model.get("expert_gating", SleepConfig().expert_gating))
    return model


def pretrained(cfg: TrainConfig, measure_fn, cache_dir: str | os.PathLike | None = None,
               progress: bool = True) -> tuple[SleepLM, dict]:
    """Any world's base: the model `cfg` trains (in eval mode) and its report (what `measure_fn(model)`
    returned when it was trained, plus "steps", "train_seconds", "config", "cache", "loaded"), loaded from
    the cache when this exact config was trained before, else trained, measured and cached."""
    entry = cache_entry(cfg, cache_dir)
    if cached(cfg, cache_dir):
        report = json.loads((entry / REPORT_FILE).read_text())
        return with_requested_gating(load_model(entry).eval(), cfg), {**report, "cache": str(entry), "loaded": True}
    entry.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".train-", dir=entry.parent) as run:
        trainer = Trainer(cfg, run, progress=progress)
        trainer.run()
        model = trainer.model.eval()
        report = {**measure_fn(model), "steps": cfg.steps, "train_seconds": round(trainer.wall, 1),
                  "config": json.loads(cfg.to_json())}
        staging = Path(run) / "base"
        save_model(model, staging)
        write_text(staging / REPORT_FILE, json.dumps(report, indent=2) + "\n")  # last: it marks a complete entry
        if not (entry / REPORT_FILE).is_file():  # another process may have finished the same base meanwhile
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(staging, entry)
    return model, {**report, "cache": str(entry), "loaded": False}
