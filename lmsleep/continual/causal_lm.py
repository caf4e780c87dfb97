"""A Hugging Face causal LM with memory levels attached, as the continual learner drives it (issue 20).

The learner speaks to its model through one small protocol, which `SleepLM` has and `AttachedLM` gives a
transformers model:

    model.config                 memory_levels, vocab_size, expert_pool, expert_gating; to_json / from_json
    model(tokens)                logits [batch, time, vocab]
    model.loss(tokens, targets, mask)   mean cross-entropy where mask is 1
    model.check_tokens(tokens, name)    a clear error for ids outside the vocabulary
    model.blocks                 the layers holding levels: blocks[i].mlp.levels[ℓ] (continual.levels.level_modules)
    stream.open_stream(model, n) a stream that reads tokens with a KV cache: feed(tokens) -> logits,
                                 generate(prompt, n, temperature=, seed=) (`model.new_stream(n)` where the
                                 model has one; a SleepStream for SleepLM)
    model.learner_tensors()      what a learner file keeps of the model (all of a SleepLM; only what attach
                                 added to a pretrained base: the pools, masks and gates),
    model.load_learner_tensors(tensors, source), and model.check_config(saved config, source): refuses a
                                 learner file written for another model (for an attached one: another base)

`AttachedLM(model)` wraps a model that `attach` gave levels; the pretrained weights are used as they are (not
copied) and never written to a learner file. The config records the base by name and by a fingerprint of its
weights, so a learner file is refused on another base.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import validate
from ..layers.levels import MemoryLevels
from ..model import check_token_ids
from ..recurrence import loss_positions
from ..stream import SleepStream
from .hf_levels import attached, decoder_layers, levels_of


@dataclass(frozen=True)
class AttachedConfig:
    """What the learner needs to know of an attached model (SleepConfig's counterpart)."""

    base: str  # the base's class and name (config.name_or_path)
    fingerprint: str  # of the base's weights (`fingerprint`)
    vocab_size: int
    layers: tuple[int, ...]  # the decoder layers holding levels
    memory_levels: int
    expert_pool: int
    expert_rank: int
    expert_gating: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AttachedConfig":
        data = json.loads(text)
        data["layers"] = tuple(data["layers"])
        return cls(**data)


def _pool_names(model: nn.Module, prefix: str = "") -> set[str]:
    """Names (in model.state_dict(), after `prefix`) of everything attach added: the pools, gates and masks."""
    chains = {id(chain) for chain in attached(model).values()}
    added = set()
    for path, module in model.named_modules():
        if id(module) in chains:
            for name, _ in list(module.named_parameters()) + list(module.named_buffers()):
                if ".base." not in f".{name}.":  # the pretrained MLP, held as the base expert
                    added.add(f"{prefix}{path}.{name}")
    return added


@torch.no_grad()
def fingerprint(model: nn.Module, values: int = 4096) -> str:
    """A short digest of a base's weights (names, shapes and their first `values` values, evenly strided),
    excluding what attach added: the same base gives the same digest however many experts it holds."""
    added = _pool_names(model) if attached(model) else set()
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(model.state_dict().items()):
        if name in added or not tensor.is_floating_point():
            continue
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // values)
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(flat[::step][:values].float().cpu().numpy().tobytes())
    return digest.hexdigest()


class AttachedLM(nn.Module):
    """A transformers causal LM whose MLPs hold memory levels (`attach`), with the learner's protocol."""

    def __init__(self, model: nn.Module, *, name: str | None = None):
        super().__init__()
        chains = attached(model)
        levels = levels_of(model)  # a clear error when nothing is attached
        first: MemoryLevels = next(iter(chains.values()))
        level = first.levels[0]
        self.lm = model
        self._fingerprint = fingerprint(model)
        base = name or getattr(model.config, "name_or_path", "") or "unnamed"
        self.config = AttachedConfig(
            base=f"{type(model).__name__}:{base}", fingerprint=self._fingerprint,
            vocab_size=int(model.config.vocab_size), layers=tuple(chains), memory_levels=len(levels),
            expert_pool=level.pool_size, expert_rank=int(level.A.shape[1]), expert_gating=level.gating)

    @property
    def blocks(self) -> list[nn.Module]:
        layers = decoder_layers(self.lm)
        return [layers[i] for i in self.config.layers]

    def check_tokens(self, tokens: torch.Tensor, name: str = "tokens") -> None:
        check_token_ids(tokens, self.config.vocab_size, name)

    def forward(self, tokens: torch.Tensor, *_, cache=None) -> torch.Tensor:
        """Logits [batch, time, vocab] of `tokens`, read after what `cache` (a transformers Cache) holds."""
        return self.lm(input_ids=tokens, cache=cache, use_cache=cache is not None).logits

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of `targets` where loss_mask is 1 (as SleepLM.loss)."""
        mask = loss_positions(self, tokens, targets, loss_mask)
        return F.cross_entropy(self(tokens)[mask].float(), targets[mask])

    def learner_tensors(self) -> dict[str, torch.Tensor]:
        """Only what attach added (pools, gates, masks), under their state_dict names: never the base."""
        names = _pool_names(self.lm, "lm.")
        return {name: t for name, t in self.state_dict().items() if name in names}

    def load_learner_tensors(self, tensors: dict[str, torch.Tensor], source: str = "learner state") -> None:
        expected = _pool_names(self.lm, "lm.")
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise ValueError(f"{source} does not fit this model's levels (missing {missing[:3]}, unexpected {extra[:3]})")
        self.load_state_dict(tensors, strict=False)

    def new_stream(self, batch_size: int = 1) -> "AttachedStream":
        return AttachedStream(self, batch_size)

    def check_config(self, saved: AttachedConfig, source: str) -> None:
        """Refuse a learner file written for another base (by name or weights) or other levels."""
        if saved.fingerprint != self.config.fingerprint or saved.base != self.config.base:
            raise ValueError(f"{source} was saved for the base {saved.base} (weights {saved.fingerprint}), not this "
                             f"model's {self.config.base} (weights {self.config.fingerprint})")
        if saved != self.config:
            diff = {k: (v, getattr(self.config, k)) for k, v in asdict(saved).items() if getattr(self.config, k) != v}
            raise ValueError(f"{source} was saved with other levels: {diff}")


class AttachedStream:
    """Reads tokens into an `AttachedLM` with its KV cache, rows side by side (SleepStream's feed/generate)."""

    def __init__(self, model: AttachedLM, batch_size: int = 1):
        from transformers import DynamicCache

        self.model, self.batch_size = model, batch_size
        self.cache = DynamicCache()

    @torch.no_grad()
    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[0] != self.batch_size:
            raise ValueError(f"this stream holds {self.batch_size} rows, got {tokens.shape[0]}")
        if tokens.shape[1] == 0:
            return tokens.new_zeros(self.batch_size, 0, self.model.config.vocab_size, dtype=torch.float32)
        return self.model(tokens, cache=self.cache).float()

    def take_rows(self, index: torch.Tensor) -> None:
        """Keep rows `index` (repeats allowed) of what was read: a new batch of len(index) rows."""
        self.cache.reorder_cache(index)
        self.batch_size = int(index.numel())

    def reserve(self, tokens: int) -> None:
        """SleepStream.reserve's place in the stream protocol: transformers' DynamicCache grows by concatenation,
        so there is nothing to allocate ahead."""
        validate.non_negative_int("tokens", tokens)

    generate = SleepStream.generate  # the one sampling loop (feed, pick, feed back), over this stream's feed
