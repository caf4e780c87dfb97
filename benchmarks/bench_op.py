"""The fast-weight op on CPU: lmsleep's `gated_delta_rule` against its peers, float32, forward and
forward+backward, at shapes (batch, time, heads, K = V).

Peers, each called with its own defaults (chunk size 64, scale K^-1/2, q and k used as given):
- transformers' `torch_chunk_gated_delta_rule` (qwen3_next), its plain-torch path;
- flash-linear-attention's `naive_chunk_gated_delta_rule` (fla/ops/gated_delta_rule/naive.py). fla is not a
  dependency: that one file is taken from the fla-core wheel (`pip download --no-deps`) into a cache
  outside the repository ($LMSLEEP_BENCH_CACHE, default ~/.cache/lmsleep-bench) and imported by path,
  with einops (which it imports) fetched the same way if missing. Without network it is reported missing.
- lmsleep's own rows: `lmsleep` is the public op as users get it (the native library where it builds,
  which the notes line says), `lmsleep-torch` its torch-ops fast path (`backend="torch"`), and
  `lmsleep-chunk` the plain chunked path (autograd through torch ops), for reference.

Each row gives the median time over --repeats calls after one warm-up (the implementations take turns,
so that drifting load on a shared machine hits all alike), the effective GFLOP/s for one
FLOP count shared by every implementation (`op_flops`), and the error of the float32 result against a
float64 reference, ||x − ref|| / ||ref||: the recurrent reference for the output and final state, the plain
chunked path in float64 for the worst of the six gradients. The matmul row is the machine's ceiling.

Targets (issue 19): lmsleep forward ≥ 3× and forward + backward ≥ 4× the faster peer, at both default
shapes, one thread and two, on AVX-512 and AVX2 CPUs; each shape prints whether they are met. The native
library is built for this CPU (-march=native); LMSLEEP_NATIVE_TARGET="-march=x86-64-v3" builds it for an
AVX2 target instead (the stand-in for an AVX2-only CPU on an AVX-512 machine).

    python benchmarks/bench_op.py [--threads 2] [--repeats 5] [--shapes 16,384,4,64 4,2048,8,128]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from common import final_json, median_seconds, print_table  # noqa: E402

from lmsleep.ops import (  # noqa: E402
    chunk_gated_delta_rule,
    fast_chunk_gated_delta_rule,
    gated_delta_rule,
    recurrent_gated_delta_rule,
)
from lmsleep.ops.delta_rule import choice, library  # noqa: E402

FLA_VERSION = "0.6.0"
FLA_MEMBER = "fla/ops/gated_delta_rule/naive.py"
CACHE = Path(os.environ.get("LMSLEEP_BENCH_CACHE", Path.home() / ".cache" / "lmsleep-bench"))
FLOP_CHUNK = 64  # the FLOP count is that of the chunked algorithm at this chunk size, for every row
TARGETS = {"fwd_x": 3.0, "fwdbwd_x": 4.0}  # issue 19: lmsleep's speed-up over the faster peer, at least


def op_flops(batch: int, time: int, heads: int, key_dim: int, value_dim: int) -> float:
    """Matmul FLOPs of the chunked forward (C = 64): per chunk and head, K Kᵀ and q Kᵀ (2C²K each), the
    triangular solve for both right-hand sides (C²(K + V)), w S, q S and the state update (2CKV each),
    and P U (2C²V). Forward+backward counts 3× this (the backward makes about twice the forward's)."""
    chunk = FLOP_CHUNK
    chunks = -(-time // chunk)
    per_chunk = 4 * chunk**2 * key_dim + chunk**2 * (key_dim + value_dim) + 6 * chunk * key_dim * value_dim
    per_chunk += 2 * chunk**2 * value_dim
    return float(batch * heads * chunks * per_chunk)


def _pip_download(requirement: str, into: str) -> bool:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", into, requirement]
    try:
        return subprocess.run(command, capture_output=True, timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def load_fla_naive():
    """fla's `naive_chunk_gated_delta_rule`, or (None, why) when the file cannot be had."""
    source = CACHE / f"fla-{FLA_VERSION}" / "naive.py"
    if not source.exists():
        for distribution in ("fla-core", "flash-linear-attention"):  # ops live in fla-core since 0.3
            with tempfile.TemporaryDirectory() as tmp:
                if not _pip_download(f"{distribution}=={FLA_VERSION}", tmp):
                    continue
                for wheel in Path(tmp).glob("*.whl"):
                    with zipfile.ZipFile(wheel) as archive:
                        if FLA_MEMBER in archive.namelist():
                            source.parent.mkdir(parents=True, exist_ok=True)
                            source.write_bytes(archive.read(FLA_MEMBER))
            if source.exists():
                break
    if not source.exists():
        return None, f"could not download {FLA_MEMBER} from fla-core/flash-linear-attention {FLA_VERSION}"
    if importlib.util.find_spec("einops") is None:
        wheels = sorted((CACHE / "einops").glob("einops-*.whl"))
        if not wheels:
            (CACHE / "einops").mkdir(parents=True, exist_ok=True)
            _pip_download("einops", str(CACHE / "einops"))
            wheels = sorted((CACHE / "einops").glob("einops-*.whl"))
        if not wheels:
            return None, "fla's naive.py needs einops, which is neither installed nor downloadable"
        sys.path.append(str(wheels[-1]))  # a pure-python wheel imports as a zip
    spec = importlib.util.spec_from_file_location("fla_gated_delta_rule_naive", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.naive_chunk_gated_delta_rule, f"fla {FLA_VERSION} {FLA_MEMBER} (cached at {source})"


def implementations() -> tuple[dict, dict]:
    """name → fn(q, k, v, g, beta, initial_state) -> (out, final_state), and name → note."""
    impls = {
        "lmsleep": lambda q, k, v, g, b, s: gated_delta_rule(q, k, v, g, b, initial_state=s, output_final_state=True),
        "lmsleep-torch": lambda q, k, v, g, b, s: fast_chunk_gated_delta_rule(
            q, k, v, g, b, q.shape[-1] ** -0.5, s),
        "lmsleep-chunk": lambda q, k, v, g, b, s: chunk_gated_delta_rule(q, k, v, g, b, q.shape[-1] ** -0.5, s),
    }
    if library.library() is not None:
        route = (f"native library built with {' '.join(library.target_flags())}, {library.lanes()}-float vectors; "
                 f"{choice.reason()}")
    else:
        route = f"torch path; native unavailable: {library.error()}"
    notes = {"lmsleep": f"lmsleep.ops.gated_delta_rule (default: {route})",
             "lmsleep-torch": "lmsleep fast path in torch ops (backend=\"torch\")",
             "lmsleep-chunk": "lmsleep plain chunked path"}
    try:
        from transformers.models.qwen3_next import modeling_qwen3_next

        # The hub/fla dispatch wrapper is bypassed: its torch fallback is the function it wraps.
        torch_path = getattr(modeling_qwen3_next.torch_chunk_gated_delta_rule, "__wrapped__",
                             modeling_qwen3_next.torch_chunk_gated_delta_rule)
        impls["transformers"] = lambda q, k, v, g, b, s: torch_path(
            q, k, v, g, b, initial_state=s, output_final_state=True)
        import transformers

        notes["transformers"] = f"transformers {transformers.__version__} torch_chunk_gated_delta_rule"
    except ImportError as error:
        notes["transformers"] = f"MISSING: {error}"
    fla_naive, note = load_fla_naive()
    if fla_naive is not None:
        impls["fla-naive"] = lambda q, k, v, g, b, s: fla_naive(q, k, v, g, b, initial_state=s, output_final_state=True)
        notes["fla-naive"] = note
    else:
        notes["fla-naive"] = f"MISSING: {note}"
    return impls, notes


def make_inputs(batch, time, heads, dim, seed=0):
    """float64 inputs as a Gated DeltaNet layer makes them: unit q, k; decays in (0, 1); β in (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    q = F.normalize(randn(batch, time, heads, dim), dim=-1)
    k = F.normalize(randn(batch, time, heads, dim), dim=-1)
    v = randn(batch, time, heads, dim)
    g = F.logsigmoid(randn(batch, time, heads) + 3.0)  # α = sigmoid(x + 3): mostly 0.9 … 1
    beta = torch.sigmoid(randn(batch, time, heads))
    state = randn(batch, heads, dim, dim) * 0.1
    grad_out, grad_state = randn(batch, time, heads, dim), randn(batch, heads, dim, dim)
    return [q, k, v, g, beta, state], (grad_out, grad_state)


def forward_backward(fn, inputs, cotangents):
    leaves = [x.detach().requires_grad_() for x in inputs]
    out, state = fn(*leaves)
    loss = (out * cotangents[0]).sum() + (state * cotangents[1]).sum()
    return out, state, torch.autograd.grad(loss, leaves)


def rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm()).item()


def measure(impls, inputs64, cotangents64, reference, repeats, max_seconds, shape_flops) -> list[dict]:
    """Time every implementation, interleaved (one call of each in turn, per repeat) so that a machine
    whose load drifts during the run slows every row alike; report medians."""
    inputs = [x.float() for x in inputs64]
    cotangents = [x.float() for x in cotangents64]
    ref_out, ref_state, ref_grads = reference
    calls, rows = {}, {}
    for name, fn in impls.items():
        with torch.no_grad():
            (out, state), forward_once = _timed(lambda: fn(*inputs))  # the warm-up, and the result checked
        (_, _, grads), backward_once = _timed(lambda: forward_backward(fn, inputs, cotangents))
        rows[name] = {"impl": name, "err_out": rel_error(out, ref_out), "err_state": rel_error(state, ref_state),
                      "err_grad": max(rel_error(a, b) for a, b in zip(grads, ref_grads))}
        calls[name] = {
            "fwd": (lambda fn=fn: fn(*inputs), _cap(repeats, forward_once, max_seconds), []),
            "fwdbwd": (lambda fn=fn: forward_backward(fn, inputs, cotangents),
                       _cap(repeats, backward_once, max_seconds), []),
        }
    for kind in ("fwd", "fwdbwd"):
        for repeat in range(repeats):
            for name in impls:
                call, count, times = calls[name][kind]
                if repeat < count:
                    with torch.no_grad() if kind == "fwd" else contextlib.nullcontext():
                        times.append(_timed(call)[1])
    for name, row in rows.items():
        forward_s, backward_s = (statistics.median(calls[name][kind][2]) for kind in ("fwd", "fwdbwd"))
        row.update(fwd_ms=1e3 * forward_s, fwd_gflops=shape_flops / forward_s / 1e9,
                   fwdbwd_ms=1e3 * backward_s, fwdbwd_gflops=3 * shape_flops / backward_s / 1e9)
    return list(rows.values())


def _timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def _cap(repeats: int, once_s: float, max_seconds: float) -> int:
    """Fewer repeats for a slow call, so that one measurement stays near max_seconds (at least 1)."""
    return max(1, min(repeats, int(max_seconds / max(once_s, 1e-9))))


def matmul_ceiling(repeats: int) -> dict:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    seconds = median_seconds(lambda: a @ b, max(repeats, 10), warmup=3)
    return {"impl": "matmul 1024³ (ceiling)", "fwd_ms": 1e3 * seconds, "fwd_gflops": 2 * 1024**3 / seconds / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="cap on one measurement's repeats")
    parser.add_argument("--shapes", nargs="+", default=["16,384,4,64", "4,2048,8,128"],
                        help="batch,time,heads,dim (K = V = dim)")
    parser.add_argument("--impls", nargs="+", default=None, help="subset of implementations to run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    impls, notes = implementations()
    if args.impls:
        impls = {name: fn for name, fn in impls.items() if name in args.impls}
    for name, note in notes.items():
        print(f"{name:14s} {note}")

    ceiling = matmul_ceiling(args.repeats)
    results = []
    for spec in args.shapes:
        batch, time_, heads, dim = (int(x) for x in spec.split(","))
        inputs64, cotangents64 = make_inputs(batch, time_, heads, dim)
        flops = op_flops(batch, time_, heads, dim, dim)
        started = time.perf_counter()
        with torch.no_grad():
            ref_out, ref_state = recurrent_gated_delta_rule(*inputs64[:5], dim**-0.5, inputs64[5])
        # Gradients of the reference through autograd would keep every token's state (tens of GB here), so
        # the float64 gradient reference is the plain chunked path, which tests/test_op.py holds to the
        # recurrent one within 1e-9.
        _, _, ref_grads = forward_backward(
            lambda q, k, v, g, b, s: chunk_gated_delta_rule(q, k, v, g, b, dim**-0.5, s), inputs64, cotangents64
        )
        reference = (ref_out, ref_state, ref_grads)
        print(f"\nshape (batch, time, heads, K=V) = {spec}: {flops / 1e9:.3g} GFLOP forward; "
              f"float64 references in {time.perf_counter() - started:.1f} s")
        rows = measure(impls, inputs64, cotangents64, reference, args.repeats, args.max_seconds, flops)
        peers = [r for r in rows if r["impl"] in ("transformers", "fla-naive")]
        ours = next((r for r in rows if r["impl"] == "lmsleep"), None)
        for row in rows:
            row["agrees"] = row["err_out"] < 1e-4 and row["err_state"] < 1e-4
        if peers and ours:
            best_fwd = min(r["fwd_ms"] for r in peers)
            best_fb = min(r["fwdbwd_ms"] for r in peers)
            for row in rows:
                row["fwd_x"] = best_fwd / row["fwd_ms"]
                row["fwdbwd_x"] = best_fb / row["fwdbwd_ms"]
        print_table(rows + [ceiling], ["impl", "fwd_ms", "fwd_gflops", "fwdbwd_ms", "fwdbwd_gflops", "fwd_x",
                                       "fwdbwd_x", "err_out", "err_state", "err_grad", "agrees"])
        met = {key: ours[key] >= bound for key, bound in TARGETS.items()} if peers and ours and "fwd_x" in ours else {}
        if met:
            print("targets (lmsleep over the faster peer): " + ", ".join(
                f"{key} {ours[key]:.2f} >= {TARGETS[key]:g}: {'met' if ok else 'NOT MET'}" for key, ok in met.items()))
        results.append({"shape": spec, "flops_fwd": flops, "rows": rows, "targets_met": met})
    print("\nfwd_x, fwdbwd_x: speed-up over the faster peer (transformers, fla-naive); err_*: ||x − ref|| / ||ref||")
    final_json("bench_op", {"notes": notes, "ceiling": ceiling, "results": results, "targets": TARGETS,
                            "all_targets_met": all(all(r["targets_met"].values()) and r["targets_met"]
                                                   for r in results),
                            "repeats": args.repeats})


if __name__ == "__main__":
    main()
