"""The sleep hybrid language model: lmsleep's own stack of attention and Gated-DeltaNet blocks (blocks.py).
Its forward *is* the training algorithm of sleep-recurrence.md, implemented once in lmsleep.recurrence
(SleepRecurrence, shared with lmsleep.hf.hybrid); this module owns the blocks, the embedding and the head,
and the model's own accounting (optimizer groups, FLOPs).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import build_block
from .config import SleepConfig
from .layers import BlockMemory, FastWeightMemory, RMSNorm
from .recurrence import SleepRecurrence

Memory = list[BlockMemory]


def check_token_ids(tokens: torch.Tensor, vocab_size: int, name: str = "tokens", check_range: bool = True) -> None:
    """A clear error unless `tokens` is an int64/int32 [batch, time] tensor of ids in [0, vocab_size)."""
    if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64/int32 tensor of token ids, got {getattr(tokens, 'dtype', type(tokens))}")
    if tokens.dim() != 2:
        raise ValueError(f"{name} must be [batch, time], got shape {tuple(tokens.shape)}")
    if check_range and tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        bad = tokens[(tokens < 0) | (tokens >= vocab_size)][0].item()
        raise ValueError(f"{name} contains id {bad}, outside the vocabulary [0, {vocab_size})")


def build_model(config: SleepConfig) -> SleepRecurrence:
    """The model `config` describes, freshly initialised: a SleepLM, or (architecture "qwen3.5") transformers'
    Qwen3.5 built from the same dimensions and made to sleep (lmsleep.hf.hybrid_lm.HybridLM)."""
    if config.architecture == "lmsleep":
        return SleepLM(config)
    try:
        from .hf.hybrid_lm import HybridLM
    except ImportError as error:
        raise ImportError(f"architecture {config.architecture!r} needs transformers (pip install 'lmsleep[hf]'): "
                          f"{error}") from None
    return HybridLM(config)


class SleepLM(SleepRecurrence, nn.Module):
    def __init__(self, config: SleepConfig):
        if config.architecture != "lmsleep":
            raise ValueError(f"SleepLM builds lmsleep's own blocks; a config of architecture {config.architecture!r} "
                             "is built by lmsleep.model.build_model")
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(build_block(letter, config) for letter in config.layout)
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        # Looped range [loop_start, loop_end): "before" runs once, "looped" N times, "after" once.
        self.before = range(0, config.loop_start)
        self.looped = range(config.loop_start, config.resolved_loop_end)
        self.after = range(config.resolved_loop_end, len(config.layout))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    # ----- pieces shared by the training forward and the streaming engine -----

    def check_tokens(self, tokens: torch.Tensor, name: str = "tokens") -> None:
        # Reading the ids is a data-dependent branch, which torch.compile(fullgraph=True) cannot trace: a
        # compiled model leaves the range check to the embedding's own index check.
        check_token_ids(tokens, self.config.vocab_size, name, check_range=not torch.compiler.is_compiling())

    def empty_memory(self) -> Memory:
        return [block.empty_memory() for block in self.blocks]

    def _run_blocks(self, indices: range, h: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, Memory]:
        new = list(memory)
        for i in indices:
            h, new[i] = self.blocks[i](h, memory[i])
        return h, new

    def run_blocks(self, indices: range, h, memory: Memory, use_checkpoint: bool = False):
        """Run blocks `indices` on h [batch, new, d_model] continuing `memory`; returns (h, memory)."""
        if use_checkpoint and torch.is_grad_enabled() and len(indices):
            return checkpoint(self._run_blocks, indices, h, memory, use_reentrant=False)
        return self._run_blocks(indices, h, memory)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(h))

    def layout_description(self) -> str:
        return f"layout {self.config.layout!r}"

    def fast_blocks(self) -> list[int]:
        """The looped blocks that keep a fast-weight state S: what adaptive sleep measures."""
        return [i for i in self.looped if issubclass(self.blocks[i].memory_type, FastWeightMemory)]

    # ----- what a continual learner's file keeps (the protocol continual.causal_lm describes) -----

    def learner_tensors(self) -> dict[str, torch.Tensor]:
        """Everything: a SleepLM is trained here, so a learner file keeps the whole model."""
        return self.state_dict()

    def load_learner_tensors(self, tensors: dict[str, torch.Tensor], source: str = "learner state") -> None:
        self.load_state_dict(tensors)

    def check_config(self, saved: SleepConfig, source: str) -> None:
        """Refuse a file written for a model of another config, naming what differs."""
        if saved != self.config:
            from .io import config_diff

            raise ValueError(f"{source} was saved for another model config: {config_diff(self.config, saved)}")

    # ----- accounting (the model's own, as in nanoGPT / nanochat; SleepRecurrence sums it) -----

    def block_modules(self) -> nn.Module:
        return self.blocks

    def block_flops_per_token(self, i: int, context: int) -> float:
        """Forward FLOPs per token of block i: 2 per matrix weight of its linear layers, plus its mixer's own
        per-token work over `context` tokens."""
        block = self.blocks[i]
        matrices = sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear))
        return 2 * matrices + block.mixer.extra_flops_per_token(context)

    def head_flops_per_token(self) -> float:
        return 2 * self.head.weight.numel()
