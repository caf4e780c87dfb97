"""The dispatcher of the fast-weight op (`lmsleep/ops/delta_rule/dispatch.py`): every backend named
explicitly against the float64 reference (forward and gradients), what `auto` picks, LMSLEEP_NATIVE=0,
refused names, fla's wiring (faked on a CPU) and the layer's use_fla."""
import pytest
import torch

from lmsleep.layers import GatedDeltaNet
from lmsleep.ops import BACKENDS, auto_backend, gated_delta_rule, recurrent_gated_delta_rule
from lmsleep.ops.delta_rule import fla, library, native
from test_op import _forward_and_grads, random_inputs

HAS_NATIVE = library._compiler() is not None and library.library() is not None
needs_native = pytest.mark.skipif(not HAS_NATIVE, reason=f"native library unavailable: {library.error()}")
HAS_FLA = torch.cuda.is_available() and fla.unavailable_reason(torch.zeros(1, device="cuda")) is None


def _rel(a, b):
    return ((a.double() - b).norm() / max(b.norm().item(), 1.0)).item()


def _backend_params():
    params = [pytest.param(name, torch.float64, None) for name in ("reference", "chunk", "torch")]
    params.append(pytest.param("native", torch.float32, None, marks=needs_native))
    params.append(pytest.param("fla", torch.float32, "cuda",
                               marks=pytest.mark.skipif(not HAS_FLA, reason="needs CUDA and flash-linear-attention")))
    return params


CASES = [(1, None), (7, 4), (37, 8), (65, 16), (33, None)]  # (time, chunk_size): odd lengths, partial chunks


@pytest.mark.parametrize("backend,dtype,device", _backend_params())
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("time,chunk_size", CASES, ids=[f"T{t}-C{c}" for t, c in CASES])
def test_each_backend_matches_the_float64_reference(backend, dtype, device, time, chunk_size, with_state):
    inputs = random_inputs(2, time, 3, 8, 5, torch.float64, with_state)
    grad_out, grad_state = torch.randn(2, time, 3, 5, dtype=torch.float64), torch.randn(2, 3, 8, 5, dtype=torch.float64)
    scale = 8**-0.5
    reference = _forward_and_grads(recurrent_gated_delta_rule, [None if x is None else x.requires_grad_() for x in inputs],
                                   grad_out, grad_state, scale)
    leaves = [None if x is None else x.detach().to(dtype=dtype, device=device).requires_grad_() for x in inputs]

    def rule(q, k, v, g, beta, scale, initial_state):
        return gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=True,
                                chunk_size=chunk_size, backend=backend)

    got = _forward_and_grads(rule, leaves, grad_out.to(dtype=dtype, device=device),
                             grad_state.to(dtype=dtype, device=device), scale)
    tol = 1e-9 if dtype == torch.float64 else (1e-5 if backend == "native" else 2e-3)
    for name, a, b in zip(["out", "state"], got[:2], reference[:2]):
        assert a.dtype == dtype and _rel(a.cpu(), b) < tol, f"{backend}: {name} off by {_rel(a.cpu(), b):.2e}"
    for name, a, b in zip(["q", "k", "v", "g", "beta", "initial_state"], got[2], reference[2]):
        assert _rel(a.cpu(), b) < tol * 10, f"{backend}: gradient of {name} off by {_rel(a.cpu(), b):.2e}"


def test_auto_picks_torch_for_float64_and_the_reference_for_one_token():
    inputs = random_inputs(2, 9, 2, 4, 4, torch.float64, True)
    assert auto_backend(*inputs) == "torch"
    assert auto_backend(*(x[:, :1] for x in inputs[:5]), inputs[5]) == "reference"


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_auto_picks_native_for_float32_on_a_cpu(dtype, monkeypatch):
    """Half precision is computed in float32, so it takes the native op too (where it measured faster:
    LMSLEEP_NATIVE=1 skips that measurement, which test_choice.py tests)."""
    monkeypatch.setenv("LMSLEEP_NATIVE", "1")
    inputs = random_inputs(2, 9, 2, 4, 4, dtype, True)
    assert auto_backend(*inputs) == "native"
    assert auto_backend(*inputs, allow_fla=False) == "native"
    assert auto_backend(*(x[:, :1] for x in inputs[:5]), inputs[5]) == "reference"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("time", [1, 20])
def test_auto_runs_exactly_the_backend_it_names(dtype, time):
    inputs = random_inputs(2, time, 2, 4, 4, dtype, True)
    kwargs = dict(initial_state=inputs[5], output_final_state=True)
    auto = gated_delta_rule(*inputs[:5], **kwargs)
    named = gated_delta_rule(*inputs[:5], **kwargs, backend=auto_backend(*inputs))
    for a, b in zip(auto, named):
        assert torch.equal(a, b)


@pytest.fixture
def native_disabled(monkeypatch):
    """LMSLEEP_NATIVE=0 with the library not yet asked for, as in a fresh process."""
    monkeypatch.setattr(library, "_state", {})
    monkeypatch.setenv("LMSLEEP_NATIVE", "0")


def test_lmsleep_native_0_runs_the_torch_path(native_disabled):
    inputs = random_inputs(2, 20, 2, 4, 4, torch.float32, True)
    assert auto_backend(*inputs) == "torch"
    with pytest.raises(RuntimeError, match="backend='native' cannot run: .*LMSLEEP_NATIVE=0"):
        gated_delta_rule(*inputs[:5], backend="native")
    out, state = gated_delta_rule(*inputs[:5], initial_state=inputs[5], output_final_state=True)
    reference = recurrent_gated_delta_rule(*(x.double() for x in inputs[:5]), 4**-0.5, inputs[5].double())
    assert _rel(out, reference[0]) < 1e-5 and _rel(state, reference[1]) < 1e-5


def test_native_refuses_float64_with_a_reason():
    inputs = random_inputs(1, 9, 1, 4, 4, torch.float64, False)
    with pytest.raises(RuntimeError, match="backend='native' cannot run: it takes float32 CPU tensors only"):
        gated_delta_rule(*inputs[:5], backend="native")


@pytest.mark.parametrize("backend", ["Native", "cuda", "", None, 3, "auto "])
def test_bad_backend_names_are_refused(backend):
    inputs = random_inputs(1, 5, 1, 4, 4, torch.float64, False)
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'reference', 'chunk', 'torch', 'native', 'fla'"):
        gated_delta_rule(*inputs[:5], backend=backend)


def test_reference_flag_is_the_reference_backend_and_contradictions_are_refused():
    inputs = random_inputs(1, 5, 1, 4, 4, torch.float64, True)
    flag = gated_delta_rule(*inputs[:5], initial_state=inputs[5], reference=True)[0]
    named = gated_delta_rule(*inputs[:5], initial_state=inputs[5], backend="reference")[0]
    assert torch.equal(flag, named)
    with pytest.raises(ValueError, match="reference=True asks for the reference, but backend='torch'"):
        gated_delta_rule(*inputs[:5], reference=True, backend="torch")


@pytest.mark.parametrize("backend", [name for name in BACKENDS if name != "fla"])
def test_an_empty_sequence_returns_zeros_and_the_initial_state(backend):
    if backend == "native" and not HAS_NATIVE:
        pytest.skip("native library unavailable")
    dtype = torch.float32 if backend == "native" else torch.float64
    inputs = random_inputs(2, 0, 2, 4, 3, dtype, True)
    out, state = gated_delta_rule(*inputs[:5], initial_state=inputs[5], output_final_state=True, backend=backend)
    assert out.shape == (2, 0, 2, 3) and torch.equal(state, inputs[5])


def test_fla_on_cpu_tensors_is_refused_with_a_reason():
    inputs = random_inputs(1, 5, 1, 4, 4, torch.float32, False)
    with pytest.raises(RuntimeError, match="backend='fla' cannot run: fla's kernel runs on CUDA tensors only"):
        gated_delta_rule(*inputs[:5], backend="fla")
    assert auto_backend(*inputs) != "fla"


@pytest.fixture
def fake_fla(monkeypatch):
    """fla made available on a CPU: its kernel is the reference, and every call is recorded."""
    calls = []

    def kernel(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False):
        calls.append(dict(dtypes=[x.dtype for x in (q, k, v, g, beta)], scale=scale,
                          initial_state=initial_state, output_final_state=output_final_state))
        out, state = recurrent_gated_delta_rule(q, k, v, g, beta, scale, initial_state)
        return out, (state if output_final_state else None)

    monkeypatch.setattr(fla, "_load", lambda: (kernel, None))
    monkeypatch.setattr(fla, "unavailable_reason", lambda *tensors: None)
    return calls


def test_fla_takes_the_inputs_as_given_when_picked(fake_fla):
    inputs = random_inputs(1, 6, 2, 4, 4, torch.float64, True)
    beta = inputs[4].float()  # fla keeps its own precision rules: mixed dtypes reach it unchanged
    assert auto_backend(*inputs) == "fla" and auto_backend(*inputs, allow_fla=False) == "torch"
    one_token = [x[:, :1] for x in inputs[:5]] + [inputs[5]]
    assert auto_backend(*one_token) == "fla", "on CUDA, fla runs one token too (as the layer always did)"
    out, state = gated_delta_rule(*inputs[:4], beta, initial_state=inputs[5], output_final_state=True)
    assert fake_fla == [dict(dtypes=[torch.float64] * 4 + [torch.float32], scale=4**-0.5,
                             initial_state=inputs[5], output_final_state=True)]
    assert state is not None and out.shape == inputs[2].shape


def test_a_layer_with_use_fla_off_leaves_fla_out(fake_fla):
    layer = GatedDeltaNet(32, 2, 8, 6).double()
    x = torch.randn(2, 5, layer.qkv.in_features, dtype=torch.float64)
    with_fla, _ = layer(x, None)
    assert len(fake_fla) == 1
    layer.use_fla = False
    without_fla, _ = layer(x, None)
    assert len(fake_fla) == 1, "use_fla=False still reached fla"
    torch.testing.assert_close(with_fla, without_fla, rtol=1e-10, atol=1e-10)
