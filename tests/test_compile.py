"""The native op as a torch.library custom op (`lmsleep/ops/delta_rule/native_op.py`): opcheck, the sizes its
fake implementation gives, torch.compile(fullgraph=True) of a tiny SleepLM against eager, torch.export."""
import pytest
import torch
import torch._functorch.config
import torch._inductor.config
from torch._dynamo.testing import CompileCounterWithBackend

from helpers import random_tokens, tiny_model
from lmsleep.ops import gated_delta_rule
from lmsleep.ops.delta_rule import library, native_op
from test_native import needs_native
from test_op import random_inputs

pytestmark = needs_native
OP = torch.ops.lmsleep.gated_delta_rule_native.default


@pytest.fixture(autouse=True)
def fresh_compile_caches(tmp_path, monkeypatch):
    """Compile from scratch: inductor's on-disk caches do not key on a custom op's fake implementation, so a
    graph cached by an earlier version of the op (other saved-buffer sizes) would be replayed."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    with torch._inductor.config.patch(force_disable_caches=True), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        yield


def _leaves(inputs, grad: bool):
    return [None if x is None else x.detach().clone().requires_grad_(grad) for x in inputs]


@pytest.mark.parametrize("time, length, with_state", [(1, 1, False), (7, 4, True), (13, 7, False), (21, 11, True)])
def test_opcheck(time, length, with_state):
    """Odd lengths (a chunk that is not whole), with and without an initial state, two threads."""
    inputs = random_inputs(2, time, 3, 8, 5, torch.float32, with_state)
    torch.library.opcheck(native_op.gated_delta_rule_native, (*_leaves(inputs, True), 0.3, length, 2, True))
    # Without a gradient nothing is kept: the saved outputs are empty.
    torch.library.opcheck(native_op.gated_delta_rule_native, (*_leaves(inputs, False), 0.3, length, 1, False))
    *_, saved_states, saved_u = OP(*inputs, 0.3, length, 1, False)
    assert saved_states.numel() == saved_u.numel() == 0


def test_backward_without_kept_buffers_is_a_clear_error():
    inputs = _leaves(random_inputs(1, 9, 2, 8, 8, torch.float32, False), True)
    out, *_ = OP(*inputs, 0.3, 4, 1, False)
    with pytest.raises(RuntimeError, match="keep=False"):
        out.sum().backward()


@pytest.mark.parametrize("time, key_dim, value_dim, length", [(1, 1, 1, 1), (37, 17, 33, 16), (129, 64, 64, 64)])
def test_fake_sizes_match_the_library(time, key_dim, value_dim, length):
    assert native_op.saved_sizes(time, key_dim, value_dim, length) == library.saved_sizes(time, key_dim, value_dim, length)


def test_custom_op_equals_the_eager_function_bit_for_bit():
    """The registered op (compile/export) and the autograd Function (eager) make the same C calls."""
    inputs = random_inputs(2, 19, 3, 8, 6, torch.float32, True)
    eager, op = _leaves(inputs, True), _leaves(inputs, True)
    out_e, state_e = gated_delta_rule(*eager[:5], initial_state=eager[5], output_final_state=True, backend="native")
    out_o, state_o = native_op.traced_chunk_gated_delta_rule(*op[:5], 8**-0.5, op[5], 16, 1, True)
    (out_e.square().sum() + state_e.sum()).backward()
    (out_o.square().sum() + state_o.sum()).backward()
    assert torch.equal(out_e, out_o) and torch.equal(state_e, state_o)
    for a, b in zip(eager, op):
        assert torch.equal(a.grad, b.grad)


def _model():
    # Two windows and two sleep passes: the op runs from an initial state, and several times per forward.
    model = tiny_model(torch.float32, layout="AG", window=8, sleep_passes=2).train()
    return model, random_tokens(model, 2, 19)


def _forward_and_grads(model, tokens):
    model.zero_grad(set_to_none=True)
    logits = model(tokens)
    logits.square().mean().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters()]


def test_compiled_model_traces_the_op_in_one_graph_and_equals_eager():
    model, tokens = _model()
    logits, grads = _forward_and_grads(model, tokens)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    logits_c, grads_c = _forward_and_grads(compiled, tokens)
    assert counter.frame_count == 1  # fullgraph: one graph, or an error
    graph_ops = {getattr(node.target, "__name__", str(node.target)) for node in counter.graphs[0].graph.nodes}
    assert any("gated_delta_rule_native" in name for name in graph_ops), graph_ops
    torch.testing.assert_close(logits_c, logits, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_c, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_inductor_compiled_op_equals_eager():
    """The op inside inductor-compiled code (one short compile): forward and gradients."""

    def f(q, k, v, g, beta, state):
        out, final = gated_delta_rule(q.tanh(), k, v, g, beta, initial_state=state, output_final_state=True)
        return (out * 2).square().sum() + final.sum()

    inputs = random_inputs(2, 11, 2, 8, 8, torch.float32, True)
    eager, compiled = _leaves(inputs, True), _leaves(inputs, True)
    f(*eager).backward()
    torch.compile(f, fullgraph=True)(*compiled).backward()
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5)


class _Op(torch.nn.Module):
    def forward(self, q, k, v, g, beta, state):
        return gated_delta_rule(q, k, v, g, beta, initial_state=state, output_final_state=True)


def test_export():
    inputs = random_inputs(2, 13, 2, 8, 5, torch.float32, True)
    exported = torch.export.export(_Op(), tuple(inputs))
    assert any(node.target is OP for node in exported.graph.nodes)
    for got, expected in zip(exported.module()(*inputs), _Op()(*inputs)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_train_config_compile_is_opt_in(tmp_path):
    """TrainConfig.compile / `lmsleep train --compile` compile the Trainer's loss; off by default."""
    from test_train import tiny_train_config

    from lmsleep.cli import build_parser
    from lmsleep.train import Trainer
    from lmsleep.train_cli import config_from_args

    assert not tiny_train_config().compile
    trainer = Trainer(tiny_train_config(compile=True), tmp_path, progress=False)
    assert isinstance(trainer.loss_fn, torch._dynamo.eval_frame.OptimizedModule)
    assert not isinstance(Trainer(tiny_train_config(), tmp_path / "eager", progress=False).loss_fn,
                          torch._dynamo.eval_frame.OptimizedModule)
    args = build_parser().parse_args(["train", "--out", str(tmp_path / "cli"), "--compile"])
    assert config_from_args(args).compile
    with pytest.raises((TypeError, ValueError), match="compile"):
        tiny_train_config(compile="yes")
