"""lmsleep: sleep phases for language models (offline recurrence into fast weights, and consolidation)."""
import importlib

__version__ = "0.1.0"
__all__ = ["Adaptive", "SleepConfig", "SleepLM", "__version__"]
_EXPORTS = {"Adaptive": "adaptive", "SleepConfig": "config", "SleepLM": "model"}  # name -> module of this package


def __getattr__(name: str):
    # Imported on first use, so that `import lmsleep` (and the command line's start) does not load torch.
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
