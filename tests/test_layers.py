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


def _textbook_rms_norm(x, weight, eps):
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def test_rms_norm_is_the_textbook_form_up_to_rounding_forward_and_backward():
    from lmsleep.layers import GatedRMSNorm, RMSNorm

    torch.manual_seed(0)
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
        for shape in ((3, 1, 64), (2, 7, 48), (5, 64)):
            norm = RMSNorm(shape[-1], eps=1e-6).to(dtype)
            with torch.no_grad():
                norm.weight.copy_(torch.randn(shape[-1], dtype=dtype))
            x = torch.randn(*shape, dtype=dtype, requires_grad=True)
            weight = norm.weight.detach().clone().requires_grad_()
            up = torch.randn(*shape, dtype=dtype)
            y, expected = norm(x), _textbook_rms_norm(x, weight, 1e-6)
            torch.testing.assert_close(y, expected, rtol=tolerance, atol=tolerance)
            got = torch.autograd.grad((y * up).sum(), (x, norm.weight))
            want = torch.autograd.grad((expected * up).sum(), (x, weight))
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=10 * tolerance, atol=10 * tolerance)
            with torch.inference_mode():
                torch.testing.assert_close(norm(x.detach()), expected.detach(), rtol=tolerance, atol=tolerance)
        gated = GatedRMSNorm(16).to(dtype)
        x, gate = torch.randn(4, 16, dtype=dtype), torch.randn(4, 16, dtype=dtype)
        torch.testing.assert_close(gated(x, gate), _textbook_rms_norm(x, gated.weight, 1e-6) * F.silu(gate),
                                   rtol=tolerance, atol=tolerance)
    # another dtype than the weight's: the textbook form and its type promotion
    norm = RMSNorm(8)
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    y = norm(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, _textbook_rms_norm(x, norm.weight, 1e-6))
