"""lmsleep: sleep phases for language models (offline recurrence into fast weights, and consolidation)."""
from .adaptive import Adaptive
from .config import SleepConfig
from .model import SleepLM

__version__ = "0.1.0"
__all__ = ["Adaptive", "SleepConfig", "SleepLM", "__version__"]
