"""What each letter of a layout builds: the one table of block kinds (spec: sleep-recurrence.md, Model).

    "A"  attention: causal softmax attention over the window; keeps the window's KV cache (AttentionMemory)
    "G"  fast weights: Gated-DeltaNet; keeps the fast-weight state S across windows (FastWeightMemory)

A block is a pre-norm residual pair (mixer, MLP) built from the modules it is given (layers.Block), so a
new MLP kind (paper 2's memory levels) goes into the same blocks. Everything else that needs to know what a
letter means (the config's check of a layout, the stream's memory files, FLOP estimates) asks this table
or the built modules, never the letter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from torch import nn

from .layers import Attention, Block, GatedDeltaNet, SwiGLU

if TYPE_CHECKING:
    from .config import SleepConfig


@dataclass(frozen=True)
class BlockKind:
    name: str
    mixer: type[nn.Module]  # its class attribute `Memory` is the memory it keeps
    build: Callable[["SleepConfig"], nn.Module]  # the mixer with the config's dimensions

    @property
    def memory(self) -> type:
        return self.mixer.Memory


def _attention(config: "SleepConfig") -> Attention:
    return Attention(
        config.d_model, config.n_heads, config.head_dim, rope_theta=config.rope_theta,
        retained_tokens=config.retained_tokens, window=None if config.eviction == "none" else config.window,
    )


def _fast_weights(config: "SleepConfig") -> GatedDeltaNet:
    return GatedDeltaNet(
        config.d_model, config.n_fast_heads, config.fast_key_dim, config.fast_value_dim,
        conv_size=config.conv_size, norm_eps=config.norm_eps,
    )


BLOCK_KINDS: dict[str, BlockKind] = {
    "A": BlockKind("attention", Attention, _attention),
    "G": BlockKind("fast weights (Gated DeltaNet)", GatedDeltaNet, _fast_weights),
}


def build_block(letter: str, config: "SleepConfig") -> Block:
    """The block for one letter of config.layout: its mixer, then the config's MLP (in this order, so that
    parameters are created, and initialised, in the same order as always)."""
    mixer = BLOCK_KINDS[letter].build(config)
    mlp = SwiGLU(config.d_model, config.mlp_hidden)
    return Block(mixer, mlp, config.d_model, config.norm_eps)
