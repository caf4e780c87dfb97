"""The native forward (`lmsleep/ops/native.py` + `csrc/gated_delta_rule_forward.c`) against the float64
recurrent reference, its dispatch from the public op, and its fallbacks (no compiler, a failed build)."""
import shutil

import pytest
import torch

from lmsleep.ops import fast_chunk_gated_delta_rule, gated_delta_rule, native, recurrent_gated_delta_rule
from test_op import random_inputs

HAS_COMPILER = native._compiler() is not None
needs_native = pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine: the torch path runs instead")


@needs_native
def test_native_library_builds_where_a_compiler_is_found():
    assert native.library() is not None, native.error()


def _reference(inputs, scale):
    return recurrent_gated_delta_rule(*(None if x is None else x.double() for x in inputs[:5]), scale,
                                      None if inputs[5] is None else inputs[5].double())


def _native(inputs, scale, chunk_size, threads=None):
    with torch.no_grad():
        return fast_chunk_gated_delta_rule(*inputs[:5], scale, inputs[5], chunk_size, threads=threads, native=True)


def _assert_matches(got, expected, tol=2e-5):
    for a, b in zip(got, expected):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol)


CASES = [  # (time, chunk_size, key_dim, value_dim)
    (1, 16, 8, 5), (7, 16, 8, 5), (13, 4, 5, 7), (37, 8, 16, 16), (64, 16, 17, 33), (65, 16, 32, 32),
    (100, 32, 8, 5), (129, 64, 64, 64), (50, 48, 3, 130),
]


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("time,chunk_size,key_dim,value_dim", CASES,
                         ids=[f"T{t}-C{c}-K{k}-V{v}" for t, c, k, v in CASES])
def test_native_forward_matches_reference(time, chunk_size, key_dim, value_dim, with_state, threads):
    inputs = random_inputs(2, time, 3, key_dim, value_dim, torch.float32, with_state)
    _assert_matches(_native(inputs, key_dim**-0.5, chunk_size, threads), _reference(inputs, key_dim**-0.5))


@needs_native
@pytest.mark.parametrize("decay", ["strong", "growing"])
def test_native_forward_with_strong_or_growing_decays(decay):
    """Log-decays spanning more than 80 within a chunk take the per-pair exponential; g > 0 is computed too."""
    inputs = random_inputs(1, 45, 2, 8, 8, torch.float32, True, strong_decay=decay == "strong")
    if decay == "growing":
        inputs[3] = inputs[3].abs() * 0.05
    got = _native(inputs, 0.3, 32)
    assert all(torch.isfinite(x).all() for x in got)
    _assert_matches(got, _reference(inputs, 0.3), tol=1e-4 if decay == "growing" else 2e-5)


@needs_native
def test_native_forward_takes_strided_inputs():
    """Views as a layer makes them (heads moved, slices of a wider projection), and a last dimension that
    is not contiguous (copied first)."""
    batch, time, heads, dim = 2, 21, 3, 8
    unit = [torch.nn.functional.normalize(torch.randn(batch, time, heads, dim), dim=-1) for _ in range(2)]
    wide = torch.cat([*unit, torch.randn(batch, time, heads, dim)], dim=-1)  # one projection, then split
    q, k = wide[..., :dim], wide[..., dim:2 * dim]
    v = torch.randn(batch, heads, time, 2 * dim).transpose(1, 2)[..., ::2]
    gates = torch.stack([-torch.rand(batch, time, heads), torch.rand(batch, time, heads)], dim=-1)
    g, beta = gates[..., 0], gates[..., 1]
    state = torch.randn(batch, heads, dim, dim).transpose(-1, -2)
    inputs = [q, k, v, g, beta, state]
    assert not any(x.is_contiguous() for x in inputs)
    _assert_matches(_native(inputs, dim**-0.5, 8, threads=2), _reference(inputs, dim**-0.5))


@needs_native
@pytest.mark.parametrize("threads", [1, 2])
def test_native_forward_writes_every_element(threads):
    inputs = random_inputs(3, 19, 2, 6, 5, torch.float32, False)
    old_mode = torch.are_deterministic_algorithms_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True  # fresh tensors start as NaN
    try:
        out, state = _native(inputs, 0.5, 8, threads)
    finally:
        torch.use_deterministic_algorithms(old_mode)
        torch.utils.deterministic.fill_uninitialized_memory = old_fill
    assert torch.isfinite(out).all() and torch.isfinite(state).all()


@needs_native
def test_public_op_runs_native_only_when_no_gradient_is_needed(monkeypatch):
    calls = []
    real = native.forward_range
    monkeypatch.setattr(native, "forward_range", lambda *a: calls.append(1) or real(*a))
    inputs = random_inputs(2, 30, 2, 8, 8, torch.float32, True)
    with torch.no_grad():
        fast, _ = gated_delta_rule(*inputs[:5], initial_state=inputs[5])
    assert calls, "a float32 forward under no_grad should run natively"
    calls.clear()
    leaves = [x.requires_grad_() for x in inputs]
    slow, _ = gated_delta_rule(*leaves[:5], initial_state=leaves[5])
    assert not calls and slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-5, atol=1e-5)
    calls.clear()
    with torch.no_grad():
        gated_delta_rule(*(x.double() for x in inputs[:5]))
    assert not calls, "float64 is computed by the torch path"


def test_native_true_refuses_what_it_cannot_do():
    inputs = random_inputs(1, 9, 1, 4, 4, torch.float32, False)
    leaves = [x if x is None else x.requires_grad_() for x in inputs]
    with pytest.raises(ValueError, match="no backward"):
        fast_chunk_gated_delta_rule(*leaves[:5], 0.5, None, 4, native=True)
    with torch.no_grad(), pytest.raises(RuntimeError, match="native=True"):
        fast_chunk_gated_delta_rule(*(x.double() for x in inputs[:5]), 0.5, None, 4, native=True)


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """An empty native state and cache folder, so the next call builds (or fails) anew."""
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("LMSLEEP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@needs_native
def test_build_is_cached_under_a_key_of_source_and_machine(fresh_native):
    assert native.library() is not None, native.error()
    built = list((fresh_native / "cache").glob("gated_delta_rule_forward-*.so"))
    assert len(built) == 1 and not list((fresh_native / "cache").glob("*.tmp*"))
    stamp = built[0].stat().st_mtime_ns
    native._state.clear()
    assert native.library() is not None and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


def test_failed_build_falls_back_to_the_torch_path(fresh_native, monkeypatch):
    broken = fresh_native / "broken.c"
    broken.write_text("int lmsleep_gdr_forward( {\n")
    monkeypatch.setattr(native, "SOURCE", broken)
    if not HAS_COMPILER:
        pytest.skip("no C compiler to fail")
    with pytest.warns(RuntimeWarning, match="native gated delta rule unavailable"):
        assert native.library() is None
    assert "failed" in native.error()
    inputs = random_inputs(1, 20, 2, 4, 4, torch.float32, True)
    with torch.no_grad():
        got = fast_chunk_gated_delta_rule(*inputs[:5], 0.5, inputs[5], 8)
    _assert_matches(got, _reference(inputs, 0.5))


def test_no_compiler_or_disabled_falls_back_quietly_or_with_a_warning(fresh_native, monkeypatch):
    monkeypatch.setenv("LMSLEEP_NATIVE", "0")
    assert native.library() is None and "LMSLEEP_NATIVE=0" in native.error()
    native._state.clear()
    monkeypatch.setenv("LMSLEEP_NATIVE", "1")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert native.library() is None
    assert not native.usable(torch.zeros(1))

