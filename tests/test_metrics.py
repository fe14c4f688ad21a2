import math

import torch
from torch import nn

from bioprop.metrics import accuracy, angle_degrees, cosine, synaptic_operations


def _brute_synops(layer, s):
    """Count, for every output unit, the active inputs connected to it (weights set to one)."""
    ref = layer
    with torch.no_grad():
        w = ref.weight.detach().clone()
        ref.weight.fill_(1.0)
        b = None
        if ref.bias is not None:
            b = ref.bias.detach().clone()
            ref.bias.zero_()
        out = ref(s.flatten(0, 1)).sum()
        ref.weight.copy_(w)
        if b is not None:
            ref.bias.copy_(b)
    return out


def test_synops_linear_and_conv_exact():
    torch.manual_seed(0)
    s = (torch.rand(3, 2, 4, 9, 9) > 0.7).float()
    for layer in (nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.Conv2d(4, 6, 5, padding=2),
                  nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)):
        assert torch.allclose(synaptic_operations(layer, s), _brute_synops(layer, s))
    lin = nn.Linear(12, 7)
    s2 = (torch.rand(3, 2, 12) > 0.5).float()
    assert synaptic_operations(lin, s2) == s2.sum() * 7


def test_accuracy_and_angles():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    y = torch.tensor([1, 2, 0])
    top1, top2 = accuracy(logits, y, (1, 2))
    assert math.isclose(top1, 1 / 3, rel_tol=1e-6) and math.isclose(top2, 2 / 3, rel_tol=1e-6)
    a = torch.tensor([1.0, 0.0])
    assert math.isclose(angle_degrees(a, torch.tensor([0.0, 2.0])), 90.0)
    assert math.isclose(cosine(a, torch.tensor([3.0, 0.0])), 1.0)
