"""lmsleep models in Hugging Face transformers (the optional `hf` extra: pip install lmsleep[hf]).

Importing this package registers the "lmsleep" model type with AutoConfig and AutoModelForCausalLM:

    import lmsleep.hf
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("runs/r110-hf")   # made by `lmsleep hf-export`
    model.generate(prompt, max_new_tokens=100)                     # decodes through wake and sleep

config.py: SleepLMConfig (SleepConfig's fields as a PretrainedConfig); cache.py: SleepCache (the
wake/sleep memory as a transformers cache); model.py: SleepLMForCausalLM (the same SleepLM, wrapped).
sleep_hybrid(model, window=L, passes=N) makes transformers' own Gated-DeltaNet hybrids (Qwen3.5, Qwen3-Next,
OLMo-Hybrid) sleep (hybrid_model.py; hybrid.py, hybrid_layers.py and gdn.py run their layers on lmsleep's memory).
"""
try:
    import transformers  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("lmsleep.hf needs transformers: pip install 'lmsleep[hf]'") from error

from transformers import AutoConfig, AutoModelForCausalLM

from .cache import SleepCache
from .config import MODEL_TYPE, SleepLMConfig
from .hybrid_model import SleepHybridForCausalLM, sleep_hybrid
from .model import SleepLMForCausalLM

AutoConfig.register(MODEL_TYPE, SleepLMConfig, exist_ok=True)
AutoModelForCausalLM.register(SleepLMConfig, SleepLMForCausalLM, exist_ok=True)

__all__ = ["SleepCache", "SleepHybridForCausalLM", "SleepLMConfig", "SleepLMForCausalLM", "sleep_hybrid"]
