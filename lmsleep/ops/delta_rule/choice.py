"""Whether `backend="auto"` runs the native op on this machine: measured once, kept beside the build.

The native library is tuned for the vector widths it is written for (csrc/gated_delta_rule.c); on a CPU it
was not tuned for, the torch path could be the faster of the two. So the first time `auto` has both, it
times them (forward, and forward + backward, at MEASURED_SHAPE, one thread, interleaved, median of REPEATS
after a warm-up: about a second) and keeps the verdict in a file beside the library (same name, `.choice.json`),
which is keyed like the build by source, flags, compiler and CPU: a new build or another CPU measures again.
It says once, on stderr, what it chose and why; `reason()` says it again.

LMSLEEP_NATIVE=1 in the environment: the native op without measuring; LMSLEEP_NATIVE=0: never (library.py).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time

import torch

from . import library

FORMAT, VERSION = "lmsleep-native-choice", 1
MEASURED_SHAPE = (8, 256, 4, 64)  # (batch, time, heads, K = V): a training step's op at the main job's size
REPEATS = 3

_lock = threading.Lock()
_verdict: dict = {}  # the loaded or measured verdict, once per library file


def _inputs():
    batch, time_, heads, dim = MEASURED_SHAPE
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.nn.functional.normalize(torch.randn(batch, time_, heads, dim, generator=gen), dim=-1)
            for _ in range(2))
    v = torch.randn(batch, time_, heads, dim, generator=gen)
    g = torch.nn.functional.logsigmoid(torch.randn(batch, time_, heads, generator=gen) + 3)
    beta = torch.sigmoid(torch.randn(batch, time_, heads, generator=gen))
    return q, k, v, g, beta


def _timed_calls(backend: str):
    from .dispatch import gated_delta_rule  # the public op, as auto would run it

    inputs = _inputs()
    leaves = [x.clone().requires_grad_() for x in inputs]

    def forward():
        with torch.no_grad():
            gated_delta_rule(*inputs, backend=backend)

    def forward_backward():
        out, _ = gated_delta_rule(*leaves, backend=backend)
        out.sum().backward()

    return forward, forward_backward


def measure() -> dict:
    """Time the native op and the torch path (forward, forward + backward) on this machine: the verdict."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        calls = {name: _timed_calls(name) for name in ("native", "torch")}
        times = {(name, kind): [] for name in calls for kind in range(2)}
        for repeat in range(REPEATS + 1):  # the first round warms up
            for name, pair in calls.items():
                for kind, call in enumerate(pair):
                    started = time.perf_counter()
                    call()
                    if repeat:
                        times[name, kind].append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    ms = {f"{name}_{'fwd' if kind == 0 else 'fwdbwd'}_ms": 1e3 * statistics.median(kept)
          for (name, kind), kept in times.items()}
    native_ms, torch_ms = ms["native_fwd_ms"] + ms["native_fwdbwd_ms"], ms["torch_fwd_ms"] + ms["torch_fwdbwd_ms"]
    return {"format": FORMAT, "version": VERSION, "library": library.path().name, "lanes": library.lanes(),
            "shape": list(MEASURED_SHAPE), "threads": 1, **ms, "native": native_ms <= torch_ms}


def _describe(verdict: dict) -> str:
    native = verdict["native_fwd_ms"] + verdict["native_fwdbwd_ms"]
    other = verdict["torch_fwd_ms"] + verdict["torch_fwdbwd_ms"]
    shape = tuple(verdict["shape"])
    choice = "the native op" if verdict["native"] else "the torch path"
    return (f"auto runs {choice}: forward + forward-and-backward at {shape}, one thread, took the native op "
            f"({verdict['lanes']}-float vectors) {native:.1f} ms and the torch path {other:.1f} ms on this CPU "
            f"({native and other / native:.2f}x)")


def _load(path: str) -> dict | None:
    """The kept verdict, or None (with a warning naming the file) when it is missing, unreadable or stale."""
    try:
        with open(path) as handle:
            verdict = json.load(handle)
        if verdict.get("format") == FORMAT and verdict.get("version") == VERSION \
                and verdict.get("library") == library.path().name:
            return verdict
        why = "of another format, version or build"
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as error:
        why = f"unreadable ({error})"
    print(f"lmsleep: {path} is {why}; measuring the native op again", file=sys.stderr)
    return None


def _save(path: str, verdict: dict) -> None:
    handle, partial = tempfile.mkstemp(suffix=".json", dir=os.path.dirname(path))
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(verdict, out)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def verdict() -> dict | None:
    """The measured verdict for the loaded library (measuring it the first time), or None when there is no
    library or LMSLEEP_NATIVE=1 asks for it without measuring."""
    if library.library() is None or os.environ.get("LMSLEEP_NATIVE") == "1":
        return None
    path = str(library.path()) + ".choice.json"
    with _lock:
        if path not in _verdict:
            found = _load(path)
            if found is None:
                found = measure()
                _save(path, found)
                print(f"lmsleep: measured once on this machine (kept in {path}): {_describe(found)}", file=sys.stderr)
            _verdict[path] = found
        return _verdict[path]


@torch.compiler.assume_constant_result  # traced code keeps the answer
def prefers_native() -> bool:
    """Whether `auto` runs the native op where it can: the library loads, and it measured no slower than the
    torch path on this machine (or LMSLEEP_NATIVE=1)."""
    if library.library() is None:
        return False
    found = verdict()
    return True if found is None else bool(found["native"])


def reason() -> str:
    """What `auto` chooses for float32 CPU tensors on this machine, and why, in one sentence."""
    if library.library() is None:
        return f"auto runs the torch path: the native library is unavailable ({library.error()})"
    found = verdict()
    if found is None:
        return "auto runs the native op: LMSLEEP_NATIVE=1 asks for it without measuring"
    return _describe(found)
