"""The native library of the gated delta rule (`csrc/gated_delta_rule.c`, forward and backward): built on first
use, then loaded and called through ctypes. `native.py` wraps it as a torch autograd Function.

The C file is compiled with the machine's C compiler (`$CC`, else `gcc` or `cc` on PATH; it uses GCC's
vector extensions, so GCC or a compiler that accepts them) for the machine's own CPU (-march=native, or
$LMSLEEP_NATIVE_TARGET; the source picks its vector width from that target: 16, 8 or 4 floats) into
a cache folder (`$LMSLEEP_CACHE_DIR`, else `$XDG_CACHE_HOME/lmsleep` or
`~/.cache/lmsleep`), under a name that depends on the source, the flags, the compiler and the CPU, so a
changed file or another machine sharing the folder gets a build of its own. No compiler, a failed build,
or `LMSLEEP_NATIVE=0` in the environment: `library()` returns None (with one warning saying why, except
for LMSLEEP_NATIVE=0) and the dispatcher runs the torch path instead, which computes the same thing.
The library is called through ctypes, which releases the GIL, so threads can run parts of the batch at once.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "gated_delta_rule.c"
FLAGS = ["-O3", "-shared", "-fPIC", "-std=gnu11"]
TARGET_FLAGS = "-march=native"  # $LMSLEEP_NATIVE_TARGET replaces it, e.g. "-march=x86-64-v3" for an AVX2-only build


def target_flags() -> list[str]:
    """The flags choosing the CPU the library is built for: $LMSLEEP_NATIVE_TARGET, else -march=native."""
    return (os.environ.get("LMSLEEP_NATIVE_TARGET") or TARGET_FLAGS).split()


_lock = threading.Lock()
_state: dict = {}  # "library": the loaded CDLL or None, "error": why there is none


def cache_dir() -> Path:
    if os.environ.get("LMSLEEP_CACHE_DIR"):
        return Path(os.environ["LMSLEEP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lmsleep"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "gcc", "cc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's feature flags (Linux), else the platform's description."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.platform() + platform.processor()


def _build(compiler: str, flags: list[str]) -> Path:
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(),
                                     _cpu_signature().encode()])).hexdigest()[:16]
    target = cache_dir() / f"gated_delta_rule-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed, so that processes building at once never load half a file.
    handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        result = subprocess.run([compiler, *flags, "-o", partial, str(SOURCE), "-lm"], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed ({result.returncode}):\n{result.stderr.strip()}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


def build(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Build (once: cached on disk) and load the library for `target_flags()` plus `extra_flags` (e.g.
    ("-DLMSLEEP_LANES=4",) for another vector width); raises RuntimeError saying why it cannot."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found ($CC, gcc or cc)")
    path = _build(compiler, FLAGS + target_flags() + list(extra_flags))
    lib = ctypes.CDLL(str(path))
    pointer, ints = ctypes.c_void_p, ctypes.c_int
    lib.lmsleep_gdr_forward.argtypes = ([pointer] * 5 + [ctypes.POINTER(ctypes.c_long)] + [pointer] * 3
                                        + [ints] * 5 + [ctypes.c_float] + [ints] * 2 + [pointer] * 2)
    lib.lmsleep_gdr_backward.argtypes = ([pointer] * 5 + [ctypes.POINTER(ctypes.c_long)] + [pointer] * 10
                                         + [ints] * 5 + [ctypes.c_float] + [ints] * 2)
    lib.lmsleep_gdr_forward.restype = lib.lmsleep_gdr_backward.restype = ctypes.c_int
    lib.lmsleep_gdr_saved_sizes.argtypes = [ints] * 4 + [ctypes.POINTER(ctypes.c_long)]
    lib.lmsleep_gdr_saved_sizes.restype = None
    lib.lmsleep_gdr_lanes.restype = ctypes.c_int
    lib.path = path
    return lib


def library():
    """The loaded native library, or None when it cannot be had (see `error()` for why). Inside
    `built_with(...)`, the library built with those flags instead."""
    if _override:
        return _override[-1]
    with _lock:
        if "library" not in _state:
            _state["library"], _state["error"] = None, None
            try:
                if os.environ.get("LMSLEEP_NATIVE", "1") == "0":
                    raise RuntimeError("disabled by LMSLEEP_NATIVE=0")
                _state["library"] = build()
            except Exception as error:  # any failure leaves the torch path in charge
                _state["error"] = f"{type(error).__name__}: {error}"
                if os.environ.get("LMSLEEP_NATIVE", "1") != "0":
                    warnings.warn(f"lmsleep: native gated delta rule unavailable, using the torch path ({error})",
                                  RuntimeWarning, stacklevel=2)
        return _state["library"]


_override: list = []  # libraries `built_with` put in charge, innermost last


@contextlib.contextmanager
def built_with(*extra_flags: str):
    """Within the block, the native op runs the library built with these extra flags (for tests and
    benchmarks comparing vector widths, e.g. built_with("-DLMSLEEP_LANES=8")). Not thread-safe."""
    _override.append(build(extra_flags))
    try:
        yield _override[-1]
    finally:
        _override.pop()


def lanes() -> int:
    """The vector width, in floats, the library was built for (16 with AVX-512, 8 with AVX2, 4 with NEON)."""
    return library().lmsleep_gdr_lanes()


def path() -> Path:
    """The file the library was loaded from (the measurement of `choice.py` is kept beside it)."""
    return library().path


@torch.compiler.assume_constant_result  # torch.compile calls it while tracing (it takes a lock) and keeps the answer
def available() -> bool:
    """Whether `library()` loads (building it on first use)."""
    return library() is not None


def error() -> str | None:
    """Why `library()` is None (None when it loaded or was never asked for)."""
    return _state.get("error")


def _pointer(x: torch.Tensor | None):
    return None if x is None else x.data_ptr()


def _strides(*tensors) -> ctypes.Array:
    return (ctypes.c_long * 15)(*(stride for x in tensors for stride in x.stride()[:3]))


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("lmsleep native gated delta rule: could not allocate its working memory")


def saved_sizes(time: int, key_dim: int, value_dim: int, length: int) -> tuple[int, int]:
    """How many float32 values the forward keeps per (batch row, head) for the backward: (states, U)."""
    sizes = (ctypes.c_long * 2)()
    library().lmsleep_gdr_saved_sizes(time, key_dim, value_dim, length, sizes)
    return sizes[0], sizes[1]


def saved_buffers(pairs: int, time: int, key_dim: int, value_dim: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty float32 buffers [pairs, n] for what the forward keeps (states, U), each row 64-byte aligned as
    the library's vector loads need (torch's CPU allocator aligns to 64 bytes; this does not rely on it).
    Every size is a whole number of 16 floats (the library's padding, whatever its vector width)."""
    buffers = []
    for size in saved_sizes(time, key_dim, value_dim, length):
        memory = torch.empty(pairs * size + 16, dtype=torch.float32)
        skip = (-(memory.data_ptr() // 4)) % 16  # size is a whole number of 16-float vectors
        buffers.append(memory[skip : skip + pairs * size].view(pairs, size))
    return buffers[0], buffers[1]


def forward_range(inputs, initial_state, final_state, out, scale: float, length: int, pairs: slice,
                  saved_states=None, saved_u=None) -> None:
    """The forward for (batch row, head) pairs `pairs` (row-major over [batch, heads]).

    inputs: float32 (q, k [batch, time, heads, K], v [batch, time, heads, V], g, beta [batch, time, heads]),
    q, k, v with a contiguous last dimension. Writes `out` [batch, time, heads, V] and `final_state`
    [batch, heads, K, V] (contiguous); initial_state is contiguous or None (zeros). `length` is the chunk
    length. saved_states and saved_u (from `saved_buffers`, or None) receive what `backward_range` needs."""
    q, _, v, _, _ = inputs
    _, time, heads, key_dim = q.shape
    _check(library().lmsleep_gdr_forward(
        *(x.data_ptr() for x in inputs), _strides(*inputs), _pointer(initial_state), final_state.data_ptr(),
        out.data_ptr(), heads, time, key_dim, v.shape[-1], length, scale, pairs.start, pairs.stop,
        _pointer(saved_states), _pointer(saved_u)))


def backward_range(inputs, saved_states, saved_u, grad_out, grad_final, grads, grad_initial, scale: float,
                   length: int, pairs: slice) -> None:
    """The backward for (batch row, head) pairs `pairs`: from grad_out (contiguous like out) and grad_final
    (contiguous like the final state, or None for zeros), writes `grads` (dq, dk, dv, dg, dbeta, contiguous
    like the inputs) and grad_initial (contiguous [batch, heads, K, V])."""
    q, _, v, _, _ = inputs
    _, time, heads, key_dim = q.shape
    _check(library().lmsleep_gdr_backward(
        *(x.data_ptr() for x in inputs), _strides(*inputs), saved_states.data_ptr(), saved_u.data_ptr(),
        grad_out.data_ptr(), _pointer(grad_final), *(x.data_ptr() for x in grads), grad_initial.data_ptr(),
        heads, time, key_dim, v.shape[-1], length, scale, pairs.start, pairs.stop))
