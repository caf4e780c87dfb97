"""The sleep hybrid language model: lmsleep's own stack of attention and Gated-DeltaNet blocks (blocks.py).
Its forward *is* the training algorithm of sleep-recurrence.md, implemented once in lmsleep.recurrence
(SleepRecurrence, shared with lmsleep.hf.hybrid); this module owns the blocks, the embedding and the head,
and the model's own accounting (optimizer groups, FLOPs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
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


def loss_positions(model, tokens: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """The boolean mask of the positions a loss is taken at, after checking the targets against `model`'s
    vocabulary and the tokens' shape (what every model's `loss` checks first)."""
    model.check_tokens(targets, "targets")
    if targets.shape != tokens.shape:
        raise ValueError(f"targets must have the tokens' shape {tuple(tokens.shape)}, got {tuple(targets.shape)}")
    mask = loss_mask.bool()
    if not bool(mask.any()):
        raise ValueError("loss_mask selects no position: there is nothing to predict")
    return mask


class SleepLM(SleepRecurrence, nn.Module):
    def __init__(self, config: SleepConfig):
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

    def loss(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor,
        loss_mask: torch.Tensor,
        passes: int | None = None,
        use_checkpoint: bool = False,
    ) -> torch.Tensor:
        """Mean cross-entropy of `targets` at the positions where loss_mask is 1 (answer tokens)."""
        mask = loss_positions(self, tokens, targets, loss_mask)
        logits = self(tokens, loss_mask, passes, use_checkpoint, logits_for="loss")
        selected = logits[mask]
        if selected.dtype in (torch.float16, torch.bfloat16):
            selected = selected.float()
        return F.cross_entropy(selected, targets[mask])

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

    # ----- accounting (the model's own, as in nanoGPT / nanochat) -----

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"muon": the blocks' hidden matrices, "adamw": everything else}: embeddings, the head, norms,
        conv kernels, A_log / dt_bias, and parameters a layer tagged `optimizer_group = "adamw"` (the
        per-head decay and write-strength gates). Each list keeps the order of `parameters()`."""
        in_blocks = {id(p) for p in self.blocks.parameters()}
        groups: dict[str, list[nn.Parameter]] = {"muon": [], "adamw": []}
        for p in self.parameters():
            hidden_matrix = id(p) in in_blocks and p.dim() == 2
            groups[getattr(p, "optimizer_group", "muon" if hidden_matrix else "adamw")].append(p)
        return groups

    def estimate_flops(self, loss_mask: list[int]) -> float:
        """Estimated training FLOPs (forward + backward ≈ 3 × forward) of one example with this loss mask
        (its length is the example's): 2 FLOPs per matrix weight per token per pass (the blocks' and the
        head's linear layers), the looped blocks run N times on consolidation windows (mask zero), plus
        each mixer's own per-token work (attention: 4·context·width, context = the window's length)."""
        matrices = [sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear)) for block in self.blocks]
        total = 0.0
        for start, end in self.windows(len(loss_mask)):
            chunk = loss_mask[start:end]
            passes = self.config.sleep_passes if not any(chunk) else 1
            for i, block in enumerate(self.blocks):
                runs = passes if i in self.looped else 1
                total += runs * len(chunk) * (2 * matrices[i] + block.mixer.extra_flops_per_token(len(chunk)))
            total += len(chunk) * 2 * self.head.weight.numel()
        return 3 * total
