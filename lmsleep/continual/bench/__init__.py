"""`lmsleep continual bench NAME`: the benchmarks that test paper 2's claims at CPU scale (issue 13).
Each is a module of this package (see runner.py for what it exports); MODULES names them."""
from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

MODULES = {"knowledge": "knowledge", "sequential": "sequential", "puzzles": "puzzles_bench",
           "efficiency": "efficiency", "levels": "levels_bench", "squad": "squad"}  # name -> module of this package


def _module_name(name: str) -> str:
    if name not in MODULES:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(MODULES)}")
    return f"{__name__}.{MODULES[name]}"


def load(name: str):
    """The module of benchmark `name` (imported on demand: each pulls in its own world)."""
    return importlib.import_module(_module_name(name))


def help_line(name: str) -> str:
    """Benchmark `name`'s HELP, read from its module's source without importing it, so that listing the
    benchmarks (`lmsleep continual bench --help`) pulls in no world. HELP stays the module's own: its
    report opens with it."""
    source = Path(importlib.util.find_spec(_module_name(name)).origin).read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "HELP" for target in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"benchmark {name!r} has no HELP string")
