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
