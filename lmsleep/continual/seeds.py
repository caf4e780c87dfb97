"""Seed derivation: one rule for turning a run's seed and a position in it (a language, a step, a sleep)
into the seed of one random stream, instead of literal primes (`seed * 1_000_003 + step`) in every file.

    derive(seed, "wake", language)      the wake batches of `language` in the run seeded `seed`

The result is a hash (BLAKE2b, 63 bits) of the canonical JSON of [seed, *indices]: deterministic across
processes, platforms and Python versions, different for different argument lists (derive(0, 1) and
derive(1, 0), derive(3) and derive(3, 0) differ; arithmetic like `seed * p + i` collides as soon as i
reaches p), and valid wherever a seed is taken (torch.Generator.manual_seed, random.Random). A string
index names the stream, so that two uses of the same numbers never share one.
"""
from __future__ import annotations

import hashlib
import json

BITS = 63  # a non-negative int64: accepted by torch.manual_seed, Generator.manual_seed and random.Random


def derive(seed: int, *indices: int | str) -> int:
    """The seed in [0, 2**63) of the stream named by `indices` (ints or strings) within the run `seed`."""
    for i, value in enumerate((seed, *indices)):
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (i == 0 and isinstance(value, str)):
            what = "seed" if i == 0 else f"index {i - 1}"
            allowed = "an int" if i == 0 else "an int or a str"
            raise TypeError(f"derive: {what} must be {allowed}, got {value!r}")
    digest = hashlib.blake2b(json.dumps([seed, *indices]).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - BITS)
