"""The continual learner (spec: sleep-continual.md): it alternates wake and sleep, and can be saved and
resumed bit for bit.

    wake(tokens)        next-token loss on the batch (read after the current context), summed into every
                        learning level; then, for each level now due, fast → slow:
                            sleep: teacher = the model now; apply the level's update; prune the level's
                            experts; unlock one in the next level; distil the teacher into it (seeding)
    read(context)       hold a context: attention's memory, the fastest level
    reset_context()     sleep first (teacher = the model with the context, student = without it, new
                        expert in level 1), then drop the context
    dream(measure)      sleep stage 2 on the last consolidated context (continual.dreaming)
    sleep(measure)      the whole sleep on the held context: consolidate it, then dream (config switches)
    train_dream_generator(tasks)   ReST-EM on other contexts with their measures (SEAL's protocol)

Every variant and ablation of the sleep is a LearnerConfig field: consolidation (stage 1 on/off: off is
the SEAL-style system), expansion (a new expert, or the receiving level's base experts), imitation (the
RL term on/off), dream (stage 2 on/off), dreaming["selection"] / dreaming["random_expert"], and
learn_dreams: where kept or rewarded dreams are learnt ("wake": as wake data into the levels; "expert":
into the sleep's new expert; "model": by fine-tuning every parameter; "none").

Bounded memory: a level whose pool is full when a sleep needs a slot consolidates its own experts first
(full_pool: "merge" distils all of them into one new expert, "base" into the level's base experts, "error"
raises ExpertPoolExhausted), so the pools never overflow however long the run; the sleep log names what was
merged.

Every sleep is one JSON line in the run directory's metrics.jsonl (RunDirectory.log): its trigger, the
levels involved, the experts unlocked and pruned, divergence and reward before/after, wall time.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import torch

from .. import validate
from ..io import load_tensors, pack_state, save_tensors, unpack_state
from ..layers.levels import OPEN, ExpertPoolExhausted
from ..model import SleepLM
from ..rundir import RunDirectory
from ..stream import sample
from .baselines import sft
from .dreaming import DreamingConfig, Task, dream as dream_rounds, left_padded, propose, rest_em
from .levels import OPTIMIZERS, LevelUpdates, check_periods, level_modules
from .lora import LoRAAdapters
from .rewards import ExactJudge
from .seeding import SeedingConfig, consolidate, existing_experts, prepare_student, snapshot, train_expert
from .seeds import derive

# Version 2 (issue 18): experts have gates and the config new fields; a version-1 file is refused by name.
FORMAT, VERSION = "lmsleep-learner", 2
RETIRED = {1: "it was written before experts had gates and pools were bounded (issue 18): its learner config "
              "lacks the sleep's switches and its experts would change meaning under the new gating; start a new "
              "learner (a model saved with lmsleep.io.save_model still loads)"}
LEARN_DREAMS = ("wake", "expert", "model", "none")
FULL_POOL = ("merge", "base", "error")


@dataclass(frozen=True)
class LearnerConfig:
    """periods: C_ℓ per memory level (0 = frozen); lr / optimizer: the levels' update (Eq. 2: "sgd");
    seeding / dreaming: SeedingConfig / DreamingConfig fields; prompt: the tokens replay samples start from; blank: a token the student reads in place
    of each context token when a context is consolidated (e.g. a padding token, so that the student sees
    the layout in which it is later asked without the context; None: nothing in its place); seed: all
    randomness; unrelated: the prompt of unrelated replay (sequences the teacher samples from it, with no
    context, teach a new expert to stay closed; None: none); closed_book_replay: when a context is consolidated
    and `blank` is set, also replay what the teacher says without the context (blank, then prompt): what the
    model answers closed-book now, earlier consolidations included, must not change; the sleep's switches
    (see the module docstring: consolidation, expansion, imitation, dream, learn_dreams); dream_steps / dream_lr: how kept dreams are learnt ("expert" and "model"); full_pool: what
    a full level does before it receives an expert."""

    periods: list[int] = field(default_factory=lambda: [1])
    lr: float = 1e-2
    optimizer: str = "sgd"
    seeding: dict = field(default_factory=dict)
    dreaming: dict = field(default_factory=dict)
    prompt: list[int] = field(default_factory=lambda: [0])
    blank: int | None = None
    unrelated: list[int] | None = None
    closed_book_replay: bool = False  # measured: no gain, 30% more CPU (results/continual.md)
    consolidation: bool = True
    expansion: bool = True
    imitation: bool = True
    dream: bool = True
    learn_dreams: str = "wake"
    dream_steps: int = 10
    dream_lr: float = 1e-2
    full_pool: str = "merge"
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
        if self.unrelated is not None:
            if not self.unrelated:
                raise ValueError("LearnerConfig.unrelated must hold at least one token id (or be None)")
            validate.int_list("LearnerConfig.unrelated", self.unrelated, low=0)
        validate.one_of("LearnerConfig.learn_dreams", self.learn_dreams, LEARN_DREAMS)
        validate.one_of("LearnerConfig.full_pool", self.full_pool, FULL_POOL)
        validate.non_negative_int("LearnerConfig.dream_steps", self.dream_steps)
        validate.positive_number("LearnerConfig.dream_lr", self.dream_lr)
        if not self.consolidation and self.learn_dreams == "expert":
            raise ValueError('LearnerConfig.learn_dreams "expert" needs consolidation (it learns into the new '
                             'expert a consolidation unlocks); without it use "model", "wake" or "none"')
        self.seeding_config()
        self.dreaming_config()

    def seeding_config(self, sleep: int = 0) -> SeedingConfig:
        """The seeding settings of the `sleep`-th sleep (its own seed, so that a resumed run repeats it)."""
        fields_ = {**self.seeding, "seed": derive(self.seed, sleep, 1)}
        if not self.imitation:
            fields_["alpha"] = 1.0  # distillation only
        return validate.from_dict(SeedingConfig, fields_, "LearnerConfig.seeding")

    def dreaming_config(self, sleep: int = 0) -> DreamingConfig:
        fields_ = {**self.dreaming, "seed": derive(self.seed, sleep, 2)}
        return validate.from_dict(DreamingConfig, fields_, "LearnerConfig.dreaming")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class ContinualLearner:
    def __init__(self, model: SleepLM, config: LearnerConfig = LearnerConfig(), run_dir=None, *, judge=None,
                 progress: bool = False):
        check_periods(config.periods, model.config.memory_levels)
        for name, ids in (("prompt", config.prompt), ("blank", [config.blank or 0]), ("unrelated", config.unrelated or [0])):
            if max(ids) >= model.config.vocab_size:
                raise ValueError(f"LearnerConfig.{name} holds id {max(ids)}, outside the vocabulary "
                                 f"[0, {model.config.vocab_size})")
        if config.full_pool == "merge" and model.config.memory_levels and model.config.expert_pool < 2:
            raise ValueError("LearnerConfig.full_pool 'merge' needs SleepConfig.expert_pool ≥ 2 (the merged expert and "
                             f"the new one), got {model.config.expert_pool}; use full_pool 'base'")
        self.model, self.config = model, config
        self.updates = LevelUpdates(model, config.periods, lr=config.lr, optimizer=config.optimizer)
        self.generator = torch.Generator().manual_seed(config.seed)  # expert initialisation
        if judge is not None and not callable(judge):
            raise TypeError(f"judge must be a callable (completion_ids, reference_ids) -> bool, got {type(judge).__name__}")
        self.judge = judge if judge is not None else ExactJudge()
        self.context: torch.Tensor | None = None
        self.dream_generator: LoRAAdapters | None = None  # trained by ReST-EM across sleeps
        self.last_context: torch.Tensor | None = None  # the context the last sleep consolidated (dreams are about it)
        self.last_new = None  # what the last consolidation trained: [(level module, slot)] per block
        self.last_dreams = None  # (tokens, targets, loss_mask) of the dreams the last dreaming kept or rewarded
        self.sleeps = 0
        self.progress = progress  # progress bars over long sleeps
        self.run = RunDirectory(run_dir) if run_dir is not None else None
        if self.run is not None and not self.run.metrics_path.exists():
            self.run.start(json.dumps({"learner": asdict(config), "model": asdict(model.config)}, indent=2) + "\n")

    @property
    def levels(self) -> int:
        return self.model.config.memory_levels

    @property
    def device(self) -> torch.device:
        """Where the model is: the prompts and dreams the learner makes go there (a model on a GPU)."""
        return next(self.model.parameters()).device

    @property
    def prompt(self) -> torch.Tensor:
        return torch.tensor([self.config.prompt], device=self.device)

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
        context, self.context = self.context, None
        self.last_context, self.last_new = context, None
        if not self.config.consolidation:
            return self._log({"trigger": "context reset", "level": 0, "consolidation": "off"}, started)
        teacher = snapshot(self.model)
        record = {"trigger": "context reset", "level": 0,
                  **self._seed(teacher, sending=None, receiving=0, context=context)}
        return self._log(record, started)

    def sleep(self, measure=None) -> dict:
        """The whole sleep on the held context: consolidate it (stage 1), then dream on it (stage 2), each as
        the config switches say. `measure(model) -> float` is τ for this context (None at test time: the
        kept dreams are learnt without rewards). Returns {"consolidation": record, "dreaming": record}."""
        if self.context is None:
            raise ValueError("sleep needs a held context: call read(context) first")
        records = {"consolidation": self.reset_context(), "dreaming": None}
        if self.config.dream:
            records["dreaming"] = self.dream(measure)
        return records

    def _dream_task(self, context: torch.Tensor, measure=None) -> Task:
        """Dreams are sampled after C = context + prompt and learnt after the closed-book twin of C (blank in
        place of the context, then the prompt; the dream alone without a blank)."""
        task = torch.cat([context, self.prompt], dim=1)
        prefix = None
        if self.config.blank is not None:
            prefix = torch.cat([torch.full_like(context, self.config.blank), self.prompt], dim=1)
        return Task(task, measure, prefix)

    def dream(self, measure=None, context: torch.Tensor | None = None) -> dict:
        """Sleep stage 2 on `context` (default: the last consolidated one; a held one is consolidated first).
        With τ (`measure`): reward each kept dream by its isolated copy, improve the dream generator by
        ReST-EM, and learn the rewarded dreams; without: learn the kept dreams (top k by importance + b).
        The record's "chosen" holds those dreams' token ids."""
        self.reset_context()  # consolidation always runs before dreaming
        context = self.last_context if context is None else context
        if context is None:
            raise ValueError("dream needs a context: read one (and sleep) first, or pass context=")
        self.model.check_tokens(context, "context")
        started = time.perf_counter()
        task = self._dream_task(context, measure)
        cfg = self.config.dreaming_config(self.sleeps)
        if measure is not None:
            report = dream_rounds(self.model, task.context, measure, cfg, self.dream_generator, task.prefix)
            self.dream_generator = report.generator
            rounds = report.rounds
            record = {"trigger": "dreaming", "level": None, "dreams": sum(len(r.dreams) for r in rounds),
                      "kept": [r.kept for r in rounds], "rewards": [r.rewards for r in rounds],
                      "measure_before": [r.measure_before for r in rounds],
                      "measures_of_kept": [r.measures for r in rounds],
                      "generator_trained_on": [r.generator_trained_on for r in rounds]}
            dreams = [torch.tensor(d, device=self.device) for d in report.rewarded_dreams()]
        else:
            found, _, _, kept = propose(self.model, task.context, cfg, cfg.seed, self.dream_generator, task.prefix)
            record = {"trigger": "dreaming", "level": None, "dreams": found.shape[0], "kept": [kept],
                      "selection": cfg.selection}
            dreams = [found[i] for i in kept]
        record["chosen"] = [d.tolist() for d in dreams]  # what is learnt: token ids (e.g. to check fidelity)
        record["learnt"] = self._learn_dreams(dreams, task.prefix)
        return self._log(record, started)

    def _learn_dreams(self, dreams: list[torch.Tensor], prefix: torch.Tensor | None) -> dict:
        """Learn `dreams` where config.learn_dreams says; returns what was done."""
        where = self.config.learn_dreams
        self.last_dreams = None
        if not dreams:
            return {"into": where, "dreams": 0}
        start = 0 if prefix is None else prefix.shape[1]
        rows = [d if prefix is None else torch.cat([prefix[0], d]) for d in dreams]
        data = self.last_dreams = left_padded(rows, [start] * len(rows), self.config.blank or 0)
        if where == "none":
            return {"into": where, "dreams": 0}
        if where == "wake":
            losses = [self.wake(torch.cat([t[None], y[None, -1:]], 1), m[None])["loss"] for t, y, m in zip(*data)]
            return {"into": "wake", "dreams": len(rows), "losses": losses}
        if where == "expert":
            if self.last_new is None:
                raise ValueError('learn_dreams "expert" needs a consolidation first (no new expert to learn into)')
            losses = train_expert(self.model, self.last_new, data, steps=self.config.dream_steps, lr=self.config.dream_lr)
        else:  # "model": every parameter (the SEAL-style system), the wake sums set aside
            saved = {p: (p.requires_grad, p.grad) for p in self.model.parameters()}
            for p in self.model.parameters():
                p.requires_grad_(True)
            try:
                losses = sft(self.model, data, steps=self.config.dream_steps, lr=self.config.dream_lr,
                             seed=derive(self.config.seed, self.sleeps, 3))
            finally:
                for p, (requires_grad, grad) in saved.items():
                    p.requires_grad_(requires_grad)
                    p.grad = grad
        return {"into": where, "dreams": len(rows), "loss_before": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None}

    def train_dream_generator(self, tasks: list[tuple[torch.Tensor, object]]) -> dict:
        """ReST-EM on other contexts (SEAL's protocol): `tasks` is [(context [1, c], measure τ)], each context
        laid out as a sleep lays it out. The model never changes; the learner's dream generator does."""
        if not tasks:
            raise ValueError("train_dream_generator needs at least one (context, measure) pair")
        started = time.perf_counter()
        for context, measure in tasks:
            self.model.check_tokens(context, "context")
            if not callable(measure):
                raise TypeError(f"measure must be a callable model -> float, got {type(measure).__name__}")
        cfg = self.config.dreaming_config(self.sleeps)
        prepared = [self._dream_task(context, measure) for context, measure in tasks]
        self.dream_generator, rounds = rest_em(self.model, prepared, cfg, self.dream_generator,
                                               pad=self.config.blank or 0)
        return self._log({"trigger": "dream generator", "level": None, "tasks": len(tasks),
                          "rewarded": sum(sum(r.rewards) for r in rounds),
                          "generator_trained_on": [r.generator_trained_on for r in rounds]}, started)

    def _closed_layout(self) -> torch.Tensor | None:
        """What replay without a context is read after: the blank in place of the last context (the layout in
        which the model is asked without it), or nothing (no blank, or no context read yet)."""
        if self.config.blank is None or self.last_context is None:
            return None
        return torch.full_like(self.last_context, self.config.blank)

    @property
    def unrelated_prompt(self) -> torch.Tensor | None:
        return None if self.config.unrelated is None else torch.tensor([self.config.unrelated], device=self.device)

    def _make_room(self, level: int) -> dict | None:
        """Level `level` must receive an expert: if its pool is full, consolidate its own experts first
        (config.full_pool), freeing the slots. Returns the merge's record (None: there was room)."""
        modules = level_modules(self.model, level)
        if all(m.free_slots() for m in modules):
            return None
        if self.config.full_pool == "error":
            raise ExpertPoolExhausted(
                f"all {modules[0].pool_size} low-rank experts of level {level + 1} are in use (full_pool = 'error'); "
                "enlarge SleepConfig.expert_pool or set LearnerConfig.full_pool to 'merge' or 'base'")
        started = time.perf_counter()
        teacher = snapshot(self.model)
        merged = [[block, slot] for block, m in enumerate(modules) for slot in m.active_slots()]
        for m in modules:
            for slot in m.active_slots():
                m.reset(slot)
        self.updates.forget_pool_state(level)
        if self.config.full_pool == "merge":
            target = [(m, m.unlock(self.generator)) for m in modules]
        else:
            target = existing_experts(self.model, level)
        cfg = self.config.seeding_config(self.sleeps)
        layout = self._closed_layout()
        report = consolidate(teacher, self.model, target, self.prompt, cfg, context=layout, blank=layout,
                             judge=self.judge, progress=self.progress, unrelated=self.unrelated_prompt)
        record = {"trigger": f"level {level + 1} pool full", "level": level + 1, "policy": self.config.full_pool,
                  "merged": merged, "into": [[b, s] for b, (_, s) in enumerate(target)] if self.config.full_pool == "merge"
                  else "base experts", "divergence_before": report.divergence_before,
                  "divergence_after": report.divergence_after}
        return self._log(record, started)

    def _seed(self, teacher: SleepLM, sending: int | None, receiving: int, context: torch.Tensor | None) -> dict:
        """Consolidate `teacher` into a new expert of level `receiving` (or, expansion off, its base experts;
        the teacher alone reads `context`: a level's sleep replays without it, a context reset distils it)."""
        made_room = self._make_room(receiving) if self.config.expansion else None
        new, pruned = prepare_student(self.model, sending, receiving, self.generator, expand=self.config.expansion)
        if sending is not None:
            self.updates.forget_pool_state(sending)
        cfg = self.config.seeding_config(self.sleeps)
        unrelated = [] if self.unrelated_prompt is None else [self.unrelated_prompt]
        if context is None:  # a level's sleep: teacher and student read the closed-book layout alike
            context = blank = self._closed_layout()
        else:
            blank = None if self.config.blank is None else torch.full_like(context, self.config.blank)
            if blank is not None and self.config.closed_book_replay:
                unrelated.append(torch.cat([blank, self.prompt], dim=1))
        report = consolidate(teacher, self.model, new, self.prompt, cfg, context=context, blank=blank, judge=self.judge,
                             progress=self.progress, unrelated=unrelated or None)
        self.last_new = new
        return {
            "receiving_level": receiving + 1,
            "unlocked": [[block, slot] for block, (_, slot) in enumerate(new)] if self.config.expansion else [],
            "pruned": [list(pair) for pair in pruned],
            "made_room": None if made_room is None else made_room["merged"],
            "divergence_before": report.divergence_before, "divergence_after": report.divergence_after,
            "reward_before": report.reward_before, "reward_after": report.reward_after,
            "opens_on_content": report.opens_on_content, "opens_on_unrelated": report.opens_on_unrelated,
            "experts_open": self.expert_opening(),
        }

    @torch.no_grad()
    def expert_opening(self) -> dict:
        """{"level ℓ": {slot: share of tokens it opens on}} for every active expert (mean over blocks), on a
        fixed sample of unrelated replay (empty without config.unrelated)."""
        if self.unrelated_prompt is None:
            return {}
        cfg = self.config.seeding_config(0)
        tokens = sample(self.model, self.unrelated_prompt, cfg.unrelated_length or cfg.sample_length, cfg.temperature,
                        derive(self.config.seed, -1))
        was_training = self.model.training
        self.model.eval()
        self.model(tokens)
        self.model.train(was_training)
        shares: dict[str, dict[int, list[float]]] = {}
        for level in range(self.levels):
            for module in level_modules(self.model, level):
                if module.last_gates is None:
                    continue
                slots, gates = module.last_gates
                for i, slot in enumerate(slots):
                    shares.setdefault(f"level {level + 1}", {}).setdefault(slot, []).append(
                        float((gates[..., i] > OPEN).float().mean()))
        return {lv: {slot: round(sum(v) / len(v), 4) for slot, v in sorted(by.items())} for lv, by in shares.items()}

    def _level_of(self, module) -> int:
        return next(i for i in range(self.levels) if any(m is module for m in level_modules(self.model, i)))

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
            "model": self.model.learner_tensors(),
            "grads": {name: p.grad for name, p in named.items() if p.grad is not None},
            "optimizers": [o.state_dict() if o is not None else None for o in self.updates.optimizers],
            "step": self.updates.step, "sleeps": self.sleeps,
            "rng": torch.get_rng_state(), "generator": self.generator.get_state(),
            "context": self.context, "last_context": self.last_context,
            "last_new": None if self.last_new is None else torch.tensor(
                [[self._level_of(m), -1 if slot is None else slot] for m, slot in self.last_new]),
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
        tensors, metadata = load_tensors(path, FORMAT, VERSION, "learner state", retired=RETIRED)
        model.check_config(type(model.config).from_json(metadata["model_config"]), f"learner state {path}")
        config = validate.from_json(LearnerConfig, metadata["learner_config"], f"learner state {path}: config")
        state = unpack_state(tensors, metadata["state"], f"learner state {path}")
        model.load_learner_tensors(state["model"], f"learner state {path}")
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
        learner.context, learner.last_context = state["context"], state["last_context"]
        if state["last_new"] is not None:
            learner.last_new = [(model.blocks[block].mlp.levels[int(level)], None if slot < 0 else int(slot))
                                for block, (level, slot) in enumerate(state["last_new"].tolist())]
        if state["dream_generator"] is not None:
            g = state["dream_generator"]
            learner.dream_generator = LoRAAdapters(tuple(g["targets"]), list(g["A"]), list(g["B"]), g["alpha"])
        if learner.run is not None:
            learner.run.truncate_after(learner.updates.step)
        return learner
