"""`lmsleep continual bench NAME`: the benchmarks that test paper 2's claims at CPU scale (issue 13).
Each is a module of this package (see runner.py for what it exports); MODULES names them."""
from __future__ import annotations

import importlib

MODULES = {"knowledge": "knowledge", "sequential": "sequential", "puzzles": "puzzles_bench",
           "efficiency": "efficiency", "levels": "levels_bench"}  # name -> module of this package


def load(name: str):
    """The module of benchmark `name` (imported on demand: each pulls in its own world)."""
    if name not in MODULES:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(MODULES)}")
    return importlib.import_module(f"{__name__}.{MODULES[name]}")
