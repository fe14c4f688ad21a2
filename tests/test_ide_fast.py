"""IDE's fast path against the plain-PyTorch reference path: the same spikes and rates bitwise in
fp32, the same gradients to rounding; bf16 and channels-last simulations within a bound of fp32;
the CUDA-graph simulation equal to the eager one (GPU only)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from bioprop import create_model, create_rule
from bioprop.models.fastsim import SimOptions
from bioprop.neurons import FusedRatePopulation, NeuronParams, RatePopulation


def _model(kind: str, neuron: str = "lif", dtype=torch.float32, dropout: float = 0.0):
    """Small instances of each IDE model with enough drive to spike at every layer."""
    torch.manual_seed(0)
    if kind == "f400":
        m = create_model("f400", in_shape=[20], hidden=32, num_classes=4, neuron=neuron, dropout=dropout, time_steps=9)
        x = torch.randn(6, 20)
    elif kind == "f64c5":
        m = create_model("f64c5", in_shape=[1, 10, 10], channels=6, kernel=3, stride=2, padding=1, num_classes=4,
                         neuron=neuron, dropout=dropout, time_steps=11)
        x = torch.randn(6, 1, 10, 10)
    elif kind == "f64c5_spikes":  # time-first spike input
        m = create_model("f64c5", in_shape=[2, 10, 10], channels=6, kernel=3, stride=2, padding=1, num_classes=4,
                         neuron=neuron, dropout=dropout, time_steps=7)
        x = (torch.rand(7, 6, 2, 10, 10) < 0.3).float()
    else:
        m = create_model("alexnet_f", in_shape=[3, 8, 8], channels=[6, 8, 8, 6, 4], num_classes=4, neuron=neuron,
                         dropout=dropout, time_steps=10)
        with torch.no_grad():
            for bn in m.bns:
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
                bn.weight.uniform_(1.0, 2.0)
                bn.bias.uniform_(0.2, 0.8)
        x = torch.randn(6, 3, 8, 8)
    m = m.to(dtype)
    with torch.no_grad():
        m.feedback.g.fill_(0.8)
    return m, x.to(dtype)


KINDS = ["f400", "f64c5", "f64c5_spikes", "alexnet_f"]


def _simulate_both(m, x, opts, train=True):
    m.train(train)
    st = m.begin(x, m.sample_masks(x.shape[-len(m.in_shape) - 1], torch.Generator().manual_seed(3)))
    with torch.no_grad():
        a_ref, rec_ref = m.simulate(st, None)
        rates_ref = getattr(st, "rates", None)
        a_fast, rec_fast = m.simulate(st, None, fast=opts)
        rates_fast = getattr(st, "rates", None)
    return (a_ref, rec_ref, rates_ref), (a_fast, rec_fast, rates_fast)


def test_fused_population_is_bitwise_the_reference_population():
    g = torch.Generator().manual_seed(0)
    for params in (NeuronParams(threshold=2.0, leak=1.0), NeuronParams(threshold=1.0, leak=0.9),
                   NeuronParams(threshold=0.5, leak=0.7, reset="zero")):
        ref, fast = RatePopulation(params), FusedRatePopulation(params)
        for _ in range(25):
            cur = torch.randn(5, 7, generator=g) * 1.5
            assert torch.equal(ref.step(cur), fast.step(cur))
            assert torch.equal(ref.v, fast.v)
        assert torch.equal(ref.rate(), fast.rate())
        assert torch.equal(ref.spike_map(), fast.spike_map())
        assert 0 < float(fast.rate().mean()) < 1
        # the exact threshold fires (H(0) = 1), as the reference's H(v - theta)
        p = FusedRatePopulation(params)
        assert p.step(torch.full((1,), params.threshold)).item() == 1.0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("neuron", ["if", "lif"])
def test_fast_simulation_equals_reference_bitwise_in_fp32(kind, neuron):
    m, x = _model(kind, neuron, dropout=0.2)
    (a0, r0, rates0), (a1, r1, rates1) = _simulate_both(m, x, SimOptions())
    assert torch.equal(a0, a1)
    assert 0.02 < float(a0.mean()) < 0.98  # a real test: the population spikes, not saturated
    for key in r0.spikes:
        assert torch.equal(r0.spikes[key], r1.spikes[key]), key
        assert float(r0.spikes[key]) > 0, key
    assert r0.synops.keys() == r1.synops.keys()
    for key in r0.synops:
        assert torch.equal(r0.synops[key], r1.synops[key]), key
    if rates0 is not None:
        for u, v in zip(rates0, rates1):
            assert torch.equal(u, v)


@pytest.mark.parametrize("kind", ["f400", "f64c5", "alexnet_f"])
def test_fast_rule_gradients_equal_reference_path(kind):
    """The whole step (fast simulation, batched Broyden) against the reference path (plain
    simulation, Broyden's term-by-term history), float64: equal to solver rounding."""
    m0, x = _model(kind, "lif", dtype=torch.float64)
    y = torch.arange(x.shape[-len(m0.in_shape) - 1]) % 4
    grads, stats = [], []
    for fast in (False, True):
        m = copy.deepcopy(m0)
        rule = create_rule("ide", fast=fast, max_iter=60, tol=1e-12)
        m = rule.prepare(m)
        out = rule.step(m, x, y, F.cross_entropy)
        grads.append([p.grad for p in m.parameters() if p.grad is not None])
        stats.append(out.stats)
    ref, fast = grads
    assert len(ref) == len(fast) > 0
    num = sum(float((u - v).norm() ** 2) for u, v in zip(ref, fast)) ** 0.5
    den = sum(float(v.norm() ** 2) for v in ref) ** 0.5
    assert den > 0 and num / den < 1e-9
    assert float(stats[0]["solver/iters"]) == float(stats[1]["solver/iters"])


@pytest.mark.parametrize("kind", ["f64c5", "alexnet_f"])
def test_bf16_and_channels_last_simulations_stay_close_to_fp32(kind):
    """bf16 synapses round the currents (about 4e-3 relative): a neuron near its threshold may
    fire a step earlier or later, so the rates move a little, never much; BatchNorm folded into the
    bf16 convolutions must give the same currents as conv + BN (a wrong fold moves every rate)."""
    m, x = _model(kind, "lif")
    # measured on the CPU: bf16 moves the mean |rate difference| of a layer by at most 0.004;
    # folding BN with a bias 10% off moves it by 0.015-0.028
    for opts, bound in ((SimOptions("bf16"), 0.01), (SimOptions("fp32", channels_last=True), 0.002),
                        (SimOptions("bf16", channels_last=True), 0.01)):
        (a0, r0, rates0), (a1, r1, rates1) = _simulate_both(m, x, opts, train=False)
        assert a1.dtype == a0.dtype == torch.float32
        pairs = list(zip(rates0, rates1)) if rates0 is not None else [(a0, a1)]
        for u, v in pairs:
            assert float((u - v).abs().mean()) < bound, (opts, float((u - v).abs().mean()))
            assert float(u.mean()) > 0.02


def test_bn_fold_matches_conv_then_batchnorm():
    m, _ = _model("alexnet_f")
    m.eval()
    conv, bn = m.convs[1], m.bns[1]
    s = (torch.rand(4, *m.shapes[1]) < 0.4).float()
    with torch.no_grad():
        ref = F.batch_norm(conv(s), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        folded = SimOptions("bf16").conv_bn(conv, bn, None, reference=None)(s).float()
    assert float((folded - ref).abs().max()) < 0.03 * float(ref.abs().max())
    assert float((folded - ref).abs().max()) > 0  # it is the bf16 path


def test_fast_path_options_are_validated():
    with pytest.raises(ValueError, match="fast path"):
        create_rule("ide", fast=False, precision="bf16")
    with pytest.raises(Exception, match="precision"):
        create_rule("ide", precision="fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("kind", ["f400", "f64c5", "alexnet_f"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_simulation_equals_eager_fast_simulation(kind, precision):
    """The replayed graph computes exactly the eager fast path's kernels: bitwise equal, over
    batches with new data, new dropout masks and a changed feedback weight."""
    m, x = _model(kind, "lif", dropout=0.2)
    m = m.cuda()
    eager = create_rule("ide", precision=precision)
    graphed = create_rule("ide", precision=precision, cuda_graph=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for step in range(3):
        xb = (x + 0.1 * step).cuda()
        masks = m.sample_masks(xb.shape[-len(m.in_shape) - 1], gen)
        with torch.no_grad():
            m.feedback.g.add_(0.01)
            st = m.begin(xb, masks)
            a0, r0 = eager.simulate(m, st, None)
            rates0 = getattr(st, "rates", None)
            a1, r1 = graphed.simulate(m, st, None)
            rates1 = getattr(st, "rates", None)
        assert not graphed._graph_failed
        assert torch.equal(a0, a1)
        for key in r0.spikes:
            assert torch.equal(r0.spikes[key], r1.spikes[key])
        if rates0 is not None:
            for u, v in zip(rates0, rates1):
                assert torch.equal(u, v)
    assert len(graphed._graphs) == 1
