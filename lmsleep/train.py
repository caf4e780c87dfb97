"""Training loop of the paper: the model's forward is the training algorithm; loss on answer tokens only.

Muon for 2-D hidden matrices, AdamW for embeddings, the head, norms, gates, conv and biases (or AdamW for
all); linear warm-up then cosine decay; gradient clipping; a step with non-finite loss or gradients is
skipped and logged. Batches are a pure function of (seed, step), so a run resumed from a checkpoint, or
split over several processes (torchrun, gloo), sees exactly the batches of an uninterrupted 1-process run.

Files in the run directory (lmsleep/rundir.py owns them):
    metrics.jsonl   one JSON object per log/eval event (step, tokens, wall time, FLOPs, losses, accuracies)
    checkpoint/     model (safetensors + config.json) and training.safetensors (optimisers, schedulers, RNG, step)
    train.json      the TrainConfig of the run
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from . import validate
from .config import SleepConfig
from .io import config_diff, load_model
from .model import SleepLM, build_model
from .rundir import RunDirectory
from .tasks import TASKS, batch, check_vocabulary, score, vocabulary

OPTIMIZERS = ("muon", "adamw")
EVAL_SEED = 2**31 - 1  # the held-out set; training batch seeds are derived from (seed, step) below


@dataclass
class TrainConfig:
    task: str = "rule110"
    task_options: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)  # SleepConfig fields; vocab_size, vocabulary, window from the task
    steps: int = 300
    batch_size: int = 32
    optimizer: str = "muon"
    lr: float = 2e-3  # Muon (hidden matrices)
    adamw_lr: float = 3e-3  # AdamW (everything else; all parameters when optimizer = "adamw")
    weight_decay: float = 0.0
    warmup: int = 30
    min_lr_ratio: float = 0.1
    clip: float = 1.0
    eval_every: int = 100
    eval_size: int = 256
    eval_passes: list[int] | None = None  # evaluate at these N′ too (default: the model's N)
    final_eval_passes: list[int] | None = None  # after the last step, evaluate at these N′ (e.g. 1..8)
    log_every: int = 10
    checkpoint_every: int = 100
    seed: int = 0
    activation_checkpointing: bool = False
    tensorboard: bool = False
    # torch.compile the loss (forward and backward; optimisers stay eager). Opt-in: at the Rule 110 shapes it
    # measured 1.4x per step on a CPU after 2.5-3 minutes of compiling, more than a 1,000-step run saves
    # (results/benchmarks.md, section 6).
    compile: bool = False
    # Easier data first: [{"until": step, "task_options": {overrides}}, ...] with increasing "until"; a training
    # step s < until uses the first such stage's overrides on top of task_options, later steps task_options
    # alone. Held-out evaluation always uses task_options. Example lengths must not change between stages.
    curriculum: list[dict] | None = None
    # Fine-tuning: a model directory (a run's checkpoint/, or the run directory holding it) whose weights
    # start this run. Its architecture must be the run's, except N (sleep_passes). Optimisers start fresh.
    init_from: str | None = None

    def __post_init__(self) -> None:
        validate.check_types(self)
        validate.one_of("TrainConfig.task", self.task, sorted(TASKS))
        validate.one_of("TrainConfig.optimizer", self.optimizer, OPTIMIZERS)
        for name in ("steps", "batch_size", "eval_every", "eval_size", "log_every", "checkpoint_every"):
            validate.positive_int(f"TrainConfig.{name}", getattr(self, name))
        validate.non_negative_int("TrainConfig.warmup", self.warmup)
        validate.integer("TrainConfig.seed", self.seed)
        for name in ("lr", "adamw_lr", "clip"):
            validate.positive_number(f"TrainConfig.{name}", getattr(self, name))
        validate.number("TrainConfig.weight_decay", self.weight_decay, 0)
        validate.number("TrainConfig.min_lr_ratio", self.min_lr_ratio, 0, 1)
        if self.init_from is not None and not self.init_from:
            raise ValueError(f"TrainConfig.init_from must be a model directory path, got {self.init_from!r}")
        self.task_options_object()  # validates the task options
        self._check_curriculum()
        model = self.model_config()  # validates the model fields
        for name in ("eval_passes", "final_eval_passes"):
            passes = validate.int_list(f"TrainConfig.{name}", getattr(self, name) or [], low=1)
            if model.eviction == "none" and any(n != 1 for n in passes):
                raise ValueError(f"TrainConfig.{name}: a model with eviction='none' only runs at N = 1")

    def task_module(self):
        return TASKS[self.task]

    def _check_curriculum(self) -> None:
        if self.curriculum is None:
            return
        base = self.task_module().generate(self.task_options_object(), 1, 0)[0]
        previous = 0
        for i, stage in enumerate(self.curriculum):
            if not isinstance(stage, dict) or set(stage) != {"until", "task_options"} or not isinstance(
                    stage["task_options"], dict):
                raise ValueError(
                    f"TrainConfig.curriculum[{i}] must be {{'until': step, 'task_options': {{...}}}}, got {stage!r}"
                )
            until = validate.integer(f"TrainConfig.curriculum[{i}].until (increasing, at most steps)",
                                     stage["until"], previous + 1, self.steps)
            previous = until
            options = self._options({**self.task_options, **stage["task_options"]}, f"TrainConfig.curriculum[{i}].task_options")
            example = self.task_module().generate(options, 1, 0)[0]
            if len(example) != len(base) or sum(example.loss_mask) != sum(base.loss_mask):
                raise ValueError(
                    f"TrainConfig.curriculum[{i}]: its examples have {len(example)} tokens and "
                    f"{sum(example.loss_mask)} answer positions, the task's {len(base)} and {sum(base.loss_mask)}; "
                    "stages may change difficulty, not the layout"
                )

    def stage_options(self, step: int):
        """The task options of training step `step` (0-based): its curriculum stage's, else task_options."""
        for stage in self.curriculum or []:
            if step < stage["until"]:
                return self._options({**self.task_options, **stage["task_options"]}, "task options")
        return self.task_options_object()

    def task_options_object(self):
        return self._options(self.task_options, "TrainConfig.task_options")

    def _options(self, values: dict, what: str):
        return validate.from_dict(self.task_module().Options, values, f"{what} of task {self.task!r}")

    def model_config(self) -> SleepConfig:
        vocab = vocabulary(self.task)
        if self.model.get("vocabulary", vocab.identity) != vocab.identity:
            raise ValueError(f"TrainConfig.model.vocabulary is {self.model['vocabulary']!r}, but task {self.task!r} "
                             f"is written in vocabulary {vocab.identity!r} (leave it out: the task fills it)")
        fields_ = {"vocab_size": vocab.size, "vocabulary": vocab.identity,
                   "window": self.task_options_object().window, **self.model}
        return validate.from_dict(SleepConfig, fields_, "TrainConfig.model")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, what: str = "train config") -> "TrainConfig":
        return validate.from_json(cls, text, what)


def batch_seed(seed: int, step: int) -> int:
    """The data seed of a training step: distinct per (seed, step), never the held-out EVAL_SEED."""
    return (seed * 1_000_003 + step) % (2**31 - 2)


def build_optimizers(model: SleepLM, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    if cfg.optimizer == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=cfg.adamw_lr, weight_decay=cfg.weight_decay)]
    groups = model.optimizer_groups()
    return [
        torch.optim.Muon(groups["muon"], lr=cfg.lr, weight_decay=cfg.weight_decay),
        torch.optim.AdamW(groups["adamw"], lr=cfg.adamw_lr, weight_decay=cfg.weight_decay),
    ]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to min_lr_ratio at the last step."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def initial_weights(path: str | os.PathLike, config: SleepConfig) -> dict[str, torch.Tensor]:
    """The weights of the model saved at `path` (a model directory, or a run directory with checkpoint/),
    checked to fit `config` up to N (a model trained at one N may be fine-tuned at another), its vocabulary first."""
    directory = Path(path)
    if not (directory / "config.json").is_file() and (directory / "checkpoint" / "config.json").is_file():
        directory = directory / "checkpoint"
    if not directory.is_dir():
        raise FileNotFoundError(f"init_from: no model directory at {path}")
    source = load_model(directory)
    check_vocabulary(source.config.vocabulary, config.vocabulary, model=f"init_from: the model at {directory}",
                     user="this run's task")
    at_this_n = source.config.replace(sleep_passes=config.sleep_passes)
    if at_this_n != config:
        raise ValueError(f"init_from: the model at {directory} has another architecture than this run's: "
                         f"{config_diff(at_this_n, config)}")
    return source.state_dict()


class Trainer:
    """Runs one training job in `out_dir`; `run()` returns the list of logged metric records."""

    def __init__(self, cfg: TrainConfig, out_dir: str | os.PathLike, resume: bool = False, progress: bool = True):
        self.cfg, self.out = cfg, Path(out_dir)
        self.run_dir = RunDirectory(out_dir)
        self.progress = progress
        self.rank, self.world = _distributed()
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {self.world}")
        self.task, self.options = cfg.task_module(), cfg.task_options_object()
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model_config())  # a SleepLM, or a transformers hybrid (config.architecture)
        if cfg.init_from and not resume:  # a resumed run takes its weights from its own checkpoint
            self.model.load_state_dict(initial_weights(cfg.init_from, self.model.config))
        self.optimizers = build_optimizers(self.model, cfg)
        self.schedulers = [
            torch.optim.lr_scheduler.LambdaLR(o, lambda step: lr_factor(step, cfg)) for o in self.optimizers
        ]
        self.step, self.wall, self.skipped = 0, 0.0, 0
        self.records: list[dict] = []
        held_out = self.task.generate(self.options, cfg.eval_size, EVAL_SEED)
        self.eval_batch = batch(held_out)
        example = held_out[0]  # every example of a task has the same layout
        self.flops_per_example = self.model.estimate_flops(example.loss_mask)
        self.tokens_per_example = len(example)
        if resume:
            self._resume()
        elif self.rank == 0:
            self.run_dir.start(cfg.to_json() + "\n")
        loss = _Loss(self.model, cfg.activation_checkpointing)
        if cfg.compile:
            # torch 2.13: a warm AOTAutograd cache replays an aliased output of this model with a garbage
            # shape (RuntimeError: shape '[94795713615640, ...]' is invalid) on the next run, so it is off.
            torch._functorch.config.enable_autograd_cache = False
            loss = torch.compile(loss)
        # DDP averages gradients over processes; its hooks run on the wrapper's forward, so wrap the loss.
        self.loss_fn = DistributedDataParallel(loss) if self.world > 1 else loss
        self.writer = self._tensorboard() if cfg.tensorboard and self.rank == 0 else None

    # ----- one step -----

    def _train_batch(self) -> dict[str, torch.Tensor]:
        options = self.cfg.stage_options(self.step) if self.cfg.curriculum else self.options
        examples = self.task.generate(options, self.cfg.batch_size, batch_seed(self.cfg.seed, self.step))
        return batch(examples[self.rank :: self.world])

    def train_step(self) -> dict:
        self.model.train()
        data = self._train_batch()
        loss = self.loss_fn(data["tokens"], data["targets"], data["loss_mask"])
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        loss_value = _mean_over_processes(loss.detach(), self.world)
        record = {"step": self.step, "loss": loss_value, "grad_norm": float(grad_norm)}
        if not (math.isfinite(loss_value) and math.isfinite(float(grad_norm))):
            self.skipped += 1
            record["skipped"] = "non-finite loss or gradient"
            for o in self.optimizers:
                o.zero_grad(set_to_none=True)
        else:
            for o in self.optimizers:
                o.step()
        with warnings.catch_warnings():  # a skipped step still advances the schedule, on purpose
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
            for s in self.schedulers:
                s.step()
        self.step += 1
        return record

    # ----- evaluation -----

    @torch.no_grad()
    def evaluate(self, passes_list: list[int] | None = None) -> dict:
        self.model.eval()
        data = self.eval_batch
        results = {}
        for passes in passes_list or self.cfg.eval_passes or [self.model.config.sleep_passes]:
            predicted, token_losses = [], []
            for start in range(0, data["tokens"].shape[0], 64):
                part = {k: v[start : start + 64] for k, v in data.items()}
                logits = self.model(part["tokens"], part["loss_mask"], passes=passes)
                token_losses.append(torch.nn.functional.cross_entropy(
                    logits.transpose(1, 2), part["targets"], reduction="none"))  # [n, T]
                predicted.append(logits.argmax(-1))
            scores = score(torch.cat(predicted), data)
            token_losses = torch.cat(token_losses)
            mask = data["loss_mask"].bool()
            scores["loss"] = token_losses[mask].mean().item()
            scores["loss_per_bucket"] = {
                int(b): token_losses[mask & (data["bucket"] == b)].mean().item() for b in data["bucket"][mask].unique()
            }
            results[f"N{passes}"] = scores
        return results

    # ----- the loop -----

    def run(self) -> list[dict]:
        cfg = self.cfg
        bar = None
        if self.progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.task}", unit="step", dynamic_ncols=True)
        started = time.perf_counter() - self.wall
        postfix: dict[str, str] = {}
        while self.step < cfg.steps:
            record = self.train_step()
            self.wall = time.perf_counter() - started
            done = self.step
            if done % cfg.log_every == 0 or "skipped" in record or done == cfg.steps:
                self._log({**record, "step": done, **self._counters(), "lr": self.schedulers[0].get_last_lr()[0]})
            if done % cfg.eval_every == 0 or done == cfg.steps:
                evaluation = self.evaluate()
                self._log({"step": done, **self._counters(), "eval": evaluation})
                main = evaluation[f"N{cfg.eval_passes[0] if cfg.eval_passes else self.model.config.sleep_passes}"]
                postfix["exact"] = f"{main['exact']:.3f}"
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                self.save_checkpoint()
            if bar is not None:
                postfix["loss"] = f"{record['loss']:.3f}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
        if bar is not None:
            bar.close()
        if cfg.final_eval_passes and not any("final_eval" in r for r in self.records):
            self._log({"step": self.step, **self._counters(), "final_eval": self.evaluate(cfg.final_eval_passes)})
        if self.writer is not None:
            self.writer.close()
        return self.records

    def _counters(self) -> dict:
        examples = self.step * self.cfg.batch_size
        return {"tokens": examples * self.tokens_per_example, "wall_s": round(self.wall, 3),
                "flops": examples * self.flops_per_example, "skipped_steps": self.skipped}

    def _log(self, record: dict) -> None:
        self.records.append(record)
        if self.rank != 0:
            return
        self.run_dir.log(record)
        if self.writer is not None:
            for key, value in _flatten(record).items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, record["step"])

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ValueError(f"--tensorboard needs the tensorboard package ({error})") from None
        return SummaryWriter(str(self.out / "tensorboard"))

    # ----- checkpoints -----

    def save_checkpoint(self) -> None:
        """Write checkpoint/ (model + training state); a kill at any moment leaves one that resumes."""
        if self.rank != 0:
            return
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self._log({"step": self.step, "warning": "non-finite weights: checkpoint not written"})
            return
        self.run_dir.save_checkpoint(self.model, {
            "step": self.step, "wall": self.wall, "skipped": self.skipped,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "rng": torch.get_rng_state(),
            "train_config": self.cfg.to_json(),
        })

    def _resume(self) -> None:
        loaded, state = self.run_dir.load_checkpoint()
        saved = TrainConfig.from_json(state["train_config"], f"the train config in {self.run_dir.checkpoint_path}")
        if saved != self.cfg:
            changed = [f for f in asdict(saved) if getattr(saved, f) != getattr(self.cfg, f)]
            raise ValueError(f"--resume: {self.out} was trained with a different configuration (fields {changed})")
        self.model.load_state_dict(loaded.state_dict())
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for sched, s in zip(self.schedulers, state["schedulers"]):
            sched.load_state_dict(s)
        torch.set_rng_state(state["rng"])
        self.step, self.wall, self.skipped = state["step"], state["wall"], state["skipped"]
        if self.rank == 0:  # drop records logged after the checkpoint: they will be logged again
            self.run_dir.truncate_after(self.step)


class _Loss(torch.nn.Module):
    def __init__(self, model: SleepLM, use_checkpoint: bool):
        super().__init__()
        self.model, self.use_checkpoint = model, use_checkpoint

    def forward(self, tokens, targets, loss_mask):
        return self.model.loss(tokens, targets, loss_mask, use_checkpoint=self.use_checkpoint)


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)


def _mean_over_processes(value: torch.Tensor, world: int) -> float:
    if world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return float(value)


def _flatten(record: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "/"))
        elif isinstance(value, list):
            flat.update({f"{name}/{i}": v for i, v in enumerate(value)})
        else:
            flat[name] = value
    return flat
