"""One decode step of a SleepLM without its modules' Python (issue 19: a sleep that costs less).

A decode step reads one token per row: at the sizes a sleep decodes (a 2-block model, 32 rows) each op takes a
few microseconds, and calling the modules that run them (nn.Module.__call__, attribute look-ups, memory
objects) costs as much again: ~0.2 of ~0.9 ms per step. `DecodeStep` runs the ops `SleepLM.wake` runs, in
the same order on the same tensors, from the weights it takes once per decode, so the numbers are the same
bit for bit (tests/test_decode_step.py holds it to `wake` over configs and steps). The reference is
`SleepLM.wake`; whatever the fast path does not cover goes there:

    a model that is not a plain SleepLM of attention blocks whose MLP is a SwiGLU or memory levels with at
    most one base expert and sigmoid gates (hybrids, routers, other MLPs), a level that is dreaming, any
    forward hook or pre-hook (LoRA copies add theirs), grad enabled, more than one token per row.

Used by replay.continue_from, the imitation's on-policy decode (the largest part of a sleep's time).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

from .layers import Attention, Block, RMSNorm, SwiGLU
from .layers.attention import stream_attention
from .layers.levels import MemoryLevels
from .layers.mlp import swiglu
from .layers.norm import rms_norm
from .model import SleepLM


def _hooked(model: nn.Module) -> bool:
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks
            or getattr(_module, "_global_forward_hooks_always_called", None)):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _plain_mlp(mlp: nn.Module) -> bool:
    if type(mlp) is SwiGLU:
        return True
    if type(mlp) is not MemoryLevels:
        return False
    return all(level.router is None and level.gating == "sigmoid" and len(level.base) <= 1
               and all(type(base) is SwiGLU for base in level.base) for level in mlp.levels)


def supports(model: nn.Module) -> bool:
    """Whether `DecodeStep` runs `model`'s steps itself (else each step is `model.wake`)."""
    if type(model) is not SleepLM or _hooked(model) or type(model.norm) is not RMSNorm:
        return False
    embed = model.embed
    if type(embed) is not nn.Embedding or embed.padding_idx is not None or embed.max_norm is not None:
        return False
    return all(type(block) is Block and type(block.mixer) is Attention and type(block.mixer_norm) is RMSNorm
               and type(block.mlp_norm) is RMSNorm and _plain_mlp(block.mlp) for block in model.blocks)


class DecodeStep:
    """step(tokens [batch, 1], memory) -> (logits [batch, vocab], memory): `model.wake(tokens, memory)`'s
    last logits and memory, bit for bit. Make one per decode: it reads the model's structure, hooks, dreaming
    state and weights once."""

    def __init__(self, model: SleepLM):
        self.model = model
        self.plan = _plan(model) if supports(model) else None

    @property
    def fast(self) -> bool:
        return self.plan is not None

    def __call__(self, tokens: torch.Tensor, memory: list) -> tuple[torch.Tensor, list]:
        if self.plan is None or tokens.dim() != 2 or tokens.shape[1] != 1 or torch.is_grad_enabled():
            logits, _, memory = self.model.wake(tokens, memory)
            return logits[:, -1], memory
        embed, blocks, (norm_weight, eps), head = self.plan
        h = F.embedding(tokens, embed)
        batch = tokens.shape[0]
        new_memory = list(memory)
        for i, (mixer_norm, qkv_weight, shape, attention, out_weight, mlp_norm, mlp) in enumerate(blocks):
            # Block.forward, Attention.forward's streaming branch
            qkv = F.linear(rms_norm(h, *mixer_norm), qkv_weight).view(batch, 1, *shape).permute(2, 0, 3, 1, 4)
            y, new_memory[i] = stream_attention(qkv, memory[i] or Attention.Memory(), *attention)
            h = h + F.linear(y.transpose(1, 2).reshape(batch, 1, -1), out_weight)
            h = h + _mlp(mlp, rms_norm(h, *mlp_norm))
        return F.linear(rms_norm(h, norm_weight, eps), head)[:, -1], new_memory


def _plan(model: SleepLM):
    """The weights and settings a step reads, taken once (None when a level is dreaming: wake's path then)."""
    blocks = []
    for block in model.blocks:
        attention, mlp = block.mixer, block.mlp
        if type(mlp) is SwiGLU:
            mlp_plan = (None, mlp.gate_up.weight, mlp.down.weight)
        else:
            if any(level.dreaming is not None for level in mlp.levels):
                return None
            mlp_plan = tuple((level, *((level.base[0].gate_up.weight, level.base[0].down.weight) if level.base
                                       else (None, None))) for level in mlp.levels)
        blocks.append(((block.mixer_norm.weight, block.mixer_norm.eps), attention.qkv.weight,
                       (3, attention.n_heads, attention.head_dim), (attention.offset, attention.limit, attention.theta),
                       attention.out.weight, (block.mlp_norm.weight, block.mlp_norm.eps), mlp_plan))
    return model.embed.weight, blocks, (model.norm.weight, model.norm.eps), model.head.weight


def _mlp(plan, x: torch.Tensor) -> torch.Tensor:
    if plan[0] is None:  # a SwiGLU
        return swiglu(x, plan[1], plan[2])
    h, out = x, None  # MemoryLevels.forward
    last = len(plan) - 1
    for i, (level, gate_up, down) in enumerate(plan):
        slots = level._slots()  # MemoryLevel.forward of a level without router, not dreaming
        if gate_up is not None:
            level._remember(_routed=(h.shape[:-1], 1))
            y = level.with_pool(h, slots, swiglu(h, gate_up, down))
        else:
            level._remember(_routed=(h.shape[:-1], 0))
            y = level.with_pool(h, slots, None)
        out = y if out is None else out + y
        if i < last:
            h = h + y
    return out
