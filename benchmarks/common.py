"""Shared bits of the benchmarks: machine facts, timing, and the table + final-JSON-line output."""
from __future__ import annotations

import json
import platform
import resource
import statistics
import time

import torch


VECTOR_FLAGS = ("avx512f", "avx2", "fma", "avx", "asimd", "sve")  # the CPU features the native op's speed depends on


def machine() -> dict:
    cpu, family, vectors = platform.processor() or "unknown", "", []
    try:
        with open("/proc/cpuinfo") as handle:
            info = dict(line.split(":", 1) for line in handle.read().split("\n\n")[0].splitlines() if ":" in line)
        info = {key.strip(): value.strip() for key, value in info.items()}
        cpu = info.get("model name", cpu)
        family = f"family {info.get('cpu family', '?')} model {info.get('model', '?')}" if "cpu family" in info else ""
        present = set((info.get("flags") or info.get("Features") or "").split())
        vectors = [flag for flag in VECTOR_FLAGS if flag in present]
    except OSError:
        pass
    return {"cpu": cpu, "cpu_family": family, "cpu_vectors": " ".join(vectors), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def interleaved_medians(fns: list, repeats: int, warmup: int = 1) -> list[float]:
    """Median seconds of each of `fns`, called in turns (one call of each per repeat), so that a host whose
    speed drifts during the measurement slows all of them alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, kept in zip(fns, times):
            started = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - started)
    return [statistics.median(kept) for kept in times]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).rjust(widths[c]) for c in columns))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def final_json(name: str, payload: dict) -> None:
    print(json.dumps({"benchmark": name, "machine": machine(), **payload}))
