"""The model configuration: one plain dataclass that refuses bad values with a clear message, and the model
kinds (the sleep hybrid and the baselines it is compared with), defined once."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from . import validate
from .blocks import BLOCK_KINDS
from .layers.levels import GATINGS

EVICTION_MODES = ("hard", "sliding", "none")

# Whose layers build the model a SleepConfig describes (model.build_model builds it).
ARCHITECTURES = {
    "lmsleep": "lmsleep's own blocks (SleepLM)",
    "qwen3.5": "transformers' Qwen3.5 (Qwen3_5ForCausalLM) with these dimensions, randomly initialised and made to "
               "sleep by lmsleep.hf.sleep_hybrid (needs transformers: pip install 'lmsleep[hf]')",
}


def retained_tokens(window: int, eviction: str) -> int:
    """Keys/values an attention block carries into the next window: L − 1 when sliding, else none."""
    return window - 1 if eviction == "sliding" else 0


@dataclass(frozen=True)
class SleepConfig:
    """Hyper-parameters of a sleep hybrid (spec: sleep-recurrence.md).

    layout: one letter per block (blocks.BLOCK_KINDS: "A" attention, "G" Gated-DeltaNet fast weights), e.g. "AGAG".
    loop_start, loop_end: the looped range [loop_start, loop_end) of blocks; loop_end None = all blocks.
    window: L, tokens per window; sleep_passes: N, passes over a consolidation window.
    eviction: "hard" (drop the KV cache at each window end), "sliding" (keep the last L−1 keys/values of
    the final pass), or "none" (one window spanning the whole sequence: a plain transformer/hybrid).
    vocabulary: the identity of the vocabulary the token ids belong to ("chars": the tasks' characters).
    memory_levels: 0 for SwiGLU MLPs, or k ≥ 1 memory levels in every block's MLP slot (paper 2,
    layers.levels), each with `level_experts` base experts (routed top-1 when more than one), a pool of
    `expert_pool` low-rank experts of rank `expert_rank`, gated by `expert_gating` ("sigmoid": a gate per expert that
    starts closed, the default; "sum" or "softmax" as ablations).
    architecture: whose layers build the model (ARCHITECTURES): "lmsleep" (SleepLM's blocks) or "qwen3.5"
    (transformers' Qwen3_5ForCausalLM built from the same fields: layout letters → its layer_types, d_model →
    hidden_size, n_heads × head_dim attention, n_fast_heads × fast_key_dim / fast_value_dim Gated-DeltaNet heads,
    mlp_hidden → intermediate_size, conv_size; memory levels, eviction "none" and tied embeddings not supported).
    """

    vocab_size: int = 32
    d_model: int = 64
    layout: str = "AGAG"
    n_heads: int = 4
    head_dim: int = 16
    n_fast_heads: int = 4
    fast_key_dim: int = 16
    fast_value_dim: int = 16
    mlp_hidden: int = 192
    conv_size: int = 4
    window: int = 32
    sleep_passes: int = 1
    eviction: str = "hard"
    loop_start: int = 0
    loop_end: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    vocabulary: str = "chars"
    memory_levels: int = 0
    level_experts: int = 1
    expert_rank: int = 4
    expert_pool: int = 4
    expert_gating: str = "sigmoid"
    architecture: str = "lmsleep"

    def __post_init__(self) -> None:
        validate.check_types(self)
        positive = (
            "vocab_size", "d_model", "n_heads", "head_dim", "n_fast_heads", "fast_key_dim", "fast_value_dim",
            "mlp_hidden", "conv_size", "window", "sleep_passes", "level_experts", "expert_rank", "expert_pool",
        )
        for name in positive:
            validate.positive_int(f"SleepConfig.{name}", getattr(self, name))
        if not self.layout or set(self.layout) - set(BLOCK_KINDS):
            kinds = ", ".join(f"'{letter}' ({kind.name})" for letter, kind in BLOCK_KINDS.items())
            raise ValueError(f"SleepConfig.layout must be a non-empty string of {kinds} blocks, got {self.layout!r}")
        validate.one_of("SleepConfig.eviction", self.eviction, EVICTION_MODES)
        validate.non_negative_int("SleepConfig.memory_levels", self.memory_levels)
        validate.one_of("SleepConfig.expert_gating", self.expert_gating, GATINGS)
        n_blocks = len(self.layout)
        validate.integer("SleepConfig.loop_start", self.loop_start, 0, n_blocks - 1)
        loop_end = self.resolved_loop_end
        if not self.loop_start < loop_end <= n_blocks:
            raise ValueError(
                f"SleepConfig.loop_end must be in [{self.loop_start + 1}, {n_blocks}] (or None for all blocks), "
                f"got {self.loop_end!r}"
            )
        if self.eviction == "none" and self.sleep_passes != 1:
            raise ValueError(
                "SleepConfig.sleep_passes must be 1 when eviction='none' (without windows there is nothing to "
                f"sleep on), got {self.sleep_passes}"
            )
        if self.head_dim % 2:
            raise ValueError(f"SleepConfig.head_dim must be even (rotary embeddings), got {self.head_dim}")
        validate.positive_number("SleepConfig.rope_theta", self.rope_theta)
        validate.positive_number("SleepConfig.norm_eps", self.norm_eps)
        if not self.vocabulary:
            raise ValueError("SleepConfig.vocabulary must be a non-empty string, got ''")
        validate.one_of("SleepConfig.architecture", self.architecture, ARCHITECTURES)
        if self.architecture != "lmsleep":
            unsupported = {"memory_levels": (self.memory_levels, 0), "tie_embeddings": (self.tie_embeddings, False)}
            for name, (value, plain) in unsupported.items():
                if value != plain:
                    raise ValueError(f"SleepConfig.{name} must be {plain!r} for architecture {self.architecture!r} "
                                     f"(only lmsleep's own blocks have it), got {value!r}")
            if self.eviction == "none":
                raise ValueError(f"SleepConfig.eviction must be 'hard' or 'sliding' for architecture "
                                 f"{self.architecture!r} (lmsleep.hf.sleep_hybrid windows its attention), got 'none'")

    @property
    def resolved_loop_end(self) -> int:
        return len(self.layout) if self.loop_end is None else self.loop_end

    @property
    def retained_tokens(self) -> int:
        """Keys/values an attention block carries into the next window (L − 1 when sliding)."""
        return retained_tokens(self.window, self.eviction)

    def replace(self, **changes) -> "SleepConfig":
        return SleepConfig(**{**asdict(self), **changes})

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SleepConfig":
        return validate.from_json(cls, text, "config")

    # Baselines, built from the same machinery (see MODEL_KINDS).
    @classmethod
    def full_attention(cls, **kwargs) -> "SleepConfig":
        """A transformer that sees the whole sequence (no eviction)."""
        return cls(**model_fields("full-attention", kwargs))

    @classmethod
    def sliding_window(cls, **kwargs) -> "SleepConfig":
        """A transformer whose attention sees the last L tokens (sliding eviction, one pass)."""
        return cls(**model_fields("sliding-window", kwargs))


DEFAULT_LAYOUT = SleepConfig.layout  # the spec's hybrid, "AGAG"

MODEL_KINDS = {
    "sleep": "the sleep hybrid at N = passes",
    "full-attention": "a transformer of the same width and depth that sees the whole sequence (passes ignored)",
    "sliding-window": "a transformer of the same width and depth whose attention sees the last L tokens "
                      "(passes ignored)",
    "matched-blocks": "an N = 1 hybrid with `passes` times the blocks (compute-matched baseline)",
}


def model_fields(kind: str, fields: dict, passes: int | None = None) -> dict:
    """SleepConfig fields of a model kind, from `fields` (some SleepConfig fields, e.g. a TrainConfig's
    "model") and N = `passes` (None: fields' sleep_passes, else 1). Baselines keep the width and depth."""
    validate.one_of("model kind", kind, MODEL_KINDS)
    fields = dict(fields)
    passes = fields.get("sleep_passes", 1) if passes is None else passes
    layout = fields.get("layout", DEFAULT_LAYOUT)
    if kind == "sleep":
        fields["sleep_passes"] = passes
    elif kind in ("full-attention", "sliding-window"):
        if not isinstance(layout, str):
            raise validate.WrongType(f"SleepConfig.layout must be a string, got {layout!r}")
        eviction = "none" if kind == "full-attention" else "sliding"
        fields.update(layout="A" * len(layout), eviction=eviction, sleep_passes=1)
    else:  # matched-blocks
        validate.positive_int("passes", passes)
        if not isinstance(layout, str):
            raise validate.WrongType(f"SleepConfig.layout must be a string, got {layout!r}")
        fields.update(layout=layout * passes, sleep_passes=1)
    return fields
