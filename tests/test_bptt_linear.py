"""BPTT linear in T: the reworked multistep paths (``unbind`` loops, the fused LIF autograd node,
its ``torch.compile``d steps, the CUDA-graph step) equal the previous implementations (a loop
indexing ``currents[t]``), forward and gradients to float rounding in float64."""

import itertools
import os

import pytest
import torch
import torch.nn.functional as F

import bioprop.models.feedforward as feedforward
import bioprop.neurons.psp as psp
from bioprop import create_model, create_rule
from bioprop.neurons import (
    NeuronParams,
    heaviside,
    lif_multistep,
    lif_multistep_fused,
    lif_step,
    relaxed,
    spike_fn,
    surrogate_derivative,
    surrogate_derivative_,
)
from bioprop.neurons.psp import lif_psp_step, strict_heaviside

D = torch.float64


def indexed_lif_multistep(currents, params, spike=heaviside, state=None):
    """The implementation before issue 25: one ``currents[t]`` index per step."""
    out = []
    for t in range(currents.shape[0]):
        s, state = lif_step(currents[t], state, params, spike)
        out.append(s)
    return torch.stack(out), state


def indexed_lif_psp_multistep(current, tau_m, tau_s, threshold=1.0, spike=strict_heaviside):
    us, dus, ss, as_ = [], [], [], []
    state = None
    for t in range(current.shape[0]):
        s, u, du, state = lif_psp_step(current[t], state, tau_m, tau_s, threshold, spike)
        us.append(u)
        dus.append(du)
        ss.append(s)
        as_.append(state.a)
    return psp.TSSLTrace(torch.stack(us), torch.stack(dus), torch.stack(ss), torch.stack(as_))


def _run_layer(fn, params, spike, with_state, expand):
    g = torch.Generator().manual_seed(1)
    if expand:  # a constant current, as the models' direct input encoding feeds it
        c = (1.5 * torch.randn(4, 5, generator=g, dtype=D)).requires_grad_()
        cur = c.expand(7, 4, 5)
    else:
        c = (1.5 * torch.randn(7, 4, 5, generator=g, dtype=D)).requires_grad_()
        cur = c
    s0 = torch.randn(4, 5, generator=g, dtype=D).requires_grad_() if with_state else None
    s, r = fn(cur, params, spike, s0)
    ws, wr = torch.randn(s.shape, generator=g, dtype=D), torch.randn(r.shape, generator=g, dtype=D)
    ((s * ws).sum() + (r * wr).sum()).backward()
    return s.detach(), r.detach(), c.grad, (s0.grad if with_state else None)


@pytest.mark.parametrize("reset,detach,surrogate", list(itertools.product(
    ["subtract", "zero"], [False, True], ["atan", "fast_sigmoid", "sigmoid", "heaviside"])))
@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_multistep_lif_equals_indexed_loop(reset, detach, surrogate, impl):
    params = NeuronParams(threshold=0.7, leak=0.8, reset=reset, detach_reset=detach)
    spike = heaviside if surrogate == "heaviside" else spike_fn(surrogate, 2.5)
    fn = lif_multistep if impl == "reference" else lif_multistep_fused
    for with_state, expand in [(False, False), (True, False), (False, True)]:
        want = _run_layer(indexed_lif_multistep, params, spike, with_state, expand)
        got = _run_layer(fn, params, spike, with_state, expand)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])  # spikes, state: bitwise
        assert 0 < want[0].mean() < 1  # the spikes matter
        for a, b in zip(got[2:], want[2:]):
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_fused_layer_uses_the_final_state_gradient_alone():
    params = NeuronParams(threshold=0.7, leak=0.8)
    for fn in (indexed_lif_multistep, lif_multistep_fused):
        c = torch.randn(6, 3, dtype=D, generator=torch.Generator().manual_seed(0)).requires_grad_()
        _, r = fn(c, params, spike_fn("atan"))
        r.sum().backward()
        if fn is indexed_lif_multistep:
            want = c.grad
    torch.testing.assert_close(c.grad, want, rtol=1e-12, atol=1e-13)


def _graph_nodes(t: torch.Tensor):
    seen, stack, names = set(), [t.grad_fn], []
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        names.append(type(f).__name__)
        stack.extend(n for n, _ in f.next_functions)
    return names


def test_multistep_graphs_have_no_per_step_index_of_the_whole_time_axis():
    """Indexing ``currents[t]`` puts a SelectBackward per step into the graph, whose backward
    allocates and fills a zero tensor of all T steps (O(T^2) traffic); the reworked paths must not."""
    c = torch.randn(5, 2, 3, dtype=D, requires_grad=True)
    spike = spike_fn("atan")
    assert "SelectBackward0" in _graph_nodes(indexed_lif_multistep(c, NeuronParams(), spike)[0])  # the check bites
    ref = _graph_nodes(lif_multistep(c, NeuronParams(), spike)[0])
    assert "SelectBackward0" not in ref and "UnbindBackward0" in ref
    fused = _graph_nodes(lif_multistep_fused(c, NeuronParams(), spike)[0])
    assert fused == ["_LIFMultistepBackward", "AccumulateGrad"]  # one node for all T steps
    a = psp.lif_psp_multistep(c, 5.0, 3.0, 1.0, spike_fn("sigmoid", 5.0)).a
    assert "SelectBackward0" not in _graph_nodes(a)


@pytest.mark.parametrize("name", ["atan", "fast_sigmoid", "sigmoid"])
def test_in_place_surrogate_derivative_equals_the_surrogate(name):
    x = torch.linspace(-3, 3, 201, dtype=D)
    torch.testing.assert_close(surrogate_derivative_(name, x.clone(), 3.1), surrogate_derivative(name, x, 3.1),
                               rtol=1e-14, atol=1e-15)


def _model(kind, **kw):
    torch.manual_seed(0)
    if kind == "mlp":
        m = create_model("spiking_mlp", in_shape=[6], hidden=[7, 5], num_classes=3, time_steps=6,
                         threshold=0.5, leak=0.8, dropout=0.2, **kw)
        x = torch.randn(4, 6, dtype=D)
    elif kind == "conv":
        m = create_model("spiking_convnet", in_shape=[1, 8, 8], channels=[3, 4], hidden=[6], num_classes=3,
                         time_steps=5, threshold=0.5, leak=0.5, **kw)
        x = torch.randn(4, 1, 8, 8, dtype=D)
    else:  # a time-first spike-train input
        m = create_model("spiking_convnet", in_shape=[1, 8, 8], channels=[3], hidden=[], num_classes=3,
                         time_steps=5, threshold=0.5, leak=0.5, pool="avg", **kw)
        x = (torch.rand(5, 4, 1, 8, 8, dtype=D, generator=torch.Generator().manual_seed(3)) < 0.4).to(D)
    m = m.double()
    for p in m.parameters():
        p.data.mul_(2.0)
    return m, x


def _grads(m, x, seed=5):
    m.zero_grad()
    torch.manual_seed(seed)  # the same dropout masks
    logits, rec = m.run(x)
    F.cross_entropy(logits, torch.arange(x.shape[-4 if x.dim() == 5 else 0]) % 3).backward()
    return logits.detach(), rec.stats(), {k: p.grad.clone() for k, p in m.named_parameters()}


@pytest.mark.parametrize("kind", ["mlp", "conv", "timed"])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_spiking_feedforward_models_equal_the_indexed_loop(kind, reset, monkeypatch):
    m, x = _model(kind, reset=reset)
    m.train()
    m.lif_impl = "reference"
    with monkeypatch.context() as mp:
        mp.setattr(feedforward, "lif_multistep", indexed_lif_multistep)
        want = _grads(m, x)
    for impl in ("reference", "fused"):
        m.lif_impl = impl
        got = _grads(m, x)
        assert torch.equal(got[0], want[0])  # the same spikes, so bitwise the same logits
        assert got[1].keys() == want[1].keys() and all(torch.equal(got[1][k], want[1][k]) for k in want[1])
        assert set(got[2]) == set(want[2])
        for k in want[2]:
            torch.testing.assert_close(got[2][k], want[2][k], rtol=1e-10, atol=1e-12, msg=k)
        assert any(want[2][k].abs().sum() > 0 for k in want[2] if k.startswith("layers.0"))


def test_lif_impl_is_a_config_key_and_rejects_unknown_values():
    m = create_model("spiking_mlp", in_shape=[4], hidden=[3], lif_impl="reference")
    assert m.lif_impl == "reference"
    with pytest.raises(ValueError, match="lif_impl"):
        create_model("spiking_convnet", lif_impl="cuda")


def test_relaxed_spike_takes_the_reference_loop():
    c = torch.randn(4, 3, dtype=D, requires_grad=True)
    s, _ = lif_multistep_fused(c, NeuronParams(), relaxed("atan"))
    assert "_LIFMultistepBackward" not in _graph_nodes(s)
    assert not torch.equal(s, (s > 0.5).to(D))  # smooth


@pytest.mark.parametrize("arch", ["6-5", "3C3-P2-4"])
def test_tssl_net_bptt_equals_the_indexed_loop(arch, monkeypatch):
    torch.manual_seed(0)
    m = create_model("tssl_fmnist_mlp", arch=arch, in_shape=[1, 8, 8], time_steps=6).double()
    x = 3 * torch.rand(3, 1, 8, 8, dtype=D)
    y = torch.tensor([0, 1, 2])
    with monkeypatch.context() as mp:
        mp.setattr("bioprop.models.tssl_nets.lif_psp_multistep", indexed_lif_psp_multistep)
        want = _grads_tssl(m, x, y)
    got = _grads_tssl(m, x, y)
    assert torch.equal(got[0], want[0])
    for k in want[1]:
        torch.testing.assert_close(got[1][k], want[1][k], rtol=1e-10, atol=1e-12, msg=k)
    assert all(g.abs().sum() > 0 for g in want[1].values())


def _grads_tssl(m, x, y):
    m.zero_grad()
    logits, _ = m.run(x)
    F.cross_entropy(logits, y).backward()
    return logits.detach(), {k: p.grad.clone() for k, p in m.named_parameters()}


def _compile_works() -> bool:
    if not hasattr(torch, "compile"):
        return False
    return torch.cuda.is_available() or os.environ.get("BIOPROP_TEST_COMPILE") == "1"


@pytest.mark.skipif(not _compile_works(), reason="torch.compile of the LIF steps takes about a minute on a "
                    "CPU (a C++ build): set BIOPROP_TEST_COMPILE=1 to run it (runs by default with CUDA)")
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_compiled_lif_steps_equal_eager(reset):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    params = NeuronParams(threshold=0.7, leak=0.8, reset=reset)
    out = []
    for compiled in (False, True):
        g = torch.Generator().manual_seed(1)
        c = (1.5 * torch.randn(6, 4, 5, generator=g, dtype=D)).to(dev).requires_grad_()
        try:
            s, r = lif_multistep_fused(c, params, spike_fn("atan"), compiled=compiled)
            (s * torch.arange(s.numel(), device=dev, dtype=D).view(s.shape).sin()).sum().add(r.sum()).backward()
        except Exception as e:  # no compiler toolchain: skip, do not fail
            if compiled:
                pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {e}")
            raise
        out.append((s.detach(), r.detach(), c.grad))
    assert torch.equal(out[0][0], out[1][0])
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(out[1][2], out[0][2], rtol=1e-12, atol=1e-13)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_bptt_cuda_graph_step_equals_eager_step():
    """float64 (no TF32): the graphed and eager bptt steps agree to rounding over several Adam
    steps and two batch shapes (BatchNorm in training mode, its running statistics compared too)."""
    results = []
    for graph in (False, True):
        torch.manual_seed(0)
        model = create_model("spiking_convnet", in_shape=[1, 12, 12], channels=[4, 4], hidden=[8],
                             time_steps=4, dropout=0.0).cuda().double()
        rule = create_rule("bptt", cuda_graph=graph)
        model = rule.prepare(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)
        trace = []
        for b in (8, 8, 5, 8, 5):
            x = torch.randn(b, 1, 12, 12, generator=g, dtype=D).cuda()
            y = torch.randint(0, 10, (b,), generator=g).cuda()
            opt.zero_grad(set_to_none=True)
            out = rule.step(model, x, y, F.cross_entropy)
            trace.append((out.loss.clone(), out.logits.clone(), out.stats["rate/lif1"].clone()))
            opt.step()
        assert not rule._graph_failed
        results.append((trace, [t.detach().clone() for t in list(model.parameters()) + list(model.buffers())]))
    (t0, p0), (t1, p1) = results
    for a, b in zip(t0, t1):
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-12)
    for u, v in zip(p0, p1):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-12)
