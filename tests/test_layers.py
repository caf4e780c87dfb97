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
