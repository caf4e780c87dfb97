"""`sleep_hybrid(model, window=L, passes=N, eviction=...)`: a transformers Gated-DeltaNet hybrid wrapped as a
causal LM that sleeps (hybrid.py's SleepHybrid under hf.model's SleepCausalLM forward and generate hooks).

    wrapped = sleep_hybrid(Qwen3_5ForCausalLM(...), window=64, passes=3, eviction="sliding")
    wrapped(input_ids, labels=input_ids)              the training forward: every window of L tokens is
                                                      slept on (N passes, gradients through them all)
    wrapped.generate(prompt, max_new_tokens=...)      decodes through a SleepCache: one wake pass per token,
                                                      sleep and eviction each time the window fills; memory
                                                      bounded by L however long the output
    cache = wrapped(prompt[:, :-1], use_cache=True).cache
    cache.sleep_now(); wrapped.generate(prompt, cache=cache)   sleep on demand after reading, then generate
                                                      (generate feeds the prompt's tokens the cache has not seen)
    wrapped.model(input_ids, passes=Adaptive(ε, N_max), boundaries=[...])   SleepRecurrence.forward itself

The wrapped model shares the original's modules and weights (nothing is copied or re-initialised);
`wrapped.causal_lm` is the original model, which still runs as transformers made it.
"""
from __future__ import annotations

import copy

from torch import nn
from transformers import GenerationMixin, PreTrainedModel

from .hybrid import SleepHybrid, hybrid_config
from .model import SleepCausalLM


class SleepHybridForCausalLM(SleepCausalLM, PreTrainedModel, GenerationMixin):
    """A transformers GDN hybrid that sleeps; `model` is its SleepHybrid, `causal_lm` the original model."""

    base_model_prefix = "model"
    main_input_name = "input_ids"
    _supports_sdpa = True  # what PreTrainedModel's init checks; the layers are the wrapped model's (see __init__)

    def __init__(self, sleeper: SleepHybrid):
        # A copy: PreTrainedModel's init settles the attention and experts implementations on the config it is
        # given (checked against this class), and the wrapped model's own config must stay as it was. The layers
        # run with the wrapped model's settings, which the copy then states.
        original = sleeper.causal_lm.config
        config = copy.deepcopy(original)
        settled = ("_attn_implementation_internal", "_experts_implementation_internal")
        for name in settled:
            setattr(config, name, None)
        super().__init__(config)
        for name in settled:
            setattr(self.config, name, getattr(original, name, None))
        self.model = sleeper
        self.generation_config = sleeper.causal_lm.generation_config
        self.post_init()

    @property
    def causal_lm(self) -> nn.Module:
        return self.model.causal_lm

    @property
    def sleep_config(self):
        return self.model.config

    def _init_weights(self, module) -> None:
        """Nothing: every weight is the wrapped model's own, as it was."""

    def get_input_embeddings(self):
        return self.causal_lm.get_input_embeddings()

    def get_output_embeddings(self):
        return self.causal_lm.get_output_embeddings()


def sleep_hybrid(model: nn.Module, window: int, passes: int = 1, eviction: str = "hard", loop_start: int = 0,
                 loop_end: int | None = None) -> SleepHybridForCausalLM:
    """`model` (a transformers Qwen3.5 / Qwen3-Next / OLMo-Hybrid causal LM) wrapped to sleep: its
    full-attention layers attend within windows of `window` (L) tokens, evicted when full ("hard": the KV cache
    dropped; "sliding": the final pass's last L − 1 keys/values kept), and each window is slept on with
    `passes` (N) passes through layers [loop_start, loop_end) (default all), the GatedDeltaNet states carried.
    Refuses, naming what is missing, a model without Gated-DeltaNet layers or with layers of another kind."""
    config = hybrid_config(model, window, passes, eviction, loop_start, loop_end)
    return SleepHybridForCausalLM(SleepHybrid(model, config))
