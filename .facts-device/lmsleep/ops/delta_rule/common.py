"""What the two fast paths (`chunk_fast.py` in torch ops, `native.py` in C) share: how a sequence is cut
into chunks, and how independent blocks of (batch rows, heads) run side by side on threads."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch


def chunking(time: int, chunk_size: int) -> tuple[int, int]:
    """(chunks, tokens per chunk) for a sequence of `time` tokens and chunks of at most `chunk_size`: the
    sequence is cut into ⌈T / chunk_size⌉ chunks of equal length, so at most chunks − 1 tokens are padding."""
    chunks = -(-time // chunk_size)
    return chunks, -(-time // chunks)


def thread_count(threads: int | None, elements: int, split_min: int, caller: str) -> int:
    """How many threads a fast path uses: `threads` as given (checked), else torch.get_num_threads() for
    inputs of at least `split_min` values and 1 below, where starting threads costs more than it saves."""
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"{caller}: threads must be a positive int or None, got {threads!r}")
    if threads is None:
        return torch.get_num_threads() if elements >= split_min else 1
    return threads


def even_slices(size: int, parts: int) -> list[slice]:
    """`size` cut into min(parts, size) contiguous slices whose lengths differ by at most one (none for 0)."""
    parts = min(parts, size)
    if parts == 0:
        return []
    bounds = [size * i // parts for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


_POOLS: dict[int, ThreadPoolExecutor] = {}  # by size, made on first use


def map_blocks(work, blocks: list, device_type: str) -> list:
    """work(block) for every block, on as many threads as blocks. Grad and inference mode are per thread, so
    the caller's are set in each; autocast is off in all, so that the op computes in its inputs' dtype
    whichever thread runs a block."""
    grad_enabled, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def run(block):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad_enabled), \
                torch.autocast(device_type, enabled=False):
            return work(block)

    if len(blocks) == 1:
        return [run(blocks[0])]
    pool = _POOLS.get(len(blocks))
    if pool is None:
        pool = _POOLS[len(blocks)] = ThreadPoolExecutor(max_workers=len(blocks), thread_name_prefix="lmsleep-op")
    return list(pool.map(run, blocks))
