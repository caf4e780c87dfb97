"""SleepLMForCausalLM: an lmsleep SleepLM as a transformers causal language model (from_pretrained,
save_pretrained, generate), wrapping the same SleepLM rather than a second implementation.

    forward(input_ids, cache=None)            the training forward, SleepLM.forward: the model sleeps on
                                              every full window, gradients flow; no cache is returned
    forward(input_ids, use_cache=True)        the same wake logits through a new SleepCache, which is
    forward(input_ids, cache=a_sleep_cache)   returned (or continued): what generate() does, step by step

generate() therefore decodes through the wake/sleep engine: one wake pass per token, N passes of sleep and
an eviction each time the window of L tokens fills.
"""
from __future__ import annotations

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.generation.configuration_utils import GenerationMode
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..model import SleepLM
from .cache import SleepCache
from .config import SleepLMConfig


class SleepCausalLM:
    """What a transformers causal LM over a model that sleeps (`self.model`: a SleepRecurrence, e.g. a SleepLM or
    a hybrid.SleepHybrid) needs: the forward (training forward, or a SleepCache fed), generate()'s hooks."""

    _is_stateful = True  # the memory cannot be rolled back (generate refuses assisted decoding)
    _supported_generation_modes = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE,
                                   GenerationMode.BEAM_SEARCH, GenerationMode.BEAM_SAMPLE)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not make a DynamicCache: forward makes the SleepCache (use_cache=True)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: SleepCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: SleepCache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """input_ids [batch, time]; labels [batch, time] (HF convention: shifted inside, -100 ignored);
        cache (`past_key_values` is its older name): a SleepCache of this model to continue, or None with
        use_cache=True for a new one. attention_mask may only be all ones (models that sleep take no padding:
        batch prompts of equal length)."""
        if past_key_values is not None:
            if cache is not None:
                raise ValueError("give the cache as `cache` or as `past_key_values`, not both")
            cache = past_key_values
        for name in ("inputs_embeds", "output_attentions", "output_hidden_states"):
            if kwargs.pop(name, None):
                raise ValueError(f"{name} is not supported by models that sleep")
        if input_ids is None:
            raise ValueError("input_ids is required")
        if attention_mask is not None and not bool((attention_mask == 1).all()):
            raise ValueError("attention_mask masks some tokens, but models that sleep take no padding: give prompts "
                             "of equal length in a batch (or one prompt at a time)")
        if cache is None and use_cache:
            cache = SleepCache(self.model)
        if cache is not None:
            self._check_cache(cache)
            logits = cache.feed(input_ids)
        else:
            logits = self.model(input_ids)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output = CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)
        return output if return_dict else output.to_tuple()

    def _check_cache(self, cache) -> None:
        if not isinstance(cache, SleepCache):
            raise TypeError(f"cache must be a SleepCache of this lmsleep model (lmsleep.hf.SleepCache), got "
                            f"{type(cache).__name__}: caches of other models do not hold lmsleep's memory")
        if cache.model is not self.model:
            differs = "" if cache.model.config == self.model.config else " (another config)"
            raise ValueError(f"this SleepCache holds the memory of another model{differs}: a cache can only be "
                             "continued by the model that filled it")


class SleepLMForCausalLM(SleepCausalLM, PreTrainedModel, GenerationMixin):
    config_class = SleepLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _tied_weights_keys = {"model.head.weight": "model.embed.weight"}  # applied when config.tie_embeddings

    def __init__(self, config: SleepLMConfig, model: SleepLM | None = None):
        """`model`: an existing SleepLM to wrap (its config must be the one `config` describes); None builds
        one from `config`, initialised as SleepLM(config) initialises (same order, same random numbers)."""
        if not isinstance(config, SleepLMConfig):
            raise TypeError(f"SleepLMForCausalLM needs a SleepLMConfig (model_type 'lmsleep'), got "
                            f"{type(config).__name__} (model_type {getattr(config, 'model_type', None)!r})")
        sleep_config = config.sleep_config()
        super().__init__(config)
        if model is None:
            model = SleepLM(sleep_config)
        elif not isinstance(model, SleepLM):
            raise TypeError(f"model must be an lmsleep SleepLM, got {type(model).__name__}")
        elif model.config != sleep_config:
            raise ValueError(f"model's config {model.config} is not the one config describes: {sleep_config}")
        self.model = model
        self.post_init()

    @classmethod
    def from_sleep_lm(cls, model: SleepLM) -> "SleepLMForCausalLM":
        """Wrap a SleepLM (its weights are shared, not copied)."""
        if not isinstance(model, SleepLM):
            raise TypeError(f"model must be an lmsleep SleepLM, got {type(model).__name__}")
        return cls(SleepLMConfig.from_sleep_config(model.config), model)

    def _init_weights(self, module) -> None:
        """Nothing: SleepLM initialises its own weights when built, and from_pretrained loads every one."""

    @classmethod
    def get_init_context(cls, *args, **kwargs):
        """from_pretrained builds the model in these contexts before loading its weights. Not on the meta
        device: lmsleep's layers compute parts of their initialisation from tensors (GatedDeltaNet's dt range),
        which meta tensors cannot give. Built for real, under a forked random state, so that loading a model
        leaves the caller's random numbers as they were."""
        contexts = [c for c in super().get_init_context(*args, **kwargs)
                    if not (isinstance(c, torch.device) and c.type == "meta")]
        return [*contexts, torch.random.fork_rng(devices=[])]

    def get_input_embeddings(self):
        return self.model.embed

    def get_output_embeddings(self):
        return self.model.head
