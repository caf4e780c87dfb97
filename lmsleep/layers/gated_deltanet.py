"""Gated-DeltaNet mixer: the fast-weight block whose state S carries memory across windows."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import auto_backend, gated_delta_rule
from .norm import GatedRMSNorm


@dataclass
class FastWeightMemory:
    """state: S, [batch, heads, K, V]. conv_tail: the last conv_size − 1 pre-convolution inputs of this
    window ([batch, conv_size − 1, channels]); None at a window start (the convolution is zero-padded)."""

    state: torch.Tensor | None = None
    conv_tail: torch.Tensor | None = None

    def next_pass(self) -> "FastWeightMemory":
        """A further sleep pass carries S over and restarts the convolution at the window start."""
        return FastWeightMemory(state=self.state)

    def evict(self, retain: int) -> "FastWeightMemory":
        """Only S crosses a window boundary."""
        return FastWeightMemory(state=self.state)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in ("state", "conv_tail") if getattr(self, name) is not None}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "FastWeightMemory":
        return cls(**tensors)


def decay_init(heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial (A_log, dt_bias) of the decay g_t = −exp(A_log)·softplus(a(x) + dt_bias), as in Mamba / Gated
    DeltaNet: A ~ U(1, 16) and softplus(dt_bias) log-uniform in [1e-3, 1e-1], so that at the start of training
    the state S decays slowly enough to carry a window's memory (lmsleep.hf.hybrid_lm initialises transformers'
    Gated-DeltaNet layers with it too)."""
    A_log = torch.log(torch.empty(heads).uniform_(1, 16))
    dt = torch.exp(torch.empty(heads).uniform_(torch.log(torch.tensor(1e-3)), torch.log(torch.tensor(1e-1))))
    return A_log, dt + torch.log(-torch.expm1(-dt))


class GatedDeltaNet(nn.Module):
    """Projections → short causal conv + SiLU → L2-normalised q, k → gated delta rule → gated RMSNorm → out.

    d_model: model width; n_heads fast-weight heads with keys of key_dim and values of value_dim (the state
    S is [n_heads, key_dim, value_dim]); conv_size: taps of the short causal convolution.
    """

    Memory = FastWeightMemory

    def __init__(self, d_model: int, n_heads: int, key_dim: int, value_dim: int, *, conv_size: int = 4,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.heads, self.key_dim, self.value_dim = n_heads, key_dim, value_dim
        key_width, value_width = self.heads * self.key_dim, self.heads * self.value_dim
        self.channels = 2 * key_width + value_width
        self.qkv = nn.Linear(d_model, self.channels, bias=False)
        self.conv = nn.Conv1d(self.channels, self.channels, conv_size, groups=self.channels, bias=False)
        self.decay_input = nn.Linear(d_model, self.heads, bias=False)  # a(x)
        self.write_input = nn.Linear(d_model, self.heads, bias=False)  # b(x)
        self.gate = nn.Linear(d_model, value_width, bias=False)  # g(x), the output gate
        A_log, dt_bias = decay_init(self.heads)
        self.A_log, self.dt_bias = nn.Parameter(A_log), nn.Parameter(dt_bias)
        self.norm = GatedRMSNorm(self.value_dim, eps=norm_eps)
        self.out = nn.Linear(value_width, d_model, bias=False)
        # Per-head scalars computed from x are gates, not hidden matrices: Muon's orthogonalisation does
        # not suit them, so they are tagged for AdamW (SleepLM.optimizer_groups reads the tag).
        for gate in (self.decay_input.weight, self.write_input.weight):
            gate.optimizer_group = "adamw"
        self.use_fla = True  # on CUDA, when flash-linear-attention is installed

    def extra_flops_per_token(self, context: int) -> float:
        """Forward FLOPs per token beyond the weights (not counted: the state update is O(K·V) per token)."""
        return 0.0

    def _short_conv(self, x: torch.Tensor, tail: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal depthwise convolution of x [batch, new, channels] continuing after `tail`."""
        batch, new, channels = x.shape
        width = self.conv.kernel_size[0] - 1
        if tail is None:
            tail = x.new_zeros(batch, width, channels)
        padded = torch.cat([tail, x], dim=1)
        # Depthwise with a kernel of ~4 taps: a few shifted multiply-adds beat conv1d (and its slow backward).
        weight = self.conv.weight[:, 0, :]  # [channels, taps], the last tap multiplies the current token
        y = sum(padded[:, i : i + new] * weight[:, i] for i in range(width + 1))
        return F.silu(y), padded[:, padded.shape[1] - width :]

    def forward(self, x: torch.Tensor, memory: FastWeightMemory | None) -> tuple[torch.Tensor, FastWeightMemory]:
        """x: [batch, new, d_model], the next tokens of the current window."""
        memory = memory or FastWeightMemory()
        batch, new, _ = x.shape
        mixed, conv_tail = self._short_conv(self.qkv(x), memory.conv_tail)
        key_width = self.heads * self.key_dim
        q, k, v = mixed.split([key_width, key_width, self.heads * self.value_dim], dim=-1)
        q = F.normalize(q.view(batch, new, self.heads, self.key_dim), dim=-1, eps=1e-6)
        k = F.normalize(k.view(batch, new, self.heads, self.key_dim), dim=-1, eps=1e-6)
        v = v.view(batch, new, self.heads, self.value_dim)
        decay = -self.A_log.exp() * F.softplus(self.decay_input(x) + self.dt_bias)  # g_t = log α_t ≤ 0
        write_strength = torch.sigmoid(self.write_input(x))  # β_t
        # The op picks its backend (fla on CUDA when installed); use_fla=False leaves fla out of that choice.
        backend = "auto" if self.use_fla else auto_backend(q, k, v, decay, write_strength, memory.state, allow_fla=False)
        o, state = gated_delta_rule(
            q, k, v, decay, write_strength, initial_state=memory.state, output_final_state=True, backend=backend
        )
        o = self.norm(o, self.gate(x).view(batch, new, self.heads, self.value_dim))
        return self.out(o.reshape(batch, new, -1)), FastWeightMemory(state, conv_tail)
