"""The native forward of the gated delta rule (`csrc/gated_delta_rule_forward.c`): built on first use, then loaded.

The C file is compiled with the machine's C compiler (`$CC`, else `cc` or `gcc` on PATH) for the machine's
own CPU (-march=native) into a cache folder (`$LMSLEEP_CACHE_DIR`, else `$XDG_CACHE_HOME/lmsleep` or
`~/.cache/lmsleep`), under a name that depends on the source, the flags, the compiler and the CPU, so a
changed file or another machine sharing the folder gets a build of its own. No compiler, a failed build,
or `LMSLEEP_NATIVE=0` in the environment: `library()` returns None (with one warning saying why, except
for LMSLEEP_NATIVE=0) and lmsleep runs its torch path instead, which computes the same thing.
The library is called through ctypes, which releases the GIL, so threads can run parts of the batch at once.
"""
from __future__ import annotations

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

SOURCE = Path(__file__).parent / "csrc" / "gated_delta_rule_forward.c"
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-std=gnu11"]

_lock = threading.Lock()
_state: dict = {}  # "library": the loaded CDLL or None, "error": why there is none


def cache_dir() -> Path:
    if os.environ.get("LMSLEEP_CACHE_DIR"):
        return Path(os.environ["LMSLEEP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lmsleep"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
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


def _build(compiler: str) -> Path:
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), version.encode(),
                                     _cpu_signature().encode()])).hexdigest()[:16]
    target = cache_dir() / f"gated_delta_rule_forward-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed, so that processes building at once never load half a file.
    handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        result = subprocess.run([compiler, *FLAGS, "-o", partial, str(SOURCE), "-lm"], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed ({result.returncode}):\n{result.stderr.strip()}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target


def library():
    """The loaded native library, or None when it cannot be had (see `error()` for why)."""
    with _lock:
        if "library" not in _state:
            _state["library"], _state["error"] = None, None
            try:
                if os.environ.get("LMSLEEP_NATIVE", "1") == "0":
                    raise RuntimeError("disabled by LMSLEEP_NATIVE=0")
                compiler = _compiler()
                if compiler is None:
                    raise RuntimeError("no C compiler found ($CC, cc or gcc)")
                lib = ctypes.CDLL(str(_build(compiler)))
                function = lib.lmsleep_gdr_forward
                function.argtypes = ([ctypes.c_void_p] * 5 + [ctypes.POINTER(ctypes.c_long)] + [ctypes.c_void_p] * 3
                                     + [ctypes.c_int] * 5 + [ctypes.c_float] + [ctypes.c_int] * 2)
                function.restype = ctypes.c_int
                _state["library"] = lib
            except Exception as error:  # any failure leaves the torch path in charge
                _state["error"] = f"{type(error).__name__}: {error}"
                if os.environ.get("LMSLEEP_NATIVE", "1") != "0":
                    warnings.warn(f"lmsleep: native gated delta rule unavailable, using the torch path ({error})",
                                  RuntimeWarning, stacklevel=2)
        return _state["library"]


def error() -> str | None:
    """Why `library()` is None (None when it loaded or was never asked for)."""
    return _state.get("error")


def usable(*tensors) -> bool:
    """Whether the native forward takes these tensors: float32, on the CPU, and the library loaded."""
    return all(x is None or (x.dtype == torch.float32 and x.device.type == "cpu") for x in tensors) \
        and library() is not None


def forward_range(q, k, v, g, beta, initial_state, final_state, out, scale: float, length: int, first: int,
                  last: int) -> None:
    """Run the native forward for (batch row, head) pairs first … last − 1 (row-major over [batch, heads]),
    writing `out` [batch, time, heads, V] and `final_state` [batch, heads, K, V] (both contiguous float32).
    q, k, v must have a contiguous last dimension; initial_state is contiguous or None; `length` is the
    chunk length."""
    _, time, heads, key_dim = q.shape
    strides = (ctypes.c_long * 15)(*(stride for x in (q, k, v, g, beta) for stride in x.stride()[:3]))
    status = library().lmsleep_gdr_forward(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), g.data_ptr(), beta.data_ptr(), strides,
        None if initial_state is None else initial_state.data_ptr(), final_state.data_ptr(), out.data_ptr(),
        heads, time, key_dim, v.shape[-1], length, scale, first, last)
    if status != 0:
        raise MemoryError("lmsleep native gated delta rule: could not allocate its working memory")
