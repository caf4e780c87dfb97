"""HybridLM: the model of a SleepConfig whose architecture is a transformers Gated-DeltaNet hybrid ("qwen3.5"):
transformers' own Qwen3_5ForCausalLM, built randomly initialised from the config's dimensions, made to sleep
by SleepHybrid (the algorithm SleepLM runs), with what lmsleep.train needs of a model (loss, optimizer groups,
FLOPs; lmsleep.recurrence). `lmsleep train` and `lmsleep sweep` with "model": {"architecture": "qwen3.5", ...}
train it as they train a SleepLM, and lmsleep.io saves, checks and loads it the same way.

    SleepConfig field   Qwen3_5TextConfig field
    layout "AG"         layer_types ["full_attention", "linear_attention"] (one letter per layer)
    d_model             hidden_size
    n_heads, head_dim   num_attention_heads (= num_key_value_heads), head_dim
    n_fast_heads        linear_num_key_heads = linear_num_value_heads
    fast_key_dim        linear_key_head_dim;  fast_value_dim: linear_value_head_dim
    mlp_hidden          intermediate_size;  conv_size: linear_conv_kernel_dim
    rope_theta, norm_eps   rope_parameters' rope_theta (Qwen3.5's partial rotary kept), rms_norm_eps

The rest is Qwen3.5's own (gated attention output, q/k norms, its initialisation), but for the decay of its
Gated-DeltaNet layers: transformers initialises dt_bias = 1 and A ~ U(0.01, 16), a placeholder for pretrained
weights under which the state decays by exp(−1.3·A) per token, forgetting within a token or two, so that at the
start of training nothing crosses a window (after 50 steps of the Rule 110 main job its sleep changed the
logits by ~1e-6; 0.05 with this init). A model trained from
scratch here starts as Gated DeltaNet (fla) and lmsleep's own layer do (layers.gated_deltanet.decay_init).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import SleepConfig
from ..layers.gated_deltanet import decay_init
from .hybrid import SleepHybrid, hybrid_config
from .hybrid_layers import ATTENTION, FAST_WEIGHTS

LAYER_TYPES = {"A": ATTENTION, "G": FAST_WEIGHTS}  # layout letter → transformers' layer type
QWEN3_5_PARTIAL_ROTARY = 0.25  # Qwen3.5's default, which an explicit rope_parameters would otherwise drop


def qwen3_5(config: SleepConfig) -> nn.Module:
    """A randomly initialised transformers Qwen3_5ForCausalLM with `config`'s dimensions."""
    try:
        from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig
    except ImportError as error:
        raise ImportError(f"architecture 'qwen3.5' needs a transformers with Qwen3.5 (Qwen3_5ForCausalLM): {error}"
                          ) from None
    unknown = sorted(set(config.layout) - set(LAYER_TYPES))
    if unknown:
        raise ValueError(f"SleepConfig.layout {config.layout!r}: architecture 'qwen3.5' has layers 'A' (full attention) "
                         f"and 'G' (Gated-DeltaNet) only, not {unknown}")
    return Qwen3_5ForCausalLM(Qwen3_5TextConfig(
        vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.mlp_hidden,
        num_hidden_layers=len(config.layout), layer_types=[LAYER_TYPES[letter] for letter in config.layout],
        num_attention_heads=config.n_heads, num_key_value_heads=config.n_heads, head_dim=config.head_dim,
        linear_num_key_heads=config.n_fast_heads, linear_num_value_heads=config.n_fast_heads,
        linear_key_head_dim=config.fast_key_dim, linear_value_head_dim=config.fast_value_dim,
        linear_conv_kernel_dim=config.conv_size, rms_norm_eps=config.norm_eps, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta,
                         "partial_rotary_factor": QWEN3_5_PARTIAL_ROTARY},
        pad_token_id=None, bos_token_id=None, eos_token_id=None,
    ))


BUILDERS = {"qwen3.5": qwen3_5}  # SleepConfig.architecture → its transformers model


class HybridLM(SleepHybrid):
    """A SleepConfig's transformers hybrid, trained by lmsleep.train (SleepHybrid has the loss, optimizer groups
    and FLOPs). `config` is the SleepConfig (what lmsleep.io saves); `causal_lm` the transformers model, whose
    weights are the state_dict's."""

    def __init__(self, config: SleepConfig):
        if config.architecture not in BUILDERS:
            raise ValueError(f"HybridLM builds architectures {sorted(BUILDERS)}, not {config.architecture!r}")
        causal_lm = BUILDERS[config.architecture](config)
        super().__init__(causal_lm, hybrid_config(causal_lm, config.window, config.sleep_passes, config.eviction,
                                                  config.loop_start, config.loop_end))
        self.config = config  # the SleepConfig: the same window, N, eviction and vocab_size the sleep runs with
        for layer, kind in zip(self.layers, self.kinds):
            if kind != FAST_WEIGHTS:
                continue
            gdn = layer.linear_attn
            with torch.no_grad():  # a decay that keeps memory from the start (see the module's docstring)
                for parameter, value in zip((gdn.A_log, gdn.dt_bias), decay_init(gdn.num_v_heads)):
                    parameter.copy_(value)
            for gate in (gdn.in_proj_a.weight, gdn.in_proj_b.weight):  # per-head decay and write-strength
                gate.optimizer_group = "adamw"  # gates: AdamW, as lmsleep's GatedDeltaNet
