"""The native op (`lmsleep/ops/delta_rule/native.py`, `library.py` + `csrc/gated_delta_rule.c`), forward and
gradients, against the float64 recurrent reference; its dispatch from the public op; its fallbacks (no compiler,
a failed build)."""
import shutil

import pytest
import torch

from lmsleep.ops import auto_backend, gated_delta_rule, native_chunk_gated_delta_rule, recurrent_gated_delta_rule
from lmsleep.ops.delta_rule import chunk_fast, library, native
from test_op import _forward_and_grads, random_inputs

HAS_COMPILER = library._compiler() is not None
needs_native = pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler on this machine: the torch path runs instead")


@needs_native
def test_native_library_builds_where_a_compiler_is_found():
    assert library.library() is not None, library.error()


def _reference(inputs, scale):
    return recurrent_gated_delta_rule(*(None if x is None else x.double() for x in inputs[:5]), scale,
                                      None if inputs[5] is None else inputs[5].double())


def _native(inputs, scale, chunk_size, threads=None):
    with torch.no_grad():
        return native_chunk_gated_delta_rule(*inputs[:5], scale, inputs[5], chunk_size, threads=threads)


def _assert_matches(got, expected, tol=2e-5):
    for a, b in zip(got, expected):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol)


CASES = [  # (time, chunk_size, key_dim, value_dim)
    (1, 16, 8, 5), (7, 16, 8, 5), (13, 4, 5, 7), (37, 8, 16, 16), (64, 16, 17, 33), (65, 16, 32, 32),
    (100, 32, 8, 5), (129, 64, 64, 64), (50, 48, 3, 130),
]


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
def test_native_takes_strided_inputs():
    """Views as a layer makes them (heads moved, slices of a wider projection), and a last dimension that
    is not contiguous (copied first): forward, and gradients flowing back into the tensors viewed."""
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
    leaves = [x.detach().clone().requires_grad_() for x in (wide, gates, state)]
    views = [leaves[0][..., :dim], leaves[0][..., dim:2 * dim], v.detach().requires_grad_(),
             leaves[1][..., 0], leaves[1][..., 1], leaves[2]]
    out, final = native_chunk_gated_delta_rule(*views[:5], dim**-0.5, views[5], 8, threads=2)
    grads = torch.autograd.grad(out.square().sum() + final.sum(), leaves + [views[2]])
    leaves64 = [x.detach().double().requires_grad_() for x in (wide, gates, state, v)]
    views64 = [leaves64[0][..., :dim], leaves64[0][..., dim:2 * dim], leaves64[3], leaves64[1][..., 0],
               leaves64[1][..., 1], leaves64[2]]
    out64, final64 = recurrent_gated_delta_rule(*views64[:5], dim**-0.5, views64[5])
    grads64 = torch.autograd.grad(out64.square().sum() + final64.sum(), leaves64[:3] + [leaves64[3]])
    for a, b in zip(grads, grads64):
        assert _rel(a, b) < 1e-5


@needs_native
def test_native_takes_an_empty_batch():
    inputs = random_inputs(0, 5, 2, 4, 4, torch.float32, True)
    out, state = _native(inputs, 0.5, 4, threads=2)
    assert out.shape == (0, 5, 2, 4) and state.shape == (0, 2, 4, 4)


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


def _rel(a, b):
    """Relative error, absolute where the reference is small (a gradient that is exactly zero, say)."""
    return ((a.double() - b).norm() / max(b.norm().item(), 1.0)).item()


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("time,chunk_size,key_dim,value_dim", CASES,
                         ids=[f"T{t}-C{c}-K{k}-V{v}" for t, c, k, v in CASES])
def test_native_matches_reference(time, chunk_size, key_dim, value_dim, with_state, threads):
    check_against_reference(time, chunk_size, key_dim, value_dim, with_state, threads)


def check_against_reference(time, chunk_size, key_dim, value_dim, with_state, threads):
    """The forward alone (nothing kept for a backward) and the forward + backward, against float64."""
    inputs = random_inputs(2, time, 3, key_dim, value_dim, torch.float32, with_state)
    _assert_matches(_native(inputs, key_dim**-0.5, chunk_size, threads), _reference(inputs, key_dim**-0.5))
    inputs = [None if x is None else x.requires_grad_() for x in inputs]
    grad_out, grad_state = torch.randn(2, time, 3, value_dim), torch.randn(2, 3, key_dim, value_dim)
    scale = key_dim**-0.5
    out, state, grads = _forward_and_grads(native_chunk_gated_delta_rule, inputs, grad_out, grad_state, scale,
                                           chunk_size=chunk_size, threads=threads)
    assert_gradients_match(inputs, grad_out, grad_state, scale, out, state, grads)


def assert_gradients_match(inputs, grad_out, grad_state, scale, out, state, grads):
    """out, state and the gradients of (out·grad_out + state·grad_state) against the float64 reference's."""
    inputs64 = [None if x is None else x.detach().double().requires_grad_() for x in inputs]
    out_r, state_r, grads_r = _forward_and_grads(recurrent_gated_delta_rule, inputs64, grad_out.double(),
                                                 grad_state.double(), scale)
    assert _rel(out, out_r) < 1e-5 and _rel(state, state_r) < 1e-5
    for name, a, b in zip(["q", "k", "v", "g", "beta", "initial_state"], grads, grads_r):
        assert a.dtype == torch.float32 and a.shape == b.shape
        assert _rel(a, b) < 1e-5, f"gradient of {name} is off by {_rel(a, b):.2e}"


@needs_native
@pytest.mark.parametrize("used", ["out", "state"])
def test_native_gradients_with_one_output_unused_and_partial_leaves(used):
    inputs = random_inputs(2, 11, 2, 4, 3, torch.float32, False)
    inputs64 = [None if x is None else x.double() for x in inputs]
    leaves = [inputs[1].requires_grad_(), inputs[3].requires_grad_()]
    leaves64 = [inputs64[1].requires_grad_(), inputs64[3].requires_grad_()]

    def loss(rule, tensors):
        out, state = rule(*tensors[:5], 0.5, None)
        return (out if used == "out" else state).pow(2).sum()

    grads = torch.autograd.grad(loss(lambda *a: native_chunk_gated_delta_rule(*a, 4), inputs), leaves)
    grads_r = torch.autograd.grad(loss(recurrent_gated_delta_rule, inputs64), leaves64)
    for a, b in zip(grads, grads_r):
        assert _rel(a, b) < 1e-5


@needs_native
def test_public_op_runs_native_for_float32_only(monkeypatch):
    calls = []
    for name in ("forward_range", "backward_range"):
        real = getattr(library, name)
        monkeypatch.setattr(library, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    inputs = random_inputs(2, 30, 2, 8, 8, torch.float32, True)
    with torch.no_grad():
        fast, _ = gated_delta_rule(*inputs[:5], initial_state=inputs[5])
    assert calls == ["forward_range"]
    calls.clear()
    leaves = [x.requires_grad_() for x in inputs]
    trained, _ = gated_delta_rule(*leaves[:5], initial_state=leaves[5])
    trained.sum().backward()
    assert calls == ["forward_range", "backward_range"]
    torch.testing.assert_close(fast, trained.detach(), rtol=1e-5, atol=1e-5)
    calls.clear()
    with torch.no_grad():
        gated_delta_rule(*(x.detach().double() for x in inputs[:5]))
    assert not calls, "float64 is computed by the torch path"


def test_native_refuses_what_it_cannot_do():
    inputs = random_inputs(1, 9, 1, 4, 4, torch.float64, False)
    with pytest.raises(RuntimeError, match="native op cannot run: it takes float32 CPU tensors only"):
        native_chunk_gated_delta_rule(*inputs[:5], 0.5, None, 4)


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """An empty native state and cache folder, so the next call builds (or fails) anew."""
    monkeypatch.setattr(library, "_state", {})
    monkeypatch.setenv("LMSLEEP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@needs_native
def test_build_is_cached_under_a_key_of_source_and_machine(fresh_native):
    assert library.library() is not None, library.error()
    built = list((fresh_native / "cache").glob("gated_delta_rule-*.so"))
    assert len(built) == 1 and not list((fresh_native / "cache").glob("*.tmp*"))
    stamp = built[0].stat().st_mtime_ns
    library._state.clear()
    assert library.library() is not None and built[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt


def test_failed_build_falls_back_to_the_torch_path(fresh_native, monkeypatch):
    broken = fresh_native / "broken.c"
    broken.write_text("int lmsleep_gdr_forward( {\n")
    monkeypatch.setattr(library, "SOURCE", broken)
    if not HAS_COMPILER:
        pytest.skip("no C compiler to fail")
    with pytest.warns(RuntimeWarning, match="native gated delta rule unavailable"):
        assert library.library() is None
    assert "failed" in library.error()
    inputs = random_inputs(1, 20, 2, 4, 4, torch.float32, True)
    assert auto_backend(*inputs) == "torch"
    with torch.no_grad():
        got = gated_delta_rule(*inputs[:5], scale=0.5, initial_state=inputs[5], output_final_state=True, chunk_size=8)
    _assert_matches(got, _reference(inputs, 0.5))


def test_no_compiler_or_disabled_falls_back_quietly_or_with_a_warning(fresh_native, monkeypatch):
    monkeypatch.setenv("LMSLEEP_NATIVE", "0")
    assert library.library() is None and "LMSLEEP_NATIVE=0" in library.error()
    library._state.clear()
    monkeypatch.setenv("LMSLEEP_NATIVE", "1")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert library.library() is None
    assert "native library is unavailable" in native.unavailable_reason(torch.zeros(1))



@needs_native
def test_saved_buffers_are_aligned_rows_of_the_sizes_the_library_asks():
    # 5 chunks of 8 tokens, padded to 16 floats; a state is kept per 64 tokens (8 chunks here), so one
    states_size, u_size = library.saved_sizes(37, 5, 7, 8)
    assert (states_size, u_size) == (1 * 16 * 16, 5 * 16 * 16)
    assert library.saved_sizes(200, 5, 7, 16) == (4 * 16 * 16, 13 * 16 * 16)  # 13 chunks, a state per 4
    assert library.saved_sizes(200, 5, 7, 64) == (4 * 16 * 16, 4 * 64 * 16)  # chunks of 64: a state each
    states, u = library.saved_buffers(3, 37, 5, 7, 8)
    assert states.shape == (3, states_size) and u.shape == (3, u_size)
    assert all(row.data_ptr() % 64 == 0 for buffer in (states, u) for row in buffer)


def test_default_chunk_sizes():
    assert native.default_chunk_size(64, needs_grad=False) == 16
    assert native.default_chunk_size(64, needs_grad=True) == 16
    assert native.default_chunk_size(128, needs_grad=False) == 16
    assert native.default_chunk_size(128, needs_grad=True) == 64
    assert chunk_fast.default_chunk_size(64) == 32
    assert chunk_fast.default_chunk_size(128) == 64


def test_native_refuses_bad_thread_count():
    inputs = random_inputs(1, 4, 1, 2, 2, torch.float32, False)
    with pytest.raises(ValueError, match="threads must be a positive int"):
        native_chunk_gated_delta_rule(*inputs[:5], 0.5, None, 4, threads=0)
