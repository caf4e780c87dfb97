"""The model configuration: one plain dataclass that refuses bad values with a clear message."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

EVICTION_MODES = ("hard", "sliding", "none")


@dataclass(frozen=True)
class SleepConfig:
    """Hyper-parameters of a sleep hybrid (spec: sleep-recurrence.md).

    layout: one letter per block, "A" attention, "G" Gated-DeltaNet fast weights (e.g. "AGAG").
    loop_start, loop_end: the looped range [loop_start, loop_end) of blocks; loop_end None = all blocks.
    window: L, tokens per window; sleep_passes: N, passes over a consolidation window.
    eviction: "hard" (drop the KV cache at each window end), "sliding" (keep the last L−1 keys/values of
    the final pass), or "none" (one window spanning the whole sequence: a plain transformer/hybrid).
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

    def __post_init__(self) -> None:
        positive = (
            "vocab_size", "d_model", "n_heads", "head_dim", "n_fast_heads", "fast_key_dim", "fast_value_dim",
            "mlp_hidden", "conv_size", "window", "sleep_passes",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SleepConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.layout, str) or not self.layout or set(self.layout) - {"A", "G"}:
            raise ValueError(
                f"SleepConfig.layout must be a non-empty string of 'A' (attention) and 'G' (fast-weight) "
                f"blocks, got {self.layout!r}"
            )
        if not isinstance(self.vocabulary, str) or not self.vocabulary:
            raise ValueError(f"SleepConfig.vocabulary must be a non-empty string, got {self.vocabulary!r}")
        if self.eviction not in EVICTION_MODES:
            raise ValueError(f"SleepConfig.eviction must be one of {EVICTION_MODES}, got {self.eviction!r}")
        n_blocks = len(self.layout)
        loop_end = self.resolved_loop_end
        if not isinstance(self.loop_start, int) or not 0 <= self.loop_start < n_blocks:
            raise ValueError(f"SleepConfig.loop_start must be in [0, {n_blocks - 1}], got {self.loop_start!r}")
        if not isinstance(loop_end, int) or not self.loop_start < loop_end <= n_blocks:
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
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ValueError("SleepConfig.rope_theta and SleepConfig.norm_eps must be positive")

    @property
    def resolved_loop_end(self) -> int:
        return len(self.layout) if self.loop_end is None else self.loop_end

    @property
    def retained_tokens(self) -> int:
        """Keys/values an attention block carries into the next window (L − 1 when sliding)."""
        return self.window - 1 if self.eviction == "sliding" else 0

    def replace(self, **changes) -> "SleepConfig":
        return SleepConfig(**{**asdict(self), **changes})

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SleepConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"config is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError("config JSON must be an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config has unknown fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    # Baselines that later issues compare against, built from the same machinery.
    @classmethod
    def full_attention(cls, **kwargs) -> "SleepConfig":
        """A transformer that sees the whole sequence (no eviction)."""
        n_blocks = len(kwargs.pop("layout", "AAAA"))
        return cls(layout="A" * n_blocks, eviction="none", sleep_passes=1, **kwargs)

    @classmethod
    def sliding_window(cls, **kwargs) -> "SleepConfig":
        """A transformer whose attention sees the last L tokens (sliding eviction, one pass)."""
        n_blocks = len(kwargs.pop("layout", "AAAA"))
        return cls(layout="A" * n_blocks, eviction="sliding", sleep_passes=1, **kwargs)
