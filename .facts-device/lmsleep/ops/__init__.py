"""Pure tensor functions: the fast-weight rule (package `delta_rule/`: the reference, the chunked torch
paths, the native C op, fla's kernel on CUDA, and the dispatcher that picks among them) and windowed attention."""
from .delta_rule import *  # noqa: F403 - the op's public names, listed once in delta_rule/__init__.py
from .delta_rule import __all__
