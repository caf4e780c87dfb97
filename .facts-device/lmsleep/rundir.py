"""The run directory: the one owner of a run's files, used by training, sweeps and reports.

    train.json      the run's configuration (written atomically when the run starts)
    sweep-config.json  in a sweep: the configuration the sweep launched the run with (the same fields)
    metrics.jsonl   one JSON object per logged event, appended; each has a "step"
    checkpoint/     model (config.json + model.safetensors) and training.safetensors (optimisers,
                    schedulers, RNG, step: tensors + a JSON description, never a pickle)

A checkpoint is written to checkpoint.new/, then swapped in: checkpoint/ → checkpoint.old/, checkpoint.new/
→ checkpoint/, checkpoint.old/ removed. A process killed at any moment leaves a complete checkpoint/ or, between
the two renames, a complete checkpoint.old/; `load_checkpoint` takes whichever exists. A kill while appending
to metrics.jsonl leaves at most a torn last line, which `records` skips and `truncate_after` drops.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .io import load_model, load_tensors, pack_state, save_model, save_tensors, unpack_state, write_text
from .model import SleepLM

TRAINING_FORMAT, TRAINING_VERSION = "lmsleep-training-state", 1
TRAINING_FILE = "training.safetensors"
PICKLED_TRAINING_FILE = "training.pt"  # written by lmsleep before training states were safetensors


class RunDirectory:
    CONFIG, SWEEP_CONFIG, METRICS = "train.json", "sweep-config.json", "metrics.jsonl"
    RESULT_FILES = (METRICS, SWEEP_CONFIG, CONFIG)  # what a results folder keeps of a run (no weights)

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config_path = self.path / self.CONFIG
        self.sweep_config_path = self.path / self.SWEEP_CONFIG
        self.metrics_path = self.path / self.METRICS
        self.checkpoint_path = self.path / "checkpoint"
        self._staging, self._old = self.path / "checkpoint.new", self.path / "checkpoint.old"

    def config(self) -> dict | None:
        """The run's configuration as a dict (the sweep's copy first, else train.json); None if neither exists."""
        path = next((p for p in (self.sweep_config_path, self.config_path) if p.is_file()), None)
        if path is None:
            return None
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(config, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return config

    # ----- configuration and metrics -----

    def start(self, config_json: str) -> None:
        """Begin a fresh run: empty metrics, the configuration written atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.metrics_path, "")
        write_text(self.config_path, config_json)

    def log(self, record: dict) -> None:
        """Append one record (a JSON object with a "step") to metrics.jsonl."""
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        """Every logged record, in order; [] when nothing was logged. A torn last line (a process killed while
        writing it) is skipped; a bad line elsewhere means a damaged file and raises ValueError."""
        if not self.metrics_path.exists():
            return []
        # The text after the last newline is empty unless the last write was cut short: ignore it.
        *lines, _torn = self.metrics_path.read_text().split("\n")
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.metrics_path} is corrupt: line {number} is not JSON ({error})") from None
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError(f"{self.metrics_path} is corrupt: line {number} is not a record with a step")
            records.append(record)
        return records

    def truncate_after(self, step: int) -> None:
        """Keep only records up to `step` (a resumed run logs the later ones again); rewritten atomically."""
        kept = [r for r in self.records() if r["step"] <= step]
        write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # ----- checkpoints -----

    def save_checkpoint(self, model: SleepLM, state: dict) -> None:
        """Write the model and the training `state` (nested dicts/lists of numbers, strings and tensors) as
        the new checkpoint, swapping it in so that a kill at any moment leaves a complete one."""
        shutil.rmtree(self._staging, ignore_errors=True)
        save_model(model, self._staging)
        tensors, description = pack_state(state)
        save_tensors(self._staging / TRAINING_FILE, tensors, TRAINING_FORMAT, TRAINING_VERSION,
                     {"state": description})
        if self.checkpoint_path.exists():
            shutil.rmtree(self._old, ignore_errors=True)
            self.checkpoint_path.rename(self._old)
        self._staging.rename(self.checkpoint_path)
        shutil.rmtree(self._old, ignore_errors=True)

    def _checkpoint_directory(self) -> Path | None:
        for directory in (self.checkpoint_path, self._old):  # checkpoint.old: a kill between the two renames
            if directory.is_dir():
                return directory
        return None

    def has_checkpoint(self) -> bool:
        directory = self._checkpoint_directory()
        return directory is not None and any((directory / name).is_file()
                                             for name in (TRAINING_FILE, PICKLED_TRAINING_FILE))

    def load_checkpoint(self, map_location="cpu") -> tuple[SleepLM, dict]:
        """(model, training state) of the latest checkpoint. Raises FileNotFoundError without one and
        ValueError for a damaged one or one written by an older lmsleep as a pickle (never unpickled)."""
        directory = self._checkpoint_directory()
        if directory is None or not self.has_checkpoint():
            raise FileNotFoundError(f"no checkpoint to resume in {self.path} (no {self.checkpoint_path.name}/ "
                                    f"with {TRAINING_FILE})")
        if not (directory / TRAINING_FILE).is_file():
            raise ValueError(f"{directory / PICKLED_TRAINING_FILE} was written by an older lmsleep as a pickle; "
                             "it is not loaded because unpickling a file can run arbitrary code. Start the run "
                             "again, or fine-tune from its weights with init_from")
        tensors, metadata = load_tensors(directory / TRAINING_FILE, TRAINING_FORMAT, TRAINING_VERSION, "training state")
        state = unpack_state(tensors, metadata.get("state", ""), f"training state file {directory / TRAINING_FILE}")
        return load_model(directory, map_location), state

    # ----- for sweeps -----

    def state(self, steps: int, needs_final_eval: bool) -> str:
        """'done' (evaluated at the last step, and finally when asked), 'partial' (a checkpoint to resume)
        or 'new'."""
        records = self.records()
        finished = any(r["step"] == steps and "eval" in r for r in records)
        if finished and (not needs_final_eval or any("final_eval" in r for r in records)):
            return "done"
        return "partial" if self.has_checkpoint() else "new"
