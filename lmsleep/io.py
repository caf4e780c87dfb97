"""Files on disk: atomic writes, checked safetensors files, and model save/load.

Every tensor file lmsleep writes (model, training state, memory state) is a safetensors file (never a pickle,
so loading one cannot run code) whose metadata names its format and version and carries a checksum over the
tensors and the metadata; `load_tensors` refuses a missing, truncated, corrupt, foreign or newer file with one
message naming the file and what is wrong. Nested states with tensors inside (optimisers, RNG) travel as
tensors plus a JSON description (`pack_state` / `unpack_state`).

A model is a directory holding `config.json` and `model.safetensors`; the weights file also carries the
config in its metadata, so a weights file paired with the wrong config is refused.
"""
from __future__ import annotations

import hashlib
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
from .model import SleepLM, build_model

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
MODEL_FORMAT, MODEL_VERSION = "lmsleep-model", 1  # version 0: files from before checksums (no version field)


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success rename it over `path` (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        # mkstemp (and safetensors) make the file private; give it the permissions open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def checksum(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes and over the metadata (but its checksum)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # the bytes as stored, without a copy
    rest = {key: value for key, value in metadata.items() if key != "checksum"}
    digest.update(json.dumps(rest, sort_keys=True).encode())
    return "sha256:" + digest.hexdigest()


def save_tensors(path, tensors: dict[str, torch.Tensor], format: str, version: int,
                 metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` atomically as a safetensors file stamped with format, version and checksum."""
    tensors = {name: t.detach().contiguous().clone() for name, t in tensors.items()}
    metadata = {**(metadata or {}), "format": format, "version": str(version)}
    metadata["checksum"] = checksum(tensors, metadata)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def load_tensors(path, format: str, version: int, what: str, unchecked: tuple[int, ...] = (),
                 retired: dict[int, str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a file written by `save_tensors` with this `format` at `version` (or at one of the `unchecked`
    versions, written before files carried a checksum). A missing file raises FileNotFoundError; a
    truncated, corrupt, foreign or unreadable one ValueError naming `what` and the file; a `retired`
    version, ValueError with the reason it is no longer read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"{what} file {path} is truncated or corrupt (not a readable safetensors file: {error})"
                         ) from None
    if metadata.get("format") != format:
        kind = what.replace(" ", "-")  # "a memory-state file"
        raise ValueError(f"{path} is not an lmsleep {kind} file: its format is {metadata.get('format')!r}, "
                         f"expected {format!r}")
    found = metadata.get("version", "0")
    if not found.isdigit():
        raise ValueError(f"{what} file {path} is corrupt: its version is {found!r}, not a number")
    if int(found) > version:
        raise ValueError(f"{what} file {path} has format version {found}, written by a newer lmsleep; "
                         f"this one reads version {version}")
    if int(found) in (retired or {}):
        raise ValueError(f"{what} file {path} has format version {found}, which this lmsleep no longer reads: "
                         f"{retired[int(found)]}")
    if int(found) != version and int(found) not in unchecked:
        raise ValueError(f"{what} file {path} has format version {found}, which this lmsleep no longer reads "
                         f"(it reads {sorted({version, *unchecked})})")
    if "checksum" in metadata:
        if checksum(tensors, metadata) != metadata["checksum"]:
            raise ValueError(f"{what} file {path} is corrupt: its contents do not match its checksum")
    elif int(found) not in unchecked:
        raise ValueError(f"{what} file {path} is corrupt: it carries no checksum")
    return tensors, metadata


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


# ----- nested states (optimisers, schedulers, RNG) as tensors + JSON -----

def pack_state(state) -> tuple[dict[str, torch.Tensor], str]:
    """Split a nested state (dicts, lists, tuples, numbers, strings, None, tensors) into its tensors and a
    JSON text describing the rest; `unpack_state` rebuilds exactly the same structure, key types included."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(value, where: str):
        if isinstance(value, torch.Tensor):
            assert where not in tensors, f"two tensors of the state would be stored as {where}"
            tensors[where] = value
            return {"tensor": where}
        if isinstance(value, dict):
            items = enumerate(value.items())
            return {"dict": [[encode(k, f"{where}.key{i}"), encode(v, f"{where}.{k}")] for i, (k, v) in items]}
        if isinstance(value, (list, tuple)):
            kind = "list" if isinstance(value, list) else "tuple"
            return {kind: [encode(v, f"{where}.{i}") for i, v in enumerate(value)]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"cannot store a {type(value).__name__} at {where} in a state file")

    return tensors, json.dumps(encode(state, "state"))


def unpack_state(tensors: dict[str, torch.Tensor], text: str, what: str):
    """The inverse of `pack_state`; a description that does not fit the tensors raises ValueError."""
    def decode(value):
        if not isinstance(value, dict):
            return value
        (kind, content), = value.items()
        if kind == "tensor":
            return tensors[content]
        if kind == "dict":
            return {decode(k): decode(v) for k, v in content}
        return (list if kind == "list" else tuple)(decode(v) for v in content)

    try:
        return decode(json.loads(text))
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"{what} is corrupt: its description does not fit its tensors ({error!r})") from None


def _weights(model: SleepLM) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("head.weight")
    return state


def save_model(model: SleepLM, directory: str | os.PathLike) -> Path:
    directory = Path(directory)
    config_json = model.config.to_json()
    save_tensors(directory / WEIGHTS_FILE, _weights(model), MODEL_FORMAT, MODEL_VERSION, {"config": config_json})
    write_text(directory / CONFIG_FILE, json.dumps(json.loads(config_json), indent=2) + "\n")
    return directory


def load_model(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> SleepLM:
    """The model saved in `directory` (a SleepLM, or the model of its config's architecture: model.build_model)."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"model config not found: {config_path}")
    config = SleepConfig.from_json(config_path.read_text())
    tensors, metadata = load_tensors(directory / WEIGHTS_FILE, MODEL_FORMAT, MODEL_VERSION, "model weights",
                                     unchecked=(0,))
    saved = SleepConfig.from_json(metadata.get("config", "{}"))
    if saved != config:
        raise ValueError(f"{config_path} does not match the config the weights were saved with: {config_diff(config, saved)}")
    model = build_model(config)
    expected = _weights(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"weights do not match the config: missing {missing}, unexpected {unexpected}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"weight {name} has shape {tuple(tensor.shape)}, the config needs {tuple(expected[name].shape)}"
            )
    dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}  # masks (bool buffers) aside
    if len(dtypes) != 1:
        raise ValueError(f"weights mix dtypes {sorted(map(str, dtypes))}; expected one")
    model = model.to(dtype=dtypes.pop())  # keep the saved precision
    model.load_state_dict(tensors, strict=not config.tie_embeddings)
    return model.to(map_location)


def config_diff(a: SleepConfig, b: SleepConfig) -> str:
    da, db = json.loads(a.to_json()), json.loads(b.to_json())
    return ", ".join(f"{k}: {da[k]!r} vs {db[k]!r}" for k in sorted(da) if da[k] != db[k])
