"""SwiGLU's gate: silu(gate) · up of a [..., 2·hidden] projection whose halves are gate and up.

Reference (what autograd differentiates when the three ops are written out):

    gate, up = gate_up.chunk(2, -1);  y = silu(gate) * up

Its backward runs three nodes (the product, SiLU, the chunk), and the chunk's backward concatenates the two
halves' gradients into a fresh [..., 2·hidden] tensor: one more pass over the layer's widest activation.
`gated_silu` writes both halves' gradients straight into that tensor, computing each with the kernels autograd
uses (the product's grad · up and grad · silu(gate), then `silu_backward`): the same numbers, bit for bit
(tests/test_layers.py), in one node. Without grad it is the reference itself (no autograd.Function call:
a decode step is many small ops).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def gated_silu_reference(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class _GatedSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        activated = F.silu(gate)
        ctx.save_for_backward(gate, up, activated)
        return activated * up

    @staticmethod
    @once_differentiable  # training needs first-order gradients; a second order is refused, clearly
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        gate, up, activated = ctx.saved_tensors
        grad_gate_up = grad.new_empty(*grad.shape[:-1], 2 * grad.shape[-1])
        grad_gate, grad_up = grad_gate_up.chunk(2, dim=-1)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        torch.mul(grad, activated, out=grad_up)
        return grad_gate_up


def gated_silu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) · up, gate_up [..., 2·hidden] (see the module docstring)."""
    if gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up's last dimension must be even (gate and up halves), got {gate_up.shape[-1]}")
    if torch.is_grad_enabled() and gate_up.requires_grad and not torch.compiler.is_compiling():
        return _GatedSiLU.apply(gate_up)
    return gated_silu_reference(gate_up)
