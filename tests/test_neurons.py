import math

import pytest
import torch

from bioprop.neurons import (
    NeuronParams,
    SURROGATES,
    heaviside,
    lif_multistep,
    lif_step,
    rate_init,
    rate_update,
    rate_value,
    relaxed,
    spike_fn,
)

# the surrogate derivatives written out independently of the implementation
EXPECTED = {
    "atan": lambda x, a: (a / 2) / (1 + (math.pi / 2 * a * x) ** 2),
    "fast_sigmoid": lambda x, a: (a / 2) / (1 + a * x.abs()) ** 2,
    "sigmoid": lambda x, a: a * torch.sigmoid(a * x) * (1 - torch.sigmoid(a * x)),
}


@pytest.mark.parametrize("name", sorted(SURROGATES))
@pytest.mark.parametrize("alpha", [None, 3.7])
def test_surrogate_forward_is_heaviside_backward_is_surrogate(name, alpha):
    a = SURROGATES[name][1] if alpha is None else alpha
    x = torch.cat([torch.linspace(-3, 3, 101, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    x.requires_grad_(True)
    s = spike_fn(name, alpha)(x)
    assert torch.equal(s, (x >= 0).double())
    assert s[-1] == 1.0  # H(0) = 1: a neuron exactly at threshold fires
    (g,) = torch.autograd.grad(s.sum(), x)
    torch.testing.assert_close(g, EXPECTED[name](x.detach(), a), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_relaxed_derivative_equals_surrogate(name):
    x = torch.linspace(-2, 2, 41, dtype=torch.float64, requires_grad=True)
    (g_relaxed,) = torch.autograd.grad(relaxed(name, 2.5)(x).sum(), x)
    (g_spike,) = torch.autograd.grad(spike_fn(name, 2.5)(x).sum(), x)
    torch.testing.assert_close(g_relaxed, g_spike, rtol=1e-12, atol=1e-14)
    # the smooth step goes from 0 to 1 and is 1/2 at the threshold
    f = relaxed(name, 2.5)
    assert abs(float(f(torch.tensor(0.0, dtype=torch.float64))) - 0.5) < 1e-12
    assert float(f(torch.tensor(1e6, dtype=torch.float64))) > 0.999
    assert float(f(torch.tensor(-1e6, dtype=torch.float64))) < 1e-3


def test_unknown_surrogate():
    with pytest.raises(ValueError, match="atan"):
        spike_fn("nope")


def test_lif_step_reset_by_subtraction_and_leak_after_reset():
    p = NeuronParams(threshold=2.0, leak=0.5)
    s, r = lif_step(torch.tensor([3.0, 1.0]), None, p)
    assert s.tolist() == [1.0, 0.0]
    assert r.tolist() == [1.0, 1.0]  # 3 - 2, 1
    # next step: leak applied to the post-reset membrane, then input
    s, r = lif_step(torch.tensor([1.5, 1.5]), r, p)
    assert s.tolist() == [1.0, 1.0]  # 0.5 * 1 + 1.5 = 2.0 >= 2
    assert r.tolist() == [0.0, 0.0]


def test_reset_to_zero_and_if():
    p = NeuronParams(threshold=1.0, leak=1.0, reset="zero")
    s, r = lif_step(torch.tensor([1.7]), None, p)
    assert s.item() == 1.0 and r.item() == 0.0


def test_if_rate_matches_input_over_threshold():
    # IF with reset by subtraction and constant input c in [0, theta]: rate -> c / theta
    c = torch.tensor([0.0, 0.3, 1.0, 1.4, 2.0], dtype=torch.float64)
    p = NeuronParams(threshold=2.0, leak=1.0)
    T = 400
    s, _ = lif_multistep(c.expand(T, 5), p)
    rate = s.mean(0)
    assert torch.all((rate - c / 2).abs() <= 1.0 / T + 1e-9)


def test_weighted_rate_accumulator():
    torch.manual_seed(0)
    s = (torch.rand(7, 3) > 0.5).float()
    lam = 0.9
    acc = rate_init(s[0])
    for t in range(7):
        acc = rate_update(acc, s[t], lam)
    w = torch.tensor([lam ** (6 - t) for t in range(7)])
    expected = (w[:, None] * s).sum(0) / w.sum()
    torch.testing.assert_close(rate_value(acc), expected)


def test_neuron_params_validated():
    with pytest.raises(ValueError, match="threshold"):
        NeuronParams(threshold=0.0)
    with pytest.raises(ValueError, match="leak"):
        NeuronParams(leak=1.5)
