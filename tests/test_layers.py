"""Layer pieces against plain references."""
import torch
import torch.nn.functional as F

from lmsleep.layers import GatedDeltaNet
from lmsleep.ops.attention import rotary



def test_short_conv_is_a_causal_depthwise_convolution_and_continues_after_a_tail():
    layer = GatedDeltaNet(32, 2, 8, 6).double()
    x = torch.randn(2, 11, layer.channels, dtype=torch.float64)
    expected = F.silu(F.conv1d(F.pad(x.transpose(1, 2), (3, 0)), layer.conv.weight, groups=layer.channels)).transpose(1, 2)
    y, _ = layer._short_conv(x, None)
    torch.testing.assert_close(y, expected)
    first, tail = layer._short_conv(x[:, :5], None)
    second, _ = layer._short_conv(x[:, 5:], tail)
    torch.testing.assert_close(torch.cat([first, second], 1), expected)


def test_rotary_scores_depend_only_on_relative_position():
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)

    def score(pq, pk):
        return (rotary(q, torch.tensor([pq]), 10000.0) * rotary(k, torch.tensor([pk]), 10000.0)).sum()

    torch.testing.assert_close(score(7, 3), score(1004, 1000))
    assert (score(7, 3) - score(7, 4)).abs() > 1e-6


def test_gated_silu_equals_the_written_out_ops_bit_for_bit_forward_and_backward():
    from lmsleep.ops.swiglu import gated_silu, gated_silu_reference

    torch.manual_seed(0)
    for shape, dtype in [((7, 2 * 5), torch.float32), ((3, 11, 2 * 13), torch.float32), ((2, 3, 4, 2 * 9), torch.float64),
                         ((5, 2 * 192), torch.float32)]:
        base = torch.randn(*shape[:-1], shape[-1] + 3, dtype=dtype) * 3
        for x in (base[..., : shape[-1]].contiguous(), base[..., 3:]):  # contiguous and a strided view
            grad = torch.randn(*shape[:-1], shape[-1] // 2, dtype=dtype)
            a = x.detach().requires_grad_(True)
            b = x.detach().requires_grad_(True)
            fast, reference = gated_silu(a), gated_silu_reference(b)
            assert torch.equal(fast, reference)
            fast.backward(grad)
            reference.backward(grad)
            assert torch.equal(a.grad, b.grad)
            assert a.grad.shape == x.shape
    x = torch.randn(3, 4, 2 * 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gated_silu, (x,))
    with torch.no_grad():  # no autograd.Function without grad: the reference's ops
        assert torch.equal(gated_silu(x), gated_silu_reference(x))


def test_gated_silu_refuses_an_odd_width():
    from lmsleep.ops.swiglu import gated_silu

    try:
        gated_silu(torch.randn(2, 7))
    except ValueError as error:
        assert "even" in str(error)
    else:
        raise AssertionError("an odd width was accepted")


def test_rms_norm_equals_the_textbook_formula_bit_for_bit_forward_and_backward():
    from lmsleep.layers import RMSNorm

    torch.manual_seed(1)
    for shape, dtype in [((32, 1, 64), torch.float32), ((3, 7, 33), torch.float32), ((5, 9, 17), torch.float64)]:
        norm = RMSNorm(shape[-1]).to(dtype)
        with torch.no_grad():
            norm.weight.normal_()
        x = (torch.randn(*shape, dtype=dtype) * 2).requires_grad_(True)
        y = x.detach().clone().requires_grad_(True)
        w = norm.weight.detach().clone().requires_grad_(True)
        textbook = w * y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + norm.eps)
        out = norm(x)
        assert torch.equal(out, textbook)
        grad = torch.randn(*shape, dtype=dtype)
        out.backward(grad)
        textbook.backward(grad)
        assert torch.equal(x.grad, y.grad) and torch.equal(norm.weight.grad, w.grad)
