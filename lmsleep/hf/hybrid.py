"""Paper 1's sleep for transformers' Gated-DeltaNet hybrids (Qwen3.5, Qwen3-Next, OLMo-Hybrid).

    import lmsleep.hf
    model = lmsleep.hf.sleep_hybrid(Qwen3_5ForCausalLM.from_pretrained(...), window=512, passes=4)
    model(input_ids, labels=input_ids).loss.backward()   # the training forward: sleep with gradients
    model.generate(prompt, max_new_tokens=10_000)         # wake per token, sleep at each eviction

The full-attention layers attend within a window of L tokens whose KV cache is evicted when it fills (hard:
dropped; sliding: the last L − 1 keys/values of the final pass kept), and at each eviction the model sleeps:
N passes over the window through the looped layer range, the GatedDeltaNet states S carried from pass to
pass (sleep-recurrence.md, Algorithm 1). The algorithm is lmsleep.recurrence's, the one SleepLM runs;
`SleepHybrid` gives it the transformers model's layers (hybrid_layers.run_layer: each layer's own forward
on lmsleep's memory, its GatedDeltaNet rule computed by lmsleep's op, gdn.py). The weights are the
pretrained model's own, shared, never copied. A model that was not trained to sleep must be fine-tuned
with it (the paper fine-tuned its pretrained models).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import validate
from ..config import retained_tokens
from ..layers import AttentionMemory, FastWeightMemory
from ..model import check_token_ids
from ..recurrence import SleepRecurrence
from .gdn import ROUTED_FUNCTIONS, routed
from .hybrid_layers import ATTENTION, FAST_WEIGHTS, WindowKV, run_layer

# The architectures whose layers this module knows: fast-weight layer class → attention layer class.
SUPPORTED = {
    "Qwen3_5GatedDeltaNet": "Qwen3_5Attention",  # Qwen3.5 (dense)
    "Qwen3_5MoeGatedDeltaNet": "Qwen3_5MoeAttention",  # Qwen3.5 MoE
    "Qwen3NextGatedDeltaNet": "Qwen3NextAttention",  # Qwen3-Next
    "OlmoHybridGatedDeltaNet": "OlmoHybridAttention",  # OLMo-Hybrid
}
SUPPORTED_NAMES = "Qwen3.5 (Qwen3_5ForCausalLM), Qwen3.5-MoE, Qwen3-Next and OLMo-Hybrid"
EVICTIONS = ("hard", "sliding")


@dataclass(frozen=True)
class HybridSleepConfig:
    """How a transformers hybrid sleeps: window L, N = sleep_passes, eviction, looped layers
    [loop_start, loop_end) (loop_end None: to the last layer), and the model's vocab_size."""

    window: int
    sleep_passes: int
    eviction: str
    loop_start: int
    loop_end: int
    vocab_size: int

    @property
    def retained_tokens(self) -> int:
        return retained_tokens(self.window, self.eviction)


class SleepHybrid(SleepRecurrence, nn.Module):
    """A transformers GDN hybrid (`causal_lm`, shared) as the stack of blocks lmsleep.recurrence sleeps."""

    def __init__(self, causal_lm: nn.Module, config: HybridSleepConfig):
        super().__init__()
        self.causal_lm = causal_lm
        self.config = config
        self.kinds = layer_kinds(causal_lm)
        self.before = range(0, config.loop_start)
        self.looped = range(config.loop_start, config.loop_end)
        self.after = range(config.loop_end, len(self.kinds))
        self._modeling_modules = sorted({sys.modules[type(layer.linear_attn).__module__]
                                         for layer, kind in zip(self.layers, self.kinds) if kind == FAST_WEIGHTS},
                                        key=lambda module: module.__name__)

    @property
    def layers(self) -> nn.ModuleList:
        return self.causal_lm.model.layers

    def layout_description(self) -> str:
        return f"{type(self.causal_lm).__name__} with layer_types {list(self.kinds)}"

    def check_tokens(self, tokens: torch.Tensor, name: str = "tokens") -> None:
        check_token_ids(tokens, self.config.vocab_size, name)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.causal_lm.get_input_embeddings()(tokens)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.causal_lm.get_output_embeddings()(self.causal_lm.model.norm(h))

    def empty_memory(self) -> list:
        return [WindowKV(AttentionMemory()) if kind == ATTENTION else FastWeightMemory() for kind in self.kinds]

    def fast_blocks(self) -> list[int]:
        return [i for i in self.looped if self.kinds[i] == FAST_WEIGHTS]

    def _rotary(self, h: torch.Tensor, positions: torch.Tensor):
        rotary = self.causal_lm.model.rotary_emb
        return None if rotary is None else rotary(h, positions)  # OLMo-Hybrid may run without RoPE (NoPE)

    def _run_blocks(self, indices: range, h: torch.Tensor, memory: list) -> tuple[torch.Tensor, list]:
        new = list(memory)
        with routed(self._modeling_modules):
            for i in indices:
                h, new[i] = run_layer(self.layers[i], self.kinds[i], h, memory[i], self.config.window, self._rotary)
        return h, new

    # ----- accounting, for training (SleepRecurrence's loss, optimizer_groups and estimate_flops use it) -----

    def block_modules(self) -> nn.Module:
        return self.layers

    def block_flops_per_token(self, i: int, context: int) -> float:
        """2 per matrix weight of layer i's linear layers, plus attention's scores and weighted sum over
        `context` keys (4·context·heads·head_dim; the Gated-DeltaNet rule's O(K·V) per token not counted)."""
        matrices = sum(m.weight.numel() for m in self.layers[i].modules() if isinstance(m, nn.Linear))
        if self.kinds[i] != ATTENTION:
            return 2 * matrices
        config = self.causal_lm.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return 2 * matrices + 4 * context * config.num_attention_heads * head_dim

    def head_flops_per_token(self) -> float:
        return 2 * self.causal_lm.get_output_embeddings().weight.numel()

    def run_blocks(self, indices: range, h, memory: list, use_checkpoint: bool = False):
        """Layers `indices` on h [batch, new, hidden] continuing `memory`; returns (h, memory)."""
        if self.training and any(getattr(layer, "gradient_checkpointing", False) for layer in self.layers):
            raise ValueError("transformers' gradient checkpointing drops the cache that carries the sleep's memory: "
                             "call model.gradient_checkpointing_disable() and pass use_checkpoint=True to "
                             "the forward instead (lmsleep's checkpointing, per pass)")
        if use_checkpoint and torch.is_grad_enabled() and len(indices):
            return checkpoint(self._run_blocks, indices, h, memory, use_reentrant=False)
        return self._run_blocks(indices, h, memory)


def layer_kinds(causal_lm: nn.Module) -> list[str]:
    """config.layer_types of a supported GDN hybrid, checked against its layers; a clear refusal otherwise,
    naming what is missing."""
    name = type(causal_lm).__name__
    config = getattr(causal_lm, "config", None)
    kinds = getattr(config, "layer_types", None)
    layers = getattr(getattr(causal_lm, "model", None), "layers", None)
    if kinds is None or layers is None:
        raise ValueError(f"sleep_hybrid needs a transformers Gated-DeltaNet hybrid causal LM ({SUPPORTED_NAMES}); "
                         f"{name} has no {'config.layer_types' if kinds is None else 'model.layers'}: it has no "
                         "linear-attention (Gated-DeltaNet) layers to carry memory across windows")
    kinds = list(kinds)[: len(layers)]
    unknown = sorted(set(kinds) - {ATTENTION, FAST_WEIGHTS})
    if unknown:
        raise ValueError(f"sleep_hybrid supports layers of types {FAST_WEIGHTS!r} (Gated-DeltaNet) and {ATTENTION!r}; "
                         f"{name} has layers of type {unknown}, which are not supported yet")
    if FAST_WEIGHTS not in kinds:
        raise ValueError(f"sleep_hybrid needs linear-attention (Gated-DeltaNet) layers, whose state S carries memory "
                         f"across windows; {name} has none (layer_types {kinds})")
    for i, (layer, kind) in enumerate(zip(layers, kinds)):
        mixer = getattr(layer, "linear_attn" if kind == FAST_WEIGHTS else "self_attn", None)
        mixer_name = type(mixer).__name__
        if kind == FAST_WEIGHTS and mixer_name not in SUPPORTED:
            raise ValueError(f"sleep_hybrid supports the Gated-DeltaNet layers of {SUPPORTED_NAMES} "
                             f"({', '.join(SUPPORTED)}); layer {i} of {name} is a linear-attention layer of another "
                             f"kind ({mixer_name}), not supported yet")
        if kind == FAST_WEIGHTS and not all(hasattr(sys.modules[type(mixer).__module__], f) for f in ROUTED_FUNCTIONS):
            raise ValueError(f"layer {i} of {name} ({mixer_name}) does not compute its rule through "
                             f"{' / '.join(ROUTED_FUNCTIONS)}: this transformers version is not supported yet")
        if kind == ATTENTION and mixer_name not in SUPPORTED.values():
            raise ValueError(f"sleep_hybrid supports the attention layers of {SUPPORTED_NAMES}; layer {i} of {name} is "
                             f"an attention layer of another kind ({mixer_name}), not supported yet")
    return kinds


def hybrid_config(causal_lm: nn.Module, window: int, passes: int, eviction: str, loop_start: int,
                  loop_end: int | None) -> HybridSleepConfig:
    """The checked settings; each bad value raises a message naming its argument."""
    layers = len(layer_kinds(causal_lm))
    validate.positive_int("window", window)
    validate.positive_int("passes", passes)
    validate.one_of("eviction", eviction, EVICTIONS)
    validate.integer("loop_start", loop_start, 0, layers - 1, f"a layer of the model's {layers}")
    loop_end = layers if loop_end is None else loop_end
    validate.integer("loop_end", loop_end, loop_start + 1, layers, "after loop_start, at most the number of layers")
    return HybridSleepConfig(window, passes, eviction, loop_start, loop_end, causal_lm.config.vocab_size)
