"""The fast-weight op: chunked paths (the torch fast path `chunk_fast`, and the plain one `chunk`) vs the
recurrent reference (forward and every gradient), and vs transformers' torch_chunk_gated_delta_rule.
The native op is tested in test_native.py, the dispatcher's choice of backend in test_dispatch.py."""
import pytest
import torch
import torch.nn.functional as F

from lmsleep.ops import (
    chunk_gated_delta_rule,
    fast_chunk_gated_delta_rule,
    gated_delta_rule,
    native_chunk_gated_delta_rule,
    recurrent_gated_delta_rule,
)
from lmsleep.ops.delta_rule import chunk_fast, common
from lmsleep.ops.delta_rule import library as native_library


def random_inputs(batch, time, heads, key_dim, value_dim, dtype, with_state, strong_decay=False):
    q = F.normalize(torch.randn(batch, time, heads, key_dim, dtype=dtype), dim=-1)
    k = F.normalize(torch.randn(batch, time, heads, key_dim, dtype=dtype), dim=-1)
    v = torch.randn(batch, time, heads, value_dim, dtype=dtype)
    g = -torch.rand(batch, time, heads, dtype=dtype) * (8.0 if strong_decay else 1.0)
    beta = torch.rand(batch, time, heads, dtype=dtype)
    state = torch.randn(batch, heads, key_dim, value_dim, dtype=dtype) if with_state else None
    return [q, k, v, g, beta, state]


CASES = [  # (time, chunk_size)
    (1, 64), (7, 64), (13, 4), (37, 8), (64, 16), (65, 16), (100, 32), (129, 64),
]


def test_strong_decay_stays_finite_and_exact():
    inputs = random_inputs(1, 50, 2, 16, 16, torch.float64, True, strong_decay=True)
    out_c, s_c = gated_delta_rule(*inputs[:5], initial_state=inputs[5], output_final_state=True, chunk_size=16)
    out_r, s_r = gated_delta_rule(*inputs[:5], initial_state=inputs[5], output_final_state=True, reference=True)
    assert torch.isfinite(out_c).all()
    torch.testing.assert_close(out_c, out_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s_c, s_r, rtol=1e-10, atol=1e-10)


def test_float32_close_to_float64_reference():
    inputs = random_inputs(2, 200, 4, 32, 32, torch.float64, True)
    out64, _ = gated_delta_rule(*inputs[:5], initial_state=inputs[5], reference=True)
    out32, _ = gated_delta_rule(*(x.float() for x in inputs[:5]), initial_state=inputs[5].float(), chunk_size=64)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-5)


def test_scale_and_final_state_flags():
    inputs = random_inputs(1, 9, 2, 4, 6, torch.float64, False)
    out, state = gated_delta_rule(*inputs[:5])
    assert state is None and out.shape == (1, 9, 2, 6)
    out2, _ = gated_delta_rule(*inputs[:5], scale=2 * 4**-0.5)
    torch.testing.assert_close(out2, 2 * out)


def test_splitting_the_sequence_with_initial_state_is_exact():
    inputs = random_inputs(2, 40, 2, 8, 8, torch.float64, True)
    full, s_full = gated_delta_rule(*inputs[:5], initial_state=inputs[5], output_final_state=True, chunk_size=8)
    first, s_mid = gated_delta_rule(*(x[:, :17] for x in inputs[:5]), initial_state=inputs[5], output_final_state=True)
    second, s_end = gated_delta_rule(*(x[:, 17:] for x in inputs[:5]), initial_state=s_mid, output_final_state=True)
    torch.testing.assert_close(torch.cat([first, second], 1), full)
    torch.testing.assert_close(s_end, s_full)


@pytest.mark.parametrize("time,chunk_size", [(1, 64), (37, 8), (100, 64), (130, 32)])
def test_agrees_with_transformers_torch_chunk_gated_delta_rule(time, chunk_size):
    from transformers.models.qwen3_next import modeling_qwen3_next as qwen3_next  # a test dependency

    inputs = random_inputs(2, time, 3, 16, 8, torch.float32, True)
    ours, s_ours = gated_delta_rule(*inputs[:5], initial_state=inputs[5], output_final_state=True, chunk_size=chunk_size)
    theirs, s_theirs = qwen3_next.torch_chunk_gated_delta_rule(
        *inputs[:5], chunk_size=chunk_size, initial_state=inputs[5], output_final_state=True
    )
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s_ours, s_theirs.to(s_ours.dtype), rtol=1e-4, atol=1e-5)


# --- The public entry point, the torch fast path (chunk_fast) and the plain chunked path, each against the reference. ---

def _public(q, k, v, g, beta, scale, initial_state, chunk_size):
    """`gated_delta_rule` (the dispatch users call) with the paths' positional signature."""
    return gated_delta_rule(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=True, chunk_size=chunk_size
    )


def _fast_in_groups_of(chunks_per_group):
    """The fast path made to lay out and solve `chunks_per_group` chunks at a time (the last group may be
    shorter), as it does for long sequences, so that groups meet on small test shapes too."""

    def rule(q, k, v, g, beta, scale, initial_state, chunk_size):
        _, length = common.chunking(q.shape[1], chunk_size)
        values_per_chunk = q.shape[0] * q.shape[2] * length * max(q.shape[3], v.shape[3])
        saved = chunk_fast.GROUP_ELEMENTS
        chunk_fast.GROUP_ELEMENTS = chunks_per_group * values_per_chunk
        try:
            return fast_chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, chunk_size)
        finally:
            chunk_fast.GROUP_ELEMENTS = saved

    return rule


def _fast_on_threads(threads):
    """The fast path with (batch rows, heads) cut into `threads` blocks (the test shapes have batch 2 and
    3 heads: 2 threads split the batch, 3 split the heads)."""

    def rule(q, k, v, g, beta, scale, initial_state, chunk_size):
        return fast_chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, chunk_size, threads=threads)

    return rule


PATHS = {
    "public": _public,
    "fast": fast_chunk_gated_delta_rule,
    "fast-groups-of-1": _fast_in_groups_of(1),
    "fast-groups-of-2": _fast_in_groups_of(2),
    "fast-2-threads": _fast_on_threads(2),
    "fast-3-threads": _fast_on_threads(3),
    "plain": chunk_gated_delta_rule,
}


def _forward_and_grads(rule, inputs, grad_out, grad_state, scale, **kwargs):
    leaves = [x for x in inputs if x is not None]
    out, state = rule(*inputs[:5], scale, inputs[5], **kwargs)
    loss = (out * grad_out).sum() + (state * grad_state).sum()
    return out, state, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("time,chunk_size", CASES, ids=[f"T{t}-C{c}" for t, c in CASES])
def test_path_matches_reference_forward_and_gradients(time, chunk_size, with_state, path):
    inputs = random_inputs(2, time, 3, 8, 5, torch.float64, with_state)
    for x in inputs:
        if x is not None:
            x.requires_grad_()
    grad_out = torch.randn(2, time, 3, 5, dtype=torch.float64)
    grad_state = torch.randn(2, 3, 8, 5, dtype=torch.float64)
    scale = 8**-0.5
    out, state, grads = _forward_and_grads(PATHS[path], inputs, grad_out, grad_state, scale, chunk_size=chunk_size)
    out_r, state_r, grads_r = _forward_and_grads(recurrent_gated_delta_rule, inputs, grad_out, grad_state, scale)
    torch.testing.assert_close(out, out_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, state_r, rtol=1e-10, atol=1e-10)
    names = ["q", "k", "v", "g", "beta", "initial_state"]
    for name, a, b in zip(names, grads, grads_r):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"{path}: gradient of {name} differs")


@pytest.mark.parametrize(
    "batch,heads,threads,expected",
    [(2, 3, 2, [(slice(0, 1), slice(None)), (slice(1, 2), slice(None))]),
     (2, 3, 3, [(slice(None), slice(0, 1)), (slice(None), slice(1, 2)), (slice(None), slice(2, 3))]),
     (1, 8, 3, [(slice(None), slice(0, 2)), (slice(None), slice(2, 5)), (slice(None), slice(5, 8))]),
     (3, 1, 8, [(slice(0, 1), slice(None)), (slice(1, 2), slice(None)), (slice(2, 3), slice(None))]),
     (5, 4, 1, [(slice(0, 5), slice(None))])],
)
def test_fast_path_blocks_cover_batch_and_heads(batch, heads, threads, expected):
    assert chunk_fast._blocks(batch, heads, threads) == expected


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("path", ["torch", "native"])
def test_fast_paths_under_inference_mode_and_autocast(path, threads):
    """Inference mode and autocast are per thread: blocks run on other threads must neither fail on
    inference tensors nor compute in another precision than the calling thread (both fast paths)."""
    if path == "native" and native_library.library() is None:
        pytest.skip(f"the native op does not build here: {native_library.error()}")
    op = fast_chunk_gated_delta_rule if path == "torch" else native_chunk_gated_delta_rule
    inputs = random_inputs(2, 21, 3, 8, 5, torch.float32, True)
    expected = op(*inputs[:5], 0.4, inputs[5], 8, threads=1)
    with torch.inference_mode():
        result = op(*inputs[:5], 0.4, inputs[5], 8, threads=threads)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_result = op(*inputs[:5], 0.4, inputs[5], 8, threads=threads)
    for got in (result, autocast_result):
        for a, b in zip(got, expected):
            assert a.dtype == torch.float32
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_fast_path_refuses_bad_thread_count():
    inputs = random_inputs(1, 4, 1, 2, 2, torch.float64, False)
    with pytest.raises(ValueError, match="threads must be a positive int"):
        fast_chunk_gated_delta_rule(*inputs[:5], 0.5, None, 4, threads=0)


def test_fast_path_gradcheck():
    inputs = random_inputs(1, 7, 2, 3, 2, torch.float64, True)
    inputs = [x.requires_grad_() for x in inputs]

    def rule(q, k, v, g, beta, state):
        return fast_chunk_gated_delta_rule(q, k, v, g, beta, 0.7, state, chunk_size=3)

    assert torch.autograd.gradcheck(rule, inputs)


@pytest.mark.parametrize("used", ["out", "state"])
def test_fast_path_with_one_output_unused_and_partial_leaves(used):
    inputs = random_inputs(2, 11, 2, 4, 3, torch.float64, False)
    k, g = inputs[1].requires_grad_(), inputs[3].requires_grad_()

    def loss(rule):
        out, state = rule(*inputs[:5], 0.5, None, chunk_size=4)
        return (out if used == "out" else state).pow(2).sum()

    grads = torch.autograd.grad(loss(fast_chunk_gated_delta_rule), [k, g])
    grads_r = torch.autograd.grad(loss(lambda *a, chunk_size: recurrent_gated_delta_rule(*a)), [k, g])
    for a, b in zip(grads, grads_r):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_fast_path_writes_every_element(threads):
    """With deterministic mode torch fills fresh tensors with NaN, so anything the fast path leaves
    unwritten (its output and gradient buffers are allocated empty, and blocks of rows or heads fill
    them from several threads) would show up."""
    inputs = random_inputs(2, 23, 3, 4, 5, torch.float64, True)
    inputs = [x.requires_grad_() for x in inputs]
    old_mode = torch.are_deterministic_algorithms_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        out, state = fast_chunk_gated_delta_rule(*inputs[:5], 0.5, inputs[5], chunk_size=8, threads=threads)
        grads = torch.autograd.grad(out.sum() + state.sum(), inputs)
    finally:
        torch.use_deterministic_algorithms(old_mode)
        torch.utils.deterministic.fill_uninitialized_memory = old_fill
    for x in (out, state, *grads):
        assert torch.isfinite(x).all()


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
def test_fast_path_float32_relative_error_against_float64_reference(with_state):
    inputs = random_inputs(2, 300, 4, 32, 32, torch.float64, with_state)
    leaves64 = [x.requires_grad_() for x in inputs if x is not None]
    grad_out = torch.randn(2, 300, 4, 32, dtype=torch.float64)
    grad_state = torch.randn(2, 4, 32, 32, dtype=torch.float64)
    out64, state64, grads64 = _forward_and_grads(recurrent_gated_delta_rule, inputs, grad_out, grad_state, 32**-0.5)
    inputs32 = [None if x is None else x.detach().float().requires_grad_() for x in inputs]
    out32, state32, grads32 = _forward_and_grads(
        fast_chunk_gated_delta_rule, inputs32, grad_out.float(), grad_state.float(), 32**-0.5, chunk_size=32
    )
    assert out32.dtype == torch.float32 and all(x.dtype == torch.float32 for x in grads32)

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    assert rel(out32, out64) < 1e-5
    assert rel(state32, state64) < 1e-5
    for name, a, b in zip(["q", "k", "v", "g", "beta", "initial_state"], grads32, grads64):
        assert rel(a, b) < 1e-4, f"float32 gradient of {name} is off by {rel(a, b):.2e}"
