"""`lmsleep hf-export`: convert a model trained with `lmsleep train` to Hugging Face transformers' format.

    lmsleep hf-export runs/r110 runs/r110-hf      # a run directory (its checkpoint/) or a model directory

OUT_DIR then loads with `import lmsleep.hf; AutoModelForCausalLM.from_pretrained(OUT_DIR)` (needs the `hf`
extra: pip install 'lmsleep[hf]'). A run of a transformers architecture ("architecture": "qwen3.5") is written as
that architecture's own model (Qwen3_5ForCausalLM.from_pretrained(OUT_DIR)), to wrap again with
lmsleep.hf.sleep_hybrid at the window and N it was trained with.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .io import CONFIG_FILE, load_model
from .rundir import RunDirectory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN_OR_MODEL_DIR",
                        help="a run directory of `lmsleep train` (its checkpoint/ is exported) or a model directory")
    parser.add_argument("out", metavar="OUT_DIR", help="where to write config.json and model.safetensors")
    parser.add_argument("--overwrite", action="store_true", help="write into OUT_DIR even if it is not empty")


def model_directory(source: str) -> Path:
    """The model directory of `source`: itself when it holds a model, else the run directory's checkpoint/."""
    path = Path(source)
    if not path.is_dir():
        raise FileNotFoundError(f"RUN_OR_MODEL_DIR: no directory at {path}")
    return path if (path / CONFIG_FILE).is_file() else RunDirectory(path).checkpoint_path


def run(args: argparse.Namespace) -> int:
    try:  # transformers is optional: imported only when this command runs
        from .hf import SleepLMForCausalLM
    except ImportError as error:
        print(f"lmsleep hf-export: error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not args.overwrite)):
        raise ValueError(f"OUT_DIR {out} exists and is not an empty directory (--overwrite to write into it)")
    model = load_model(model_directory(args.source))
    config = model.config
    if config.architecture != "lmsleep":  # a transformers model made to sleep: its own model, as transformers saves it
        model.causal_lm.save_pretrained(out)
        print(f"wrote {out}: {type(model.causal_lm).__name__}, trained to sleep with window L = {config.window}, "
              f"N = {config.sleep_passes}, eviction {config.eviction}; load it with "
              f"{type(model.causal_lm).__name__}.from_pretrained({str(out)!r}) and wrap it with "
              f"lmsleep.hf.sleep_hybrid(model, window={config.window}, passes={config.sleep_passes}, "
              f"eviction={config.eviction!r})")
        return 0
    SleepLMForCausalLM.from_sleep_lm(model).save_pretrained(out)
    print(f"wrote {out}: layout {config.layout}, window L = {config.window}, sleep passes N = "
          f"{config.sleep_passes}, eviction {config.eviction}; load it with `import lmsleep.hf` and "
          f"AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0
