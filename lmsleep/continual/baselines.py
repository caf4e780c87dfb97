"""The baselines paper 2 is compared with (spec: sleep-continual.md, Our reproduction): plain fine-tuning of
every parameter, fine-tuning with replay (the caller mixes old data in), and EWC (Kirkpatrick et al. 2017).

    sft(model, data, steps=..., lr=...)                      Adam on all parameters, next-token loss on the
                                                             positions data's loss mask selects
    fisher = fisher_diagonal(model, data)                    F_i = E[(∂ log p / ∂θ_i)²] over data's rows
    sft(model, data, ..., penalty=EWC(model, fisher, lam))   adds λ/2 Σ_i F_i (θ_i − θ*_i)²

`data` is (tokens [n, T], targets [n, T], loss_mask [n, T]) as tasks.batch gives (or lora.Dataset). The model
is changed in place (these baselines do write the weights; copy it first to keep the original).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import validate
from ..model import SleepLM

Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def as_data(batched: dict | Data) -> Data:
    """tasks.batch's dict (tokens, targets, loss_mask) or a (tokens, targets, loss_mask) tuple, checked."""
    data = (batched["tokens"], batched["targets"], batched["loss_mask"]) if isinstance(batched, dict) else tuple(batched)
    if len(data) != 3 or not all(isinstance(t, torch.Tensor) for t in data):
        raise TypeError("data must be (tokens, targets, loss_mask) tensors or tasks.batch's dict")
    tokens, targets, mask = data
    if tokens.shape != targets.shape or tokens.shape != mask.shape or tokens.dim() != 2 or tokens.shape[0] == 0:
        raise ValueError(f"tokens, targets and loss_mask must share one non-empty [n, T] shape, got "
                         f"{tuple(tokens.shape)}, {tuple(targets.shape)}, {tuple(mask.shape)}")
    return data


@dataclass
class EWC:
    """The EWC penalty λ/2 Σ_i F_i (θ_i − θ*_i)² around the weights θ* the model has when it is made."""

    model: SleepLM
    fisher: dict[str, torch.Tensor]
    lam: float

    def __post_init__(self) -> None:
        validate.number("EWC.lam", self.lam, 0)
        named = dict(self.model.named_parameters())
        unknown = sorted(set(self.fisher) - set(named))
        if unknown:
            raise ValueError(f"fisher holds parameters the model does not have: {', '.join(unknown[:3])}")
        self.anchor = {name: named[name].detach().clone() for name in self.fisher}

    def __call__(self, model: SleepLM) -> torch.Tensor:
        named = dict(model.named_parameters())
        total = sum((f * (named[name] - self.anchor[name]).pow(2)).sum() for name, f in self.fisher.items())
        return 0.5 * self.lam * total


def fisher_diagonal(model: SleepLM, data, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """The empirical Fisher's diagonal: the mean over data's rows of each parameter's squared gradient of
    that row's log-likelihood (of the targets at the masked positions)."""
    tokens, targets, mask = as_data(data)
    validate.positive_int("batch_size", batch_size)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for row in range(tokens.shape[0]):
            model.zero_grad(set_to_none=True)
            model.loss(tokens[row : row + 1], targets[row : row + 1], mask[row : row + 1]).backward()
            for name, p in params.items():
                if p.grad is not None:
                    fisher[name] += p.grad.detach().pow(2)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {name: f / tokens.shape[0] for name, f in fisher.items()}


def sft(model: SleepLM, data, *, steps: int = 20, lr: float = 1e-3, batch_size: int | None = None, seed: int = 0,
        penalty=None, on_step=None) -> list[float]:
    """Fine-tune every trainable parameter of `model` (in place) with Adam for `steps` steps; batch_size rows
    drawn without replacement per step (None: all rows). penalty(model) -> scalar is added (e.g. EWC);
    on_step(step, model) is called after each step (1-based), e.g. to read a learning curve off one run.
    Returns the loss before each step (penalty excluded)."""
    tokens, targets, mask = as_data(data)
    validate.non_negative_int("steps", steps)
    validate.positive_number("lr", lr)
    if batch_size is not None:
        validate.positive_int("batch_size", batch_size)
    if penalty is not None and not callable(penalty):
        raise TypeError(f"penalty must be a callable model -> scalar tensor, got {type(penalty).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()  # no dropout: every system is compared deterministically
    losses = []
    try:
        for _ in range(steps):
            rows = torch.arange(tokens.shape[0])
            if batch_size is not None and batch_size < tokens.shape[0]:
                rows = torch.randperm(tokens.shape[0], generator=generator)[:batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = model.loss(tokens[rows], targets[rows], mask[rows])
            losses.append(loss.item())
            (loss if penalty is None else loss + penalty(model)).backward()
            optimizer.step()
            if on_step is not None:
                on_step(len(losses), model)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return losses
