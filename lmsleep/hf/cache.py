"""SleepCache: lmsleep's memory as a transformers cache, so that `generate()` decodes through the wake/sleep
engine.

The memory is a SleepStream: the fast-weight states S, the keys/values of the current window (and those
retained from the previous one when sliding), the pass-1 features of the window, and the position in it.
Feeding tokens wakes on them; when the window fills, the model sleeps (N passes) and evicts, so the memory
stays bounded by the window L however long the generation. Nothing can be taken back once slept on, so the
cache cannot be cropped (assisted decoding, which crops, is refused).

transformers reads a cache through a few calls: `get_seq_length` (tokens seen, which `generate` uses to
slice a prompt continued from a returned cache), `is_linear` / `is_compileable` / `is_croppable`, and
`reorder_cache` (beam search); the per-layer key/value `update` of attention caches has no meaning here.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from ..recurrence import SleepRecurrence
from ..stream import SleepStream


class SleepCache(Cache):
    """The wake/sleep memory of `model` (an lmsleep SleepLM, or a transformers hybrid's hf.hybrid.SleepHybrid)
    for one batch; `passes`: N′ (or Adaptive) to sleep with instead of the model's N. The stream is made at
    the first tokens (their batch size is the cache's)."""

    is_compileable = False  # the window fills and sleeps at data-dependent steps: nothing static to compile

    def __init__(self, model: SleepRecurrence, passes=None):
        if not isinstance(model, SleepRecurrence):
            raise TypeError(f"SleepCache needs a model that sleeps (an lmsleep SleepLM: a SleepLMForCausalLM's "
                            f".model; or a sleep_hybrid model's .model), got {type(model).__name__}")
        super().__init__(layers=[])
        self.model = model
        self.passes = model._check_passes(passes)
        self.stream: SleepStream | None = None

    def __repr__(self) -> str:
        return (f"SleepCache(tokens_seen={self.get_seq_length()}, position={self.position}, "
                f"sleeps={self.sleeps}, batch_size={self.batch_size})")

    # ----- what the model's forward calls -----

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Wake on tokens [batch, n] (sleeping whenever the window fills); their logits [batch, n, vocab]."""
        if self.stream is None:
            self.model.check_tokens(tokens, "input_ids")
            self.stream = SleepStream(self.model, batch_size=tokens.shape[0], passes=self.passes)
        return self.stream.feed(tokens)

    def sleep_now(self) -> torch.Tensor:
        """Sleep on the current partial window now and evict (SleepStream.sleep_now); the passes each row ran."""
        if self.stream is None:
            raise ValueError("sleep_now on a SleepCache that was fed no token: there is nothing to consolidate")
        return self.stream.sleep_now()

    @property
    def position(self) -> int:
        """Tokens of the current window seen so far (the window sleeps and empties when it reaches L)."""
        return 0 if self.stream is None else self.stream.position

    @property
    def sleeps(self) -> int:
        return 0 if self.stream is None else self.stream.sleeps

    # ----- the Cache protocol transformers' generate() reads -----

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens this memory has consumed (not its size, which is bounded by the window)."""
        return 0 if self.stream is None else self.stream.tokens_seen

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1  # no maximum: the memory is bounded by L and the sequence is not

    @property
    def batch_size(self) -> int:
        return -1 if self.stream is None else self.stream.batch_size

    @property
    def is_linear(self) -> list[bool]:
        # Not a pure linear-attention cache to generate(): it counts the tokens it has seen, so a prompt
        # continued from it is sliced to the tokens not yet fed, as for a key/value cache.
        return [False]

    @property
    def is_croppable(self) -> bool:
        return False

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        raise NotImplementedError("SleepCache holds lmsleep's wake/sleep memory and is fed by SleepLMForCausalLM; "
                                  "it takes no per-layer key/value updates")

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise ValueError("a SleepCache cannot be cropped: slept-on windows cannot be taken back (assisted "
                             "decoding and other rollbacks are not supported by lmsleep models)")

    def reset(self) -> None:
        self.stream = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row i of the memory becomes row beam_idx[i]."""
        self._select_rows(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._select_rows(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.stream is not None:
            rows = torch.arange(self.stream.batch_size).repeat_interleave(repeats)
            self._select_rows(rows)

    def _select_rows(self, rows: torch.Tensor) -> None:
        stream = self.stream
        if stream is None:
            return
        rows = rows.to(next(self.model.parameters()).device)

        def select(memories):
            return [type(m).from_tensors({name: t.index_select(0, rows) for name, t in m.tensors().items()})
                    for m in memories]

        stream.memory, stream.window_start = select(stream.memory), select(stream.window_start)
        stream.features = [f.index_select(0, rows) for f in stream.features]
        stream.batch_size = len(rows)
