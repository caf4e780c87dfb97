"""One way to derive seeds: `derive(seed, *indices)` gives the seed of a sub-stream (a sleep, a step, a copy,
a passage) from its parent's seed and its indices, instead of literal primes multiplied in place.

It hashes the whole path, so nesting never overflows (a derived seed is below 2**62, the range
torch.Generator.manual_seed takes) and distinct paths do not collide in practice (64-bit hash)."""
from __future__ import annotations

import hashlib
import struct

LIMIT = 2**62


def derive(seed: int, *indices: int) -> int:
    """The seed of sub-stream `indices` of `seed` (every argument an int, negative allowed)."""
    for value in (seed, *indices):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"seeds and indices must be ints, got {value!r}")
    digest = hashlib.blake2b(struct.pack(f"<{1 + len(indices)}q", *(v % 2**63 for v in (seed, *indices))),
                             digest_size=8).digest()
    return int.from_bytes(digest, "little") % LIMIT
