"""The continual learner (spec: sleep-continual.md): it alternates wake and sleep, and can be saved and
resumed bit for bit.

    wake(tokens)        next-token loss on the batch (read after the current context), summed into every
                        learning level; then, for each level now due, fast → slow:
                            sleep: teacher = the model now; apply the level's update; prune the level's
                            experts; unlock one in the next level; distil the teacher into it (seeding)
    read(context)       hold a context: attention's memory, the fastest level
    reset_context()     sleep first (teacher = the model with the context, student = without it, new
                        expert in level 1), then drop the context
    dream(...)          sleep stage 2, after consolidation (continual.dreaming)

Every sleep is one JSON line in the run directory's metrics.jsonl (RunDirectory.log): its trigger, the
levels involved, the experts unlocked and pruned, divergence and reward before/after, wall time.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import torch

from .. import validate
from ..config import SleepConfig
from ..io import config_diff, load_tensors, pack_state, save_tensors, unpack_state
from ..model import SleepLM
from ..rundir import RunDirectory
from .dreaming import DreamingConfig, dream
from .levels import OPTIMIZERS, LevelUpdates, check_periods
from .lora import LoRAAdapters
from .rewards import ExactJudge
from .seeding import SeedingConfig, consolidate, prepare_student, snapshot

FORMAT, VERSION = "lmsleep-learner", 1


@dataclass(frozen=True)
class LearnerConfig:
    """periods: C_ℓ per memory level (0 = frozen); lr / optimizer: the levels' update (Eq. 2: "sgd");
    seeding / dreaming: SeedingConfig / DreamingConfig fields; learn_dreams: wake on the rewarded dreams
    after dreaming; prompt: the tokens replay samples start from; blank: a token the student reads in place
    of each context token when a context is consolidated (e.g. a padding token, so that the student sees
    the layout in which it is later asked without the context; None: nothing in its place); seed: all
    randomness."""

    periods: list[int] = field(default_factory=lambda: [1])
    lr: float = 1e-2
    optimizer: str = "sgd"
    seeding: dict = field(default_factory=dict)
    dreaming: dict = field(default_factory=dict)
    learn_dreams: bool = True
    prompt: list[int] = field(default_factory=lambda: [0])
    blank: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        validate.check_types(self)
        validate.positive_number("LearnerConfig.lr", self.lr)
        validate.one_of("LearnerConfig.optimizer", self.optimizer, OPTIMIZERS)
        validate.integer("LearnerConfig.seed", self.seed)
        if not self.prompt:
            raise ValueError("LearnerConfig.prompt must hold at least one token id")
        validate.int_list("LearnerConfig.prompt", self.prompt, low=0)
        if self.blank is not None:
            validate.non_negative_int("LearnerConfig.blank", self.blank)
        self.seeding_config()
        self.dreaming_config()

    def seeding_config(self, sleep: int = 0) -> SeedingConfig:
        """The seeding settings of the `sleep`-th sleep (its own seed, so that a resumed run repeats it)."""
        fields_ = {**self.seeding, "seed": self.seed * 1_000_003 + sleep}
        return validate.from_dict(SeedingConfig, fields_, "LearnerConfig.seeding")

    def dreaming_config(self, sleep: int = 0) -> DreamingConfig:
        fields_ = {**self.dreaming, "seed": self.seed * 1_000_003 + sleep}
        return validate.from_dict(DreamingConfig, fields_, "LearnerConfig.dreaming")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class ContinualLearner:
    def __init__(self, model: SleepLM, config: LearnerConfig = LearnerConfig(), run_dir=None, *, judge=None,
                 progress: bool = False):
        check_periods(config.periods, model.config.memory_levels)
        for name, ids in (("prompt", config.prompt), ("blank", [config.blank or 0])):
            if max(ids) >= model.config.vocab_size:
                raise ValueError(f"LearnerConfig.{name} holds id {max(ids)}, outside the vocabulary "
                                 f"[0, {model.config.vocab_size})")
        self.model, self.config = model, config
        self.updates = LevelUpdates(model, config.periods, lr=config.lr, optimizer=config.optimizer)
        self.generator = torch.Generator().manual_seed(config.seed)  # expert initialisation
        if judge is not None and not callable(judge):
            raise TypeError(f"judge must be a callable (completion_ids, reference_ids) -> bool, got {type(judge).__name__}")
        self.judge = judge if judge is not None else ExactJudge()
        self.context: torch.Tensor | None = None
        self.dream_generator: LoRAAdapters | None = None  # trained by ReST-EM across sleeps
        self.sleeps = 0
        self.progress = progress  # progress bars over long sleeps
        self.run = RunDirectory(run_dir) if run_dir is not None else None
        if self.run is not None and not self.run.metrics_path.exists():
            self.run.start(json.dumps({"learner": asdict(config), "model": asdict(model.config)}, indent=2) + "\n")

    @property
    def levels(self) -> int:
        return self.model.config.memory_levels

    @property
    def prompt(self) -> torch.Tensor:
        return torch.tensor([self.config.prompt])

    # ----- wake -----

    def read(self, context: torch.Tensor) -> None:
        """Hold `context` [1, c] (token ids) as the fastest memory; a held one is consolidated first."""
        self.model.check_tokens(context, "context")
        if context.shape[0] != 1 or context.shape[1] == 0:
            raise ValueError(f"context must be one non-empty row [1, c], got shape {tuple(context.shape)}")
        if self.context is not None:
            self.reset_context()
        self.context = context

    def wake(self, tokens: torch.Tensor, loss_mask: torch.Tensor | None = None) -> dict:
        """One wake step on `tokens` [batch, T] (next-token loss where loss_mask [batch, T − 1] is 1; all
        positions by default), read after the held context. Returns {"loss", "sleeps": [records]}."""
        self.model.check_tokens(tokens)
        if tokens.shape[0] == 0:
            raise ValueError("wake needs at least one sequence, got an empty batch")
        if tokens.shape[1] < 2:
            raise ValueError("wake needs sequences of at least 2 tokens (one to read, one to predict)")
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        mask = torch.ones_like(targets) if loss_mask is None else loss_mask.long()
        if mask.shape != targets.shape:
            raise ValueError(f"loss_mask must be [batch, T − 1] = {tuple(targets.shape)}, got {tuple(mask.shape)}")
        if self.context is not None:
            prefix = self.context.expand(tokens.shape[0], -1)
            inputs = torch.cat([prefix, inputs], dim=1)
            targets = torch.cat([torch.zeros_like(prefix), targets], dim=1)
            mask = torch.cat([torch.zeros_like(prefix), mask], dim=1)
        self.model.train()
        loss = self.model.loss(inputs, targets, mask)
        records = [self._sleep_level(level) for level in self.updates.accumulate(loss)]
        return {"loss": loss.item(), "sleeps": records}

    # ----- sleep -----

    def _sleep_level(self, level: int) -> dict:
        """Level ℓ is due: consolidate it into level ℓ + 1 (if there is one), then apply its update."""
        started = time.perf_counter()
        record = {"trigger": f"level {level + 1} due", "level": level + 1}
        if level + 1 < self.levels:
            teacher = snapshot(self.model)
            self.updates.apply(level)
            record.update(self._seed(teacher, sending=level, receiving=level + 1, context=None))
        else:
            self.updates.apply(level)
            record["note"] = "slowest level: its update is applied, there is no slower level to consolidate into"
        return self._log(record, started)

    def reset_context(self) -> dict | None:
        """Consolidate the held context into level 1, then drop it (None when no context is held)."""
        if self.context is None:
            return None
        started = time.perf_counter()
        teacher = snapshot(self.model)
        record = {"trigger": "context reset", "level": 0,
                  **self._seed(teacher, sending=None, receiving=0, context=self.context)}
        self.context = None
        return self._log(record, started)

    def dream(self, context: torch.Tensor, measure) -> dict:
        """Sleep stage 2 on task context C [1, c] with measure τ (model -> float, higher is better): a held
        context is consolidated first; then dream, and (learn_dreams) wake on each rewarded dream."""
        self.reset_context()  # consolidation always runs before dreaming
        started = time.perf_counter()
        report = dream(self.model, context, measure, self.config.dreaming_config(self.sleeps), self.dream_generator)
        self.dream_generator = report.generator
        rewarded = report.rewarded_dreams()
        record = {
            "trigger": "dreaming", "level": None,
            "dreams": sum(len(r.dreams) for r in report.rounds),
            "kept": [r.kept for r in report.rounds], "rewards": [r.rewards for r in report.rounds],
            "measure_before": [r.measure_before for r in report.rounds],
            "measures_of_kept": [r.measures for r in report.rounds],
            "generator_trained_on": [r.generator_trained_on for r in report.rounds],
        }
        record = self._log(record, started)
        if self.config.learn_dreams and rewarded:
            record["woke_on_dreams"] = [self.wake(torch.tensor([d]))["loss"] for d in rewarded]
        return record

    def _seed(self, teacher: SleepLM, sending: int | None, receiving: int, context: torch.Tensor | None) -> dict:
        """Consolidate `teacher` into a new expert of level `receiving` (the teacher alone reads `context`:
        a level's sleep replays without it, a context reset distils the context itself)."""
        new, pruned = prepare_student(self.model, sending, receiving, self.generator)
        cfg = self.config.seeding_config(self.sleeps)
        blank = None if context is None or self.config.blank is None else torch.full_like(context, self.config.blank)
        report = consolidate(teacher, self.model, new, self.prompt, cfg, context=context, blank=blank, judge=self.judge,
                             progress=self.progress)
        return {
            "receiving_level": receiving + 1,
            "unlocked": [[block, slot] for block, (_, slot) in enumerate(new)],
            "pruned": [list(pair) for pair in pruned],
            "divergence_before": report.divergence_before, "divergence_after": report.divergence_after,
            "reward_before": report.reward_before, "reward_after": report.reward_after,
        }

    def _log(self, record: dict, started: float) -> dict:
        record["wall_s"] = round(time.perf_counter() - started, 3)
        self.sleeps += 1
        entry = {"step": self.updates.step, "sleep": record}
        if self.run is not None:
            self.run.log(entry)
        return record

    # ----- persistence -----

    def state(self) -> dict:
        named = dict(self.model.named_parameters())
        return {
            "model": self.model.state_dict(),
            "grads": {name: p.grad for name, p in named.items() if p.grad is not None},
            "optimizers": [o.state_dict() if o is not None else None for o in self.updates.optimizers],
            "step": self.updates.step, "sleeps": self.sleeps,
            "rng": torch.get_rng_state(), "generator": self.generator.get_state(),
            "context": self.context,
            "dream_generator": None if self.dream_generator is None else {
                "targets": list(self.dream_generator.targets), "A": self.dream_generator.A,
                "B": self.dream_generator.B, "alpha": self.dream_generator.alpha},
        }

    def save(self, path) -> None:
        """The whole learner (weights, masks, accumulated gradients, optimizer states, step, RNG, context)
        as one checked file, written atomically."""
        tensors, description = pack_state(self.state())
        metadata = {"state": description, "learner_config": self.config.to_json(),
                    "model_config": self.model.config.to_json()}
        save_tensors(path, tensors, FORMAT, VERSION, metadata)

    @classmethod
    def load(cls, model: SleepLM, path, run_dir=None, *, judge=None) -> "ContinualLearner":
        """Resume a learner saved by `save` on `model` (a model of the same config; its weights are replaced)."""
        tensors, metadata = load_tensors(path, FORMAT, VERSION, "learner state")
        saved_model = SleepConfig.from_json(metadata["model_config"])
        if saved_model != model.config:
            raise ValueError(f"learner state {path} was saved for another model config: {config_diff(model.config, saved_model)}")
        config = validate.from_json(LearnerConfig, metadata["learner_config"], f"learner state {path}: config")
        state = unpack_state(tensors, metadata["state"], f"learner state {path}")
        model.load_state_dict(state["model"])
        learner = cls(model, config, run_dir, judge=judge)
        named = dict(model.named_parameters())
        for name, grad in state["grads"].items():
            named[name].grad = grad.clone()
        for optimizer, saved in zip(learner.updates.optimizers, state["optimizers"]):
            if optimizer is not None:
                optimizer.load_state_dict(saved)
        learner.updates.step, learner.sleeps = state["step"], state["sleeps"]
        torch.set_rng_state(state["rng"])
        learner.generator.set_state(state["generator"])
        learner.context = state["context"]
        if state["dream_generator"] is not None:
            g = state["dream_generator"]
            learner.dream_generator = LoRAAdapters(tuple(g["targets"]), list(g["A"]), list(g["B"]), g["alpha"])
        if learner.run is not None:
            learner.run.truncate_after(learner.updates.step)
        return learner
