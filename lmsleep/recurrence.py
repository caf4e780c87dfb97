"""The sleep algorithm of sleep-recurrence.md over any stack of blocks: the one implementation that SleepLM
(lmsleep's own hybrid) and lmsleep.hf.hybrid (transformers' Gated-DeltaNet hybrids) both run, so that their
training forward and their streaming engine (lmsleep.stream) agree by construction.

    S ← 0 for every fast-weight block
    for each chunk c of L tokens (the last may be shorter; `boundaries` may end one early, as a sleep on
    demand does in the stream):
        h ← Embed(c)
        if the loss mask is zero over c:   wake pass, then N − 1 more passes (sleep): h feeds back, S carries
                                           (adaptive: per row, until S converges; lmsleep.adaptive)
        else:                              one wake pass; its logits carry the loss
        evict: only S (and, sliding, the final pass's last ≤ L − 1 keys/values) crosses into the next chunk

Blocks before the looped range run once per window, the looped range runs N times, blocks after it run
once on the final pass's output (spec Decision). Logits are always those of the wake pass — what a
streaming model predicts at each token — so `forward` and `lmsleep.stream` agree token for token.

A model built on `SleepRecurrence` (an nn.Module) provides:
    config            .window (L), .eviction, .retained_tokens, .sleep_passes (N), .vocab_size
    before, looped, after      ranges of block indices (the looped range and what surrounds it)
    embed(tokens) → h; logits(h) → logits; empty_memory() → one memory per block
    run_blocks(indices, h, memory, use_checkpoint) → (h, memory): blocks `indices` on the next tokens
    check_tokens(tokens, name); fast_blocks() → looped blocks with a fast-weight state S (`.state`)
    layout_description() → how an error message names the stack of blocks
and, for training (lmsleep.train) and its accounting:
    block_modules() → the module holding the blocks (its 2-D parameters are the hidden matrices for Muon)
    block_flops_per_token(i, context), head_flops_per_token() → forward FLOPs of block i / of the head
Each block's memory has next_pass() (a further sleep pass over the same window), evict(retain) (the
window's end), tensors() and from_tensors() (rows, files).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import validate
from .adaptive import Adaptive, Passes, max_passes

Memory = list  # one memory per block


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


class SleepRecurrence:
    """The windows, the wake pass, the sleep (passes 2..N) and the eviction; see the module's docstring."""

    def wake(self, tokens: torch.Tensor, memory: Memory, need_logits: bool = True, use_checkpoint: bool = False):
        """One ordinary pass of the next tokens of a window. Returns (logits or None, h1, memory) where
        h1 is the looped range's output, the input of sleep pass 2. Without `need_logits` the blocks after
        the looped range are left for `sleep` (they run once, on the final pass)."""
        h = self.embed(tokens)
        h, memory = self.run_blocks(self.before, h, memory, use_checkpoint)
        h1, memory = self.run_blocks(self.looped, h, memory, use_checkpoint)
        if not need_logits:
            return None, h1, memory
        h, memory = self.run_blocks(self.after, h1, memory, use_checkpoint)
        return self.logits(h), h1, memory

    def sleep(self, h1: torch.Tensor, memory: Memory, window_start: Memory, passes: Passes, use_checkpoint: bool = False):
        """Passes 2..N over a window from the features h1 and the memory the wake pass left; then
        the blocks after the looped range once on the final features, from their window-start memory.
        Returns the memory; `sleep_counted` also says how many passes each row ran."""
        return self.sleep_counted(h1, memory, window_start, passes, use_checkpoint)[0]

    def sleep_counted(self, h1: torch.Tensor, memory: Memory, window_start: Memory, passes: Passes,
                      use_checkpoint: bool = False) -> tuple[Memory, torch.Tensor]:
        """`sleep`, returning (memory, passes used [batch], the wake pass included). With a fixed N every
        row runs N passes; with `Adaptive` a row stops after the first pass that leaves its fast state
        converged and keeps that pass's result, while the other rows go on (lmsleep.adaptive)."""
        adaptive = passes if isinstance(passes, Adaptive) else None
        used = torch.ones(h1.shape[0], dtype=torch.long, device=h1.device)
        running = torch.ones_like(used, dtype=torch.bool)
        h = h1
        for n in range(2, max_passes(passes) + 1):
            restart = [m.next_pass() if i in self.looped else m for i, m in enumerate(memory)]
            new_h, new_memory = self.run_blocks(self.looped, h, restart, use_checkpoint)
            used = torch.where(running, n, used)
            if adaptive is None:
                h, memory = new_h, new_memory
                continue
            # Rows that stopped keep their result while the batch goes on: a row's sleep never depends on
            # its batch companions, so the stream, the forward and a batch of one agree.
            converged = adaptive.converged(self._fast_states(memory), self._fast_states(new_memory))
            h = torch.where(running[:, None, None], new_h, h)
            memory = [self._rows(running, new_memory[i], m) if i in self.looped else m for i, m in enumerate(memory)]
            running = running & ~converged
            if not bool(running.any()):
                break
        if len(self.after):
            _, memory = self.run_blocks(self.after, h, self._with_after(memory, window_start), use_checkpoint)
        return memory, used

    def _fast_states(self, memory: Memory) -> list[torch.Tensor]:
        return [memory[i].state for i in self.fast_blocks()]

    @staticmethod
    def _rows(take: torch.Tensor, new, old):
        """The memory whose batch rows are `new`'s where take [batch] is true, else `old`'s."""
        old_tensors, new_tensors = old.tensors(), new.tensors()
        assert old_tensors.keys() == new_tensors.keys()
        return type(new).from_tensors({
            name: torch.where(take.view(-1, *[1] * (t.dim() - 1)), t, old_tensors[name])
            for name, t in new_tensors.items()
        })

    def _with_after(self, memory: Memory, window_start: Memory) -> Memory:
        return [window_start[i] if i in self.after else m for i, m in enumerate(memory)]

    def evict(self, memory: Memory) -> Memory:
        return [m.evict(self.config.retained_tokens) for m in memory]

    def window_length(self, time: int) -> int:
        return max(time, 1) if self.config.eviction == "none" else self.config.window

    def windows(self, time: int, boundaries=None) -> list[tuple[int, int]]:
        """The windows [start, end) the forward cuts `time` tokens into: a window ends when it holds L
        tokens or at one of `boundaries` (positions in [1, time], strictly increasing, where a sleep on
        demand ended a window in the stream), whichever comes first; the next window counts its L tokens
        from there, as the stream does. A window never exceeds L."""
        length = self.window_length(time)
        ends = self._check_boundaries(boundaries, time)
        spans, start = [], 0
        while start < time:
            end = min(start + length, time)
            while ends and ends[0] <= start:
                ends.pop(0)
            if ends and ends[0] < end:
                end = ends.pop(0)
            spans.append((start, end))
            start = end
        return spans

    def _check_boundaries(self, boundaries, time: int) -> list[int]:
        if boundaries is None:
            return []
        if isinstance(boundaries, torch.Tensor):
            boundaries = boundaries.tolist()
        if self.config.eviction == "none":
            raise ValueError("boundaries need a model that sleeps (eviction 'hard' or 'sliding'); this one has eviction='none'")
        if isinstance(boundaries, (str, bytes)) or not hasattr(boundaries, "__iter__"):
            raise validate.WrongType(f"boundaries must be a list of token positions, got {boundaries!r}")
        ends = list(boundaries)
        for i, end in enumerate(ends):
            validate.integer(f"boundaries[{i}]", end, 1, time, f"a window end within the {time} tokens")
        if any(b <= a for a, b in zip(ends, ends[1:])):
            raise ValueError(f"boundaries must be strictly increasing (no empty window), got {ends}")
        return ends

    # ----- the training algorithm -----

    def forward(
        self,
        tokens: torch.Tensor,
        loss_mask: torch.Tensor | None = None,
        passes: Passes | None = None,
        use_checkpoint: bool = False,
        logits_for: str = "all",
        boundaries=None,
        return_passes: bool = False,
    ):
        """Wake logits [batch, time, vocab] for `tokens` [batch, time].

        loss_mask [batch, time]: a chunk whose mask is zero (over the whole batch) is a consolidation
        window and gets N passes; the others get one. No mask = every window is slept on, as in streaming.
        passes: N′ to use instead of config.sleep_passes (evaluation at another N), or
            `Adaptive(ε, N_max)` to sleep each row until its fast state converges (lmsleep.adaptive).
        logits_for: "all", or "loss" to skip the head on consolidation chunks (their rows are left zero).
        boundaries: extra window ends (sleeps on demand), see `windows`; the stream that called
            `sleep_now` after these many tokens gives the same logits.
        return_passes: also return the passes each row ran per window, [batch, windows] (1 where a window
            was not slept on), as (logits, passes).
        """
        self.check_tokens(tokens)
        passes = self._check_passes(passes)
        if loss_mask is not None and loss_mask.shape != tokens.shape:
            raise ValueError(f"loss_mask must have the tokens' shape {tuple(tokens.shape)}, got {tuple(loss_mask.shape)}")
        batch, time = tokens.shape
        memory = self.empty_memory()
        chunks, used = [], []
        for start, end in self.windows(time, boundaries):
            consolidate = loss_mask is None or not bool(loss_mask[:, start:end].any())
            need_logits = logits_for == "all" or not consolidate
            window_start = memory
            logits, h1, memory = self.wake(tokens[:, start:end], memory, need_logits, use_checkpoint)
            window_passes = torch.ones(batch, dtype=torch.long, device=h1.device)
            if consolidate and (max_passes(passes) > 1 or not need_logits):
                memory, window_passes = self.sleep_counted(h1, memory, window_start, passes, use_checkpoint)
            memory = self.evict(memory)
            chunks.append(logits if logits is not None else h1.new_zeros(batch, end - start, self.config.vocab_size))
            used.append(window_passes)
        if not chunks:
            logits = self.logits(self.embed(tokens))  # [batch, 0, vocab]
        else:
            logits = torch.cat(chunks, dim=1)
        if return_passes:
            return logits, (torch.stack(used, dim=1) if used else torch.zeros(batch, 0, dtype=torch.long))
        return logits

    def _check_passes(self, passes: Passes | None) -> Passes:
        """N′ (a positive int) or `Adaptive`, checked against this model; None: config.sleep_passes."""
        if passes is None:
            return self.config.sleep_passes
        if isinstance(passes, Adaptive):
            if self.config.eviction == "none":
                raise ValueError("adaptive passes need a model that sleeps; this one has eviction='none' (it never sleeps)")
            if not self.fast_blocks():
                raise ValueError(
                    f"adaptive passes measure the fast-weight state S of the looped blocks, but "
                    f"{self.layout_description()} has no fast-weight block in its looped range {list(self.looped)}: "
                    "nothing to measure; use a fixed number of passes"
                )
            return passes
        validate.positive_int("passes", passes)
        if passes != 1 and self.config.eviction == "none":
            raise ValueError("passes must be 1 for a model with eviction='none' (it never sleeps)")
        return passes

    # ----- training: the loss and the model's accounting (as in nanoGPT / nanochat) -----

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

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"muon": the blocks' hidden matrices, "adamw": everything else}: embeddings, the head, norms,
        conv kernels, A_log / dt_bias, and parameters a layer tagged `optimizer_group = "adamw"` (the
        per-head decay and write-strength gates). Each list keeps the order of `parameters()`."""
        in_blocks = {id(p) for p in self.block_modules().parameters()}
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
        total = 0.0
        for start, end in self.windows(len(loss_mask)):
            chunk = loss_mask[start:end]
            passes = self.config.sleep_passes if not any(chunk) else 1
            for i in range(self.after.stop):
                runs = passes if i in self.looped else 1
                total += runs * len(chunk) * self.block_flops_per_token(i, len(chunk))
            total += len(chunk) * self.head_flops_per_token()
        return 3 * total
