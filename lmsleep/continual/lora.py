"""Isolated LoRA fine-tunes of a SleepLM: many copies at once, the original never touched (spec: Sleep
stage 2 — Dreaming, step 3: "for each kept dream, fine-tune an isolated copy").

An adapter adds a low-rank delta to chosen `nn.Linear` modules (by default every block's MLP linears):

    y = W x + (α / r) · B (A x),     A [r, in] ~ N(0, σ²) (seeded), B [out, r] = 0

so a fresh adapter changes no output. m adapters are kept stacked (A [m, r, in], B [m, out, r] per target)
and trained together without vmap (the fast-weight op is a C extension that cannot be vmapped): the m
copies' batches are stacked along the batch dimension and a forward hook on each target adds group g's own
delta to group g's rows. The loss is Σ_g (mean loss of group g), so adapter g receives exactly the gradient
of its own data; an elementwise optimizer (SGD, Adam) on the stacked tensors then equals m independent
runs. `finetune(..., batched=False)` runs the same code with m = 1, one copy at a time: the reference.

While adapters are attached, the model's parameters have requires_grad off (restored afterwards) and are
never written: the original stays bit-identical.

    tuned = finetune(model, [dream_0, dream_1, ...], rank=8, alpha=16, steps=20, lr=1e-2)
    with tuned.adapters.applied(model, index=1):   # the model as copy 1 sees it
        logits = model(tokens)
    tuned.adapters.losses(model, datasets)         # each copy on its own data, one batched forward
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import validate
from .seeds import derive

SIGMA = 0.02  # std of A at initialisation (the spec's Decision for new experts: N(0, 0.02²))
OPTIMIZERS = ("adam", "sgd")

# A dataset: (tokens, targets, loss_mask), LongTensors [n, T], as the dict from lmsleep.tasks.batch.
Dataset = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def mlp_linears(model: nn.Module) -> list[str]:
    """Names of every `nn.Linear` inside `model.blocks[i].mlp`, block by block (the default targets)."""
    names = []
    for i, block in enumerate(model.blocks):
        for name, module in block.mlp.named_modules():
            if isinstance(module, nn.Linear):
                names.append(f"blocks.{i}.mlp" + (f".{name}" if name else ""))
    if not names:
        raise ValueError("the model's blocks have no nn.Linear in their MLPs: pass LoRA targets by name")
    return names


def resolve_targets(model: nn.Module, targets: Sequence[str] | None) -> list[tuple[str, nn.Linear]]:
    """[(name, module)] for `targets` (module names as in model.named_modules(); None: mlp_linears)."""
    names = mlp_linears(model) if targets is None else list(targets)
    if not names:
        raise ValueError("targets must name at least one nn.Linear module, got an empty list")
    if len(set(names)) != len(names):
        raise ValueError(f"targets must not repeat a module, got {names}")
    modules = dict(model.named_modules())
    resolved = []
    for name in names:
        if not isinstance(name, str) or name not in modules:
            raise ValueError(f"targets: the model has no module named {name!r}")
        if not isinstance(modules[name], nn.Linear):
            raise TypeError(f"targets: module {name!r} is a {type(modules[name]).__name__}, not an nn.Linear")
        resolved.append((name, modules[name]))
    return resolved


def copy_generator(seed: int, copy: int) -> torch.Generator:
    """The random stream of adapter copy `copy` (its A, then its mini-batches): a function of (seed, copy)
    only, so copy i draws the same numbers whether it trains alone or beside others."""
    return torch.Generator().manual_seed(derive(seed, copy))


@dataclass
class LoRAAdapters:
    """m stacked adapters over `targets` (module names): A[t] [m, r, in], B[t] [m, out, r]; scale α / r."""

    targets: tuple[str, ...]
    A: list[torch.Tensor]
    B: list[torch.Tensor]
    alpha: float

    @property
    def count(self) -> int:
        return self.A[0].shape[0]

    @property
    def rank(self) -> int:
        return self.A[0].shape[1]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def init(cls, model: nn.Module, count: int, *, rank: int, alpha: float, targets: Sequence[str] | None = None,
             sigma: float = SIGMA, seed: int = 0) -> "LoRAAdapters":
        """`count` fresh adapters (B = 0): copy i's A is drawn from copy_generator(seed, i)."""
        validate.positive_int("count", count)
        return cls._fresh(model, [copy_generator(seed, i) for i in range(count)], rank, alpha, targets, sigma)

    @classmethod
    def _fresh(cls, model, generators, rank, alpha, targets, sigma) -> "LoRAAdapters":
        validate.positive_int("rank", rank)
        validate.positive_number("alpha", alpha)
        validate.number("sigma", sigma, 0)
        resolved = resolve_targets(model, targets)
        A, B = [], []
        for _, linear in resolved:
            weight = linear.weight
            draws = [torch.randn(rank, linear.in_features, generator=g, dtype=weight.dtype) for g in generators]
            A.append((sigma * torch.stack(draws)).to(weight.device))
            B.append(weight.new_zeros(len(generators), linear.out_features, rank))
        return cls(tuple(name for name, _ in resolved), A, B, float(alpha))

    def parameters(self) -> list[torch.Tensor]:
        return [*self.A, *self.B]

    def detached(self) -> "LoRAAdapters":
        return LoRAAdapters(self.targets, [a.detach().clone() for a in self.A],
                            [b.detach().clone() for b in self.B], self.alpha)

    def repeat(self, count: int) -> "LoRAAdapters":
        """`count` copies of adapter 0 (e.g. to score many datasets' gradients at one starting point)."""
        validate.positive_int("count", count)
        return LoRAAdapters(self.targets, [a[:1].repeat(count, 1, 1) for a in self.A],
                            [b[:1].repeat(count, 1, 1) for b in self.B], self.alpha)

    @staticmethod
    def stack(parts: Sequence["LoRAAdapters"]) -> "LoRAAdapters":
        """The adapters of `parts`, one after another (same targets, rank and α)."""
        first = parts[0]
        if any(p.targets != first.targets or p.rank != first.rank or p.alpha != first.alpha for p in parts):
            raise ValueError("adapters to stack must share targets, rank and alpha")
        return LoRAAdapters(first.targets, [torch.cat([p.A[t] for p in parts]) for t in range(len(first.A))],
                            [torch.cat([p.B[t] for p in parts]) for t in range(len(first.B))], first.alpha)

    @contextlib.contextmanager
    def applied(self, model: nn.Module, index: int) -> Iterator[nn.Module]:
        """The model with adapter `index` added to every row of every forward (any batch size), e.g. for
        evaluation or generation as that copy. Nothing of the model is modified."""
        validate.integer("index", index, 0, self.count - 1, why="the number of adapters minus one")
        with attached(model, self) as router:
            router.route([index], None)
            yield model

    @torch.no_grad()
    def losses(self, model: nn.Module, datasets: Sequence) -> torch.Tensor:
        """[m]: the masked mean cross-entropy of copy i on datasets[i] (batched, no gradient)."""
        data = check_datasets(datasets, self.count)
        with attached(model, self) as router:
            return group_losses(model, router, data, list(range(self.count)))


class _Router:
    """Which adapter each group of rows uses in the next forward: copies[g] for the g-th block of rows,
    `sizes[g]` rows each (sizes None: one group, every row)."""

    def __init__(self, adapters: LoRAAdapters):
        self.adapters = adapters
        self.copies: torch.Tensor | None = None
        self.sizes: list[int] | None = None

    def route(self, copies: Sequence[int], sizes: Sequence[int] | None) -> None:
        assert sizes is None or len(sizes) == len(copies)
        self.copies = torch.as_tensor(list(copies), dtype=torch.long)
        self.sizes = None if sizes is None else list(sizes)

    def hook(self, target: int):
        def add_delta(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            x = inputs[0]
            A, B = self.adapters.A[target], self.adapters.B[target]
            if self.copies.numel() != A.shape[0] or not bool((self.copies == torch.arange(A.shape[0])).all()):
                A, B = A[self.copies.to(A.device)], B[self.copies.to(B.device)]
            return output + self.adapters.scale * low_rank_delta(x, A, B, self.sizes)
        return add_delta


def low_rank_delta(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, sizes: Sequence[int] | None) -> torch.Tensor:
    """B_g (A_g x) for the rows of group g: x [rows, ..., in] holds the groups' rows one block after another
    (`sizes[g]` rows each; None: all rows are one group), A [groups, r, in], B [groups, out, r]."""
    groups = A.shape[0]
    if sizes is None or len(set(sizes)) == 1:  # equal groups: one batched product over [g, rows·time, in]
        grouped = x.reshape(groups, -1, x.shape[-1])
        low = torch.einsum("gni,gri->gnr", grouped, A)
        return torch.einsum("gnr,gor->gno", low, B).reshape(*x.shape[:-1], B.shape[1])
    parts = x.split(list(sizes))
    return torch.cat([torch.einsum("...i,ri,or->...o", part, A[g], B[g]) for g, part in enumerate(parts)])


@contextlib.contextmanager
def attached(model: nn.Module, adapters: LoRAAdapters) -> Iterator[_Router]:
    """Hooks adding the adapters' deltas to their targets, with the model's parameters frozen
    (requires_grad off) meanwhile; both undone on exit, whatever happens. Yields the router to set."""
    modules = dict(model.named_modules())
    for name, A, B in zip(adapters.targets, adapters.A, adapters.B):
        linear = modules.get(name)
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"adapters target {name!r}, which is not an nn.Linear of this model")
        if A.shape[2] != linear.in_features or B.shape[1] != linear.out_features:
            raise ValueError(f"adapters for {name!r} have shapes A {tuple(A.shape)}, B {tuple(B.shape)}, which do not "
                             f"fit its {linear.in_features} -> {linear.out_features} features")
    router = _Router(adapters)
    parameters = list(model.parameters())
    trainable = [p.requires_grad for p in parameters]
    handles = []
    try:
        for p in parameters:
            p.requires_grad_(False)
        for t, name in enumerate(adapters.targets):
            handles.append(modules[name].register_forward_hook(router.hook(t)))
        yield router
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(parameters, trainable):
            p.requires_grad_(flag)


def check_datasets(datasets, count: int | None = None) -> list[Dataset]:
    """Datasets as (tokens, targets, loss_mask) LongTensors [n, T] (a tasks.batch dict is accepted), every
    example with at least one loss position; `count` of them if given."""
    if not isinstance(datasets, (list, tuple)) or not datasets:
        raise ValueError("datasets must be a non-empty list of (tokens, targets, loss_mask)")
    if count is not None and len(datasets) != count:
        raise ValueError(f"datasets must hold one dataset per adapter ({count}), got {len(datasets)}")
    checked = []
    for i, data in enumerate(datasets):
        if isinstance(data, dict):
            missing = {"tokens", "targets", "loss_mask"} - set(data)
            if missing:
                raise ValueError(f"datasets[{i}] lacks {sorted(missing)}")
            data = (data["tokens"], data["targets"], data["loss_mask"])
        if not isinstance(data, (tuple, list)) or len(data) != 3:
            raise ValueError(f"datasets[{i}] must be (tokens, targets, loss_mask), got {type(data).__name__}")
        tokens, targets, mask = data
        for field, tensor in zip(("tokens", "targets", "loss_mask"), data):
            if not isinstance(tensor, torch.Tensor) or tensor.dtype not in (torch.int64, torch.int32):
                got = getattr(tensor, "dtype", type(tensor).__name__)
                raise TypeError(f"datasets[{i}] {field} must be an integer tensor, got {got}")
            if tensor.dim() != 2 or tensor.shape != tokens.shape or tokens.shape[0] == 0:
                raise ValueError(f"datasets[{i}] {field} must be [n >= 1, T] like tokens {tuple(tokens.shape)}, "
                                 f"got {tuple(tensor.shape)}")
        empty = (~mask.bool().any(dim=1)).nonzero()
        if len(empty):
            raise ValueError(f"datasets[{i}] example {int(empty[0])} has an empty loss_mask: nothing to predict")
        checked.append((tokens, targets, mask))
    return checked


def group_losses(model: nn.Module, router: _Router, batches: Sequence[Dataset], copies: Sequence[int]) -> torch.Tensor:
    """[g]: the masked mean cross-entropy (SleepLM.loss's) of adapter copies[g] on batches[g].

    Batches run stacked in one forward when the model treats them alike: same length T and, chunk by
    chunk, the same consolidation decision (SleepLM.forward sleeps on a window whose mask is zero over the
    whole batch, so stacking a batch that sleeps with one that does not would change the first)."""
    alike: dict[tuple, list[int]] = {}
    for g, (tokens, _, mask) in enumerate(batches):
        sleeps = tuple(not bool(mask[:, start:end].any()) for start, end in model.windows(tokens.shape[1]))
        alike.setdefault((tokens.shape[1], sleeps), []).append(g)
    means: list[torch.Tensor | None] = [None] * len(batches)
    for members in alike.values():
        tokens, targets, mask = (torch.cat([batches[g][j] for g in members]) for j in range(3))
        sizes = [batches[g][0].shape[0] for g in members]
        router.route([copies[g] for g in members], sizes)
        logits = model(tokens, mask, logits_for="loss")
        selected = mask.bool()
        row_group = torch.repeat_interleave(torch.arange(len(members), device=mask.device),
                                            torch.tensor(sizes, device=mask.device))
        position_group = row_group[:, None].expand_as(selected)[selected].to(logits.device)
        chosen = logits[selected]
        if chosen.dtype in (torch.float16, torch.bfloat16):
            chosen = chosen.float()
        entropy = F.cross_entropy(chosen, targets[selected].to(logits.device), reduction="none")
        totals = entropy.new_zeros(len(members)).index_add(0, position_group, entropy)
        counts = torch.bincount(position_group, minlength=len(members)).to(entropy.dtype)
        for slot, g in enumerate(members):
            means[g] = totals[slot] / counts[slot]
    return torch.stack(means)


@dataclass
class FineTuned:
    """adapters: the trained adapters, stacked; losses [steps, m]: each copy's training loss before each step."""

    adapters: LoRAAdapters
    losses: torch.Tensor


def finetune(model: nn.Module, datasets: Sequence, *, rank: int = 8, alpha: float = 16.0, steps: int = 20,
             lr: float = 1e-2, optimizer: str = "adam", batched: bool = True, seed: int = 0,
             batch_size: int | None = None, targets: Sequence[str] | None = None, sigma: float = SIGMA) -> FineTuned:
    """Fine-tune one fresh adapter per dataset (copy i on datasets[i] only) for `steps` steps.

    batch_size: examples drawn (without replacement, from copy i's own generator) per step; None uses the
    whole dataset every step. batched=False trains the copies one at a time through the same code (m = 1):
    the reference the batched run equals up to rounding. The model is never modified.
    """
    data = check_datasets(datasets)
    validate.non_negative_int("steps", steps)
    validate.positive_number("lr", lr)
    validate.one_of("optimizer", optimizer, OPTIMIZERS)
    if not isinstance(batched, bool):
        raise TypeError(f"batched must be True or False, got {batched!r}")
    validate.integer("seed", seed, 0)
    if batch_size is not None:
        validate.positive_int("batch_size", batch_size)
    settings = dict(rank=rank, alpha=alpha, steps=steps, lr=lr, optimizer=optimizer, batch_size=batch_size,
                    targets=targets, sigma=sigma, seed=seed)
    if batched:
        return _train(model, data, list(range(len(data))), **settings)
    runs = [_train(model, [one], [i], **settings) for i, one in enumerate(data)]
    return FineTuned(LoRAAdapters.stack([run.adapters for run in runs]), torch.cat([run.losses for run in runs], dim=1))


def _train(model, data: list[Dataset], copies: list[int], *, rank, alpha, steps, lr, optimizer, batch_size, targets,
           sigma, seed) -> FineTuned:
    """Train adapters for `copies` (global copy numbers, which fix their random streams) on `data`."""
    generators = [copy_generator(seed, copy) for copy in copies]
    adapters = LoRAAdapters._fresh(model, generators, rank, alpha, targets, sigma)
    for tensor in adapters.parameters():
        tensor.requires_grad_(True)
    step_rule = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    opt = step_rule(adapters.parameters(), lr=lr)
    local = list(range(len(copies)))
    history = []
    with attached(model, adapters) as router:
        for _ in range(steps):
            batches = [_minibatch(d, batch_size, g) for d, g in zip(data, generators)]
            opt.zero_grad(set_to_none=True)
            per_copy = group_losses(model, router, batches, local)
            # Σ_g mean_g: each adapter's gradient is that of its own copy's mean loss, nothing else.
            per_copy.sum().backward()
            opt.step()
            history.append(per_copy.detach())
    losses = torch.stack(history) if history else torch.zeros(0, len(copies))
    return FineTuned(adapters.detached(), losses)


def _minibatch(data: Dataset, batch_size: int | None, generator: torch.Generator) -> Dataset:
    n = data[0].shape[0]
    if batch_size is None or batch_size >= n:
        return data
    rows = torch.randperm(n, generator=generator)[:batch_size]
    return tuple(tensor[rows] for tensor in data)
