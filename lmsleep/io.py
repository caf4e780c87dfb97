"""Files on disk: atomic writes, safetensors with clear errors, and model save/load.

A model is a directory holding `config.json` and `model.safetensors`; the weights file also carries the
config in its metadata, so a weights file paired with the wrong config is refused.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from .config import SleepConfig
from .model import SleepLM

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success rename it over `path` (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tensors = {name: t.detach().contiguous().clone() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def load_tensors(path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file, turning a missing, truncated or corrupt file into a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{what} file {path} is truncated or corrupt: {error}") from None
    return tensors, metadata


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def _weights(model: SleepLM) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("head.weight")
    return state


def save_model(model: SleepLM, directory: str | os.PathLike) -> Path:
    directory = Path(directory)
    config_json = model.config.to_json()
    save_tensors(directory / WEIGHTS_FILE, _weights(model), {"format": "lmsleep-model", "config": config_json})
    write_text(directory / CONFIG_FILE, json.dumps(json.loads(config_json), indent=2) + "\n")
    return directory


def load_model(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> SleepLM:
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"model config not found: {config_path}")
    config = SleepConfig.from_json(config_path.read_text())
    tensors, metadata = load_tensors(directory / WEIGHTS_FILE, "model weights")
    if metadata.get("format") != "lmsleep-model":
        raise ValueError(f"{directory / WEIGHTS_FILE} is not an lmsleep model file (format={metadata.get('format')!r})")
    saved = SleepConfig.from_json(metadata.get("config", "{}"))
    if saved != config:
        raise ValueError(f"{config_path} does not match the config the weights were saved with: {config_diff(config, saved)}")
    model = SleepLM(config)
    expected = _weights(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"weights do not match the config: missing {missing}, unexpected {unexpected}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"weight {name} has shape {tuple(tensor.shape)}, the config needs {tuple(expected[name].shape)}"
            )
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1:
        raise ValueError(f"weights mix dtypes {sorted(map(str, dtypes))}; expected one")
    model = model.to(dtype=dtypes.pop())  # keep the saved precision
    model.load_state_dict(tensors, strict=not config.tie_embeddings)
    return model.to(map_location)


def config_diff(a: SleepConfig, b: SleepConfig) -> str:
    da, db = json.loads(a.to_json()), json.loads(b.to_json())
    return ", ".join(f"{k}: {da[k]!r} vs {db[k]!r}" for k in sorted(da) if da[k] != db[k])
