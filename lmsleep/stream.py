"""The wake/sleep streaming engine: one wake pass per token; when the window fills, sleep, then evict.

    feed tokens → each gets one ordinary pass (KV cache of this window, S updated recurrently)
    window full → sleep: passes 2..N over the window from the features and state pass 1 left,
                  blocks after the looped range once on the final features; then evict or slide the KV
    sleep_now()  → the same on the partial window now (an agent going idle), so the next session starts light

`passes` is a fixed N or `Adaptive(ε, N_max)` (lmsleep.adaptive: each row sleeps until its fast state
converges); `last_passes` and `total_passes` ([batch]) say how many passes the sleeps ran.

Memory is bounded by L whatever the stream length (except eviction='none', the full-attention baseline,
whose cache grows by design). The whole memory state can be saved to a file and restored elsewhere.
"""
from __future__ import annotations

import json

import torch

from . import validate
from .adaptive import Adaptive, Passes, max_passes
from .config import SleepConfig
from .decoding import Picked, Sampling, finish_generation, generator_for, pick
from .io import config_diff, load_tensors, save_tensors
from .model import SleepLM

FORMAT = "lmsleep-memory"
VERSION = 2  # version 1: the same contents, written before files carried a checksum


class SleepStream:
    def __init__(self, model: SleepLM, batch_size: int = 1, passes: Passes | None = None):
        validate.positive_int("batch_size", batch_size)
        self.model = model
        self.batch_size = batch_size
        self.passes = model._check_passes(passes)
        self.reset()

    def reset(self) -> None:
        self.memory = self.model.empty_memory()
        self.window_start = self.memory  # memory at the window start (the after-loop blocks rerun from it)
        self.features: list[torch.Tensor] = []  # pass-1 outputs of the looped range, this window
        self.position = 0  # tokens of the current window seen so far
        self.tokens_seen = 0
        self.sleeps = 0
        device = next(self.model.parameters()).device
        self.last_passes = torch.zeros(self.batch_size, dtype=torch.long, device=device)  # of the latest sleep
        self.total_passes = torch.zeros_like(self.last_passes)  # over all sleeps: mean = total / sleeps

    @property
    def _keeps_features(self) -> bool:
        return max_passes(self.passes) > 1

    def _window_left(self) -> int:
        if self.model.config.eviction == "none":
            return 1 << 62
        return self.model.config.window - self.position

    @torch.no_grad()
    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed tokens [batch, n] (or [n] when batch_size is 1); returns their wake logits [batch, n, vocab]."""
        if isinstance(tokens, torch.Tensor) and tokens.dim() == 1 and self.batch_size == 1:
            tokens = tokens[None]
        self.model.check_tokens(tokens)
        if tokens.shape[0] != self.batch_size:
            raise ValueError(f"this stream has batch size {self.batch_size}, got tokens of shape {tuple(tokens.shape)}")
        outputs = []
        done = 0
        while done < tokens.shape[1]:
            take = min(tokens.shape[1] - done, self._window_left())
            logits, h1, self.memory = self.model.wake(tokens[:, done : done + take], self.memory)
            outputs.append(logits)
            if self._keeps_features:
                self.features.append(h1)
            done += take
            self.position += take
            self.tokens_seen += take
            if self._window_left() == 0:
                self._sleep()
        if not outputs:
            return torch.zeros(self.batch_size, 0, self.model.config.vocab_size)
        return torch.cat(outputs, dim=1)

    @torch.no_grad()
    def sleep_now(self) -> torch.Tensor:
        """Sleep on demand: consolidate the current partial window now (its N passes, or adaptive) and
        evict, so the next token starts a fresh window of L. Returns the passes each row ran [batch].
        The training forward gives the same logits with `boundaries` at these points (`tokens_seen`)."""
        if self.model.config.eviction == "none":
            raise ValueError("sleep_now needs a model that sleeps; this one has eviction='none' (no windows)")
        if self.position == 0:
            raise ValueError(
                f"sleep_now on an empty window: no token was fed since the last sleep (tokens_seen "
                f"{self.tokens_seen}, sleeps {self.sleeps}); there is nothing to consolidate"
            )
        self._sleep()
        return self.last_passes

    def _sleep(self) -> None:
        used = torch.ones_like(self.last_passes)
        if self._keeps_features:
            h1 = torch.cat(self.features, dim=1)
            self.memory, used = self.model.sleep_counted(h1, self.memory, self.window_start, self.passes)
        self.last_passes = used
        self.total_passes = self.total_passes + used
        self.memory = self.model.evict(self.memory)
        self.window_start = self.memory
        self.features = []
        self.position = 0
        self.sleeps += 1

    def take_rows(self, index: torch.Tensor) -> None:
        """Make row j of the stream what row index[j] is now, in place (rows may repeat: e.g. G completions of
        one prompt, or samples of many seeds, share the prompt's prefill), as if each new row had been fed its
        source row's tokens."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.last_passes.device)
        if index.dim() != 1 or index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= self.batch_size:
            raise ValueError(f"index must be a non-empty 1-D tensor of rows in [0, {self.batch_size}), got {index.tolist()}")

        self.memory = memory_rows(self.memory, index)
        self.window_start = memory_rows(self.window_start, index)
        self.features = [h.index_select(0, index) for h in self.features]
        self.last_passes, self.total_passes = self.last_passes[index], self.total_passes[index]
        self.batch_size = index.numel()

    def reserve(self, tokens: int) -> None:
        """Make room in the KV caches for the next `tokens` tokens of this window (no more than it has left),
        allocated now and once (see memory_with_room)."""
        validate.non_negative_int("tokens", tokens)
        room = min(tokens, self._window_left())
        if room > 0:
            with torch.no_grad():  # a stream's memory is never trained through
                self.memory = memory_with_room(self.memory, room)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 generator: torch.Generator | None = None, stop_token: int | None = None,
                 return_logprobs: bool = False):
        """Feed the prompt, then pick a token from the last logits and feed it back, `max_new_tokens` times.

        temperature 0 (the default) is greedy (argmax); otherwise tokens are sampled with temperature,
        top_k and top_p as lmsleep.decoding describes, drawn with `generator` or a fresh one seeded with
        `seed` (same seed, same tokens). A row that emits `stop_token` has finished: it keeps emitting (and
        being fed) stop_token, and generation ends early once every row has finished (the rest of the
        columns hold stop_token). Returns the tokens [batch, max_new_tokens], or with return_logprobs a
        decoding.Generation that adds each token's log-probabilities and a mask of the real tokens.
        """
        validate.non_negative_int("max_new_tokens", max_new_tokens)
        sampling = Sampling(temperature, top_k, top_p)
        device = next(self.model.parameters()).device
        generator = generator_for(device, seed, generator)
        vocab_size = self.model.config.vocab_size
        if stop_token is not None and (isinstance(stop_token, bool) or not isinstance(stop_token, int)
                                       or not 0 <= stop_token < vocab_size):
            raise ValueError(f"stop_token must be a token id in [0, {vocab_size}) or None, got {stop_token!r}")
        logits = self.feed(prompt)
        if logits.shape[1] == 0:
            raise ValueError("generate needs a prompt of at least one token")
        finished = torch.zeros(self.batch_size, dtype=torch.bool, device=logits.device)
        steps: list[Picked] = []
        for _ in range(max_new_tokens):
            picked = pick(logits[:, -1], sampling, generator)
            if stop_token is not None:  # a finished row's forced stop token is certain: log-probability 0
                picked = Picked(*(torch.where(finished, fill, value) for fill, value in
                                  zip((stop_token, 0.0, 0.0), picked)))
            steps.append(picked)
            logits = self.feed(picked.tokens[:, None])
            if stop_token is not None:
                finished = finished | (picked.tokens == stop_token)
                if finished.all():
                    break
        return finish_generation(steps, max_new_tokens, self.batch_size, stop_token, logits.device, return_logprobs)

    # ----- persistence -----

    def save(self, path) -> None:
        """Write the whole memory state (S, KV caches, window features, position) to a safetensors file."""
        tensors = {}
        for i, memory in enumerate(self.memory):
            tensors.update({f"memory.{i}.{name}": t for name, t in memory.tensors().items()})
        for i in self.model.after:
            tensors.update({f"window_start.{i}.{name}": t for name, t in self.window_start[i].tensors().items()})
        if self.features:
            tensors["features"] = torch.cat(self.features, dim=1)
        metadata = {
            "config": self.model.config.to_json(),
            "state": json.dumps(
                {"batch_size": self.batch_size, "position": self.position, "tokens_seen": self.tokens_seen,
                 "sleeps": self.sleeps, "last_passes": self.last_passes.tolist(),
                 "total_passes": self.total_passes.tolist(),
                 "passes": self.passes.to_dict() if isinstance(self.passes, Adaptive) else self.passes}
            ),
        }
        save_tensors(path, tensors, FORMAT, VERSION, metadata)

    @classmethod
    def load(cls, model: SleepLM, path) -> "SleepStream":
        """Restore a stream saved by `save`, refusing a file made for another model config."""
        tensors, metadata = load_tensors(path, FORMAT, VERSION, "memory state", unchecked=(1,))
        saved = SleepConfig.from_json(metadata["config"])
        if saved != model.config:
            raise ValueError(f"memory state {path} was saved for a different model config: {config_diff(model.config, saved)}")
        state = json.loads(metadata["state"])
        passes = state["passes"]
        stream = cls(model, state["batch_size"], Adaptive(**passes) if isinstance(passes, dict) else passes)
        stream.position, stream.tokens_seen, stream.sleeps = state["position"], state["tokens_seen"], state["sleeps"]
        param = next(model.parameters())
        if "total_passes" in state:
            last, total = state["last_passes"], state["total_passes"]
        else:  # a file written before adaptive sleep: every sleep ran the fixed N
            last, total = [passes if stream.sleeps else 0] * stream.batch_size, [passes * stream.sleeps] * stream.batch_size
        stream.last_passes = torch.tensor(last, dtype=torch.long, device=param.device)
        stream.total_passes = torch.tensor(total, dtype=torch.long, device=param.device)
        tensors = {name: t.to(param.device) for name, t in tensors.items()}
        stream.memory = [cls._block_memory(model, i, "memory", tensors) for i in range(len(model.blocks))]
        stream.window_start = [
            cls._block_memory(model, i, "window_start", tensors) if i in model.after else stream.memory[i]
            for i in range(len(model.blocks))
        ]
        if "features" in tensors:
            stream.features = [tensors.pop("features")]
        if tensors:
            raise ValueError(f"memory state {path} has unexpected entries {sorted(tensors)}")
        for t in [t for m in stream.memory for t in m.tensors().values()]:
            if t.shape[0] != stream.batch_size:
                raise ValueError(f"memory state {path} is inconsistent: a tensor of batch {t.shape[0]}, expected {stream.batch_size}")
        return stream

    @staticmethod
    def _block_memory(model: SleepLM, index: int, prefix: str, tensors: dict):
        head = f"{prefix}.{index}."
        own = {name[len(head):]: tensors.pop(name) for name in list(tensors) if name.startswith(head)}
        try:
            return model.blocks[index].memory_type.from_tensors(own)
        except TypeError as error:
            raise ValueError(f"memory state entry {head}* does not fit block {index}: {error}") from None


def open_stream(model, batch_size: int = 1):
    """A stream reading into `model`, rows side by side: the model's own (`model.new_stream(batch_size)`: an
    attached transformers model's KV cache, continual.causal_lm) or, for a SleepLM, a SleepStream."""
    make = getattr(model, "new_stream", None)
    return make(batch_size) if make is not None else SleepStream(model, batch_size=batch_size)


def memory_rows(memory: list, index: torch.Tensor, detach: bool = False) -> list:
    """A model's memory (one entry per block) whose row j is row index[j] of `memory` (rows may repeat; detach:
    without the autograd graph that made it)."""
    return [type(m).from_tensors({name: (t.detach() if detach else t).index_select(0, index)
                                  for name, t in m.tensors().items()}) for m in memory]


def memory_with_room(memory: list, tokens: int) -> list:
    """The same memory (the same values) whose KV caches hold `tokens` more keys without growing: a decode of
    known length allocates its caches once and no larger than it needs (a growing cache reallocates at twice
    its size, at least 64 keys: at a large batch, memory the decode touches and attention reads across)."""
    return [m.with_room(tokens) if hasattr(m, "with_room") else m for m in memory]


def sample(model, prompts: torch.Tensor, length: int, temperature: float, seed: int,
           context: torch.Tensor | None = None) -> torch.Tensor:
    """Sequences [n, prompt + length] sampled from `model` (a batched, seeded SleepStream) after it reads
    `context` [n, c] (not returned): the one sampler of replay, dreams and restatements."""
    stream = open_stream(model, prompts.shape[0])
    if context is not None:
        stream.feed(context)
    return torch.cat([prompts, stream.generate(prompts, length, temperature=temperature, seed=seed)], dim=1)
