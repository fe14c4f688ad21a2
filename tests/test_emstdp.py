"""EMSTDP: the neurons, the two phases, the feedback modes, the gate, the update and its sign,
the reference optimizer, batching, bad input, and a short training run."""

import math

import pytest
import torch

from bioprop.models import ProtocolError, create_model
from bioprop.models.emstdp import reference_thresholds
from bioprop.neurons import bernoulli_code, if_zero_step, ternary_step
from bioprop.rules import create_rule
from bioprop.rules.emstdp import EMSTDPRMSprop, emstdp_run, reference_error_thresholds


def _net(sizes, thresholds, weights, time_steps, dtype=torch.float64):
    m = create_model("emstdp_mlp", in_shape=(sizes[0],), hidden=sizes[1:-1], num_classes=sizes[-1],
                     thresholds=thresholds, time_steps=time_steps).to(dtype)
    with torch.no_grad():
        for lin, w in zip(m.weight_layers(), weights):
            lin.weight.copy_(torch.as_tensor(w, dtype=dtype))
    return m


# -- neurons ---------------------------------------------------------------------------------

def test_if_zero_and_ternary_neurons():
    s, v = if_zero_step(torch.tensor([0.5, 1.0, 2.5]), torch.tensor([0.4, 0.0, -1.0]), 1.0)
    assert s.tolist() == [0.0, 1.0, 1.0] and v.tolist() == pytest.approx([0.9, 0.0, 0.0])  # fires at v >= theta, resets to 0
    e, a = ternary_step(torch.tensor([0.3, 0.3, -0.3, 0.0]), torch.tensor([0.2, -0.6, -0.2, 0.1]), 0.5)
    assert e.tolist() == [1.0, 0.0, -1.0, 0.0]
    assert a.tolist() == pytest.approx([0.0, -0.3, 0.0, 0.1])


def test_bernoulli_code_shared_and_independent():
    x = torch.linspace(0, 1, 50).expand(3, 50)
    g = torch.Generator().manual_seed(0)
    s = bernoulli_code(x, 200, "shared", g)
    # one random number per step for all pixels and samples: a brighter pixel spikes whenever a dimmer one does
    assert torch.all(s[:, :, 1:] >= s[:, :, :-1]) and torch.equal(s[:, 0], s[:, 1])
    si = bernoulli_code(x, 200, "independent", g)
    assert not torch.all(si[:, :, 1:] >= si[:, :, :-1]) and not torch.equal(si[:, 0], si[:, 1])
    assert s[:, :, 0].sum() == 0 and s[:, :, -1].sum() == 600  # intensity 0 never, 1 always spikes
    assert abs(float(si[:, :, 25].mean()) - float(x[0, 25])) < 0.1


def test_reference_thresholds():
    assert reference_thresholds([784, 100, 10]) == pytest.approx([6.0622, 0.8660], abs=1e-4)
    assert reference_error_thresholds([784, 100, 10], "symmetric") == pytest.approx([0.21651], abs=1e-5)
    assert reference_error_thresholds([784, 100, 10], "fa") == pytest.approx([10 * math.sqrt(0.3) / 8])


# -- one sample by hand ----------------------------------------------------------------------

def test_one_sample_by_hand():
    """1 - 1 - 2 network, input spiking every step, T = 8, phase 2 from t = 4, windows of 3 steps,
    label 1, eps = 1, hidden error threshold 0.5, thresholds 1. Worked out step by step:

    t  v1 (after reset)  s1  v2 out (after reset, after injection)  s2    e_out     e_h  (acc_h)
    1  0.6               0   [0, 0]                                 [0,0]
    2  1.2 -> 0          1   [0, 0]                                 [0,0]
    3  0.6               0   [1, .5] -> [0, .5]                     [1,0]
    4  1.2 -> 0          1   [0, .5]                                [0,0]  [-1,+1]   0    (0)      gate = [s1 spiked at t 1..2] = 1
    5  0.6 (+ 0)         0   [1, 1] -> [0, 0] + [-1, +1]            [1,1]  [0,+1]    -1   (-0.5 = [-1,1].W2)
    6  1.2 -> 0, -1      1   [-1, 1] -> [-1, 0] + [0, +1]           [0,1]  [-1, 0]   +1   (+0.5 = [0,1].W2)
    7  -0.4, +1 -> 0.6   0   [0, 1.5] -> [0, 0] + [-1, 0]           [0,1]  [0, 0]    -1   (-1 = [-1,0].W2)

    Windows: phase 1 = steps 2..4, phase 2 = steps 5..7. Layer 1: pre 3, post 2 -> 1, g = 3 (1 - 2) / 3 = -1.
    Layer 2: pre 2, out0 1 -> 1, out1 0 -> 3: g = [0, 2 * 3 / 3] = [0, 2]. ``.grad = -g``.
    """
    m = _net([1, 1, 2], [1.0, 1.0], [[[0.6]], [[1.0], [0.5]]], 8)
    rule = create_rule("emstdp", phase1=4, window=3, epsilon=1.0, error_thresholds=[0.5], compare_every=0)
    rule.prepare(m)
    r = rule.run(m, torch.ones(8, 1, 1, dtype=torch.float64), torch.tensor([1]))
    assert r.spikes[1][:, 0, 0].tolist() == [0, 0, 1, 0, 1, 0, 1, 0]
    assert r.spikes[2][:, 0].t().tolist() == [[0, 0, 0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1]]
    assert r.errors[1][:, 0].t().tolist() == [[0, 0, 0, 0, -1, 0, -1, 0], [0, 0, 0, 0, 1, 1, 0, 0]]
    assert r.errors[0][:, 0, 0].tolist() == [0, 0, 0, 0, 0, -1, 1, -1]
    assert r.updates[0].tolist() == [[-1.0]] and r.updates[1].tolist() == [[0.0], [2.0]]
    # the step writes -g into .grad, so that SGD moves W by +lr g (the reference's W += lr g)
    m.encode = lambda x, generator=None: torch.ones(8, 1, 1, dtype=torch.float64)  # the same input train
    w2 = m.layers[1].weight.detach().clone()
    rule.step(m, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([1]), None)
    assert m.layers[0].weight.grad.tolist() == [[1.0]] and m.layers[1].weight.grad.tolist() == [[0.0], [-2.0]]
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    assert torch.allclose(m.layers[1].weight, w2 + 0.1 * torch.tensor([[0.0], [2.0]], dtype=torch.float64))


# -- an independent step-by-step simulation (the reference's array formulation) --------------

def _loop_reference(x, ws, thr, ethr, y, eps, feedback, fbs, gate, P, w):
    """Per-step arrays U[t], S[t] as in EMSTDP_algo.Train (rel=0, delt=5), one sample at a time,
    in plain Python loops over neurons; ``ws[l]`` is ``[in, out]`` here (the reference's layout)."""
    T, L = len(x), len(ws)
    n = [len(ws[0])] + [len(wl[0]) for wl in ws]
    U = [[[0.0] * n[l + 1] for _ in range(T)] for l in range(L)]
    S = [[[0.0] * n[l + 1] for _ in range(T)] for l in range(L)]
    D = [[[0.0] * n[l + 1] for _ in range(T)] for l in range(L)]
    E = [[[0.0] * n[l + 1] for _ in range(T)] for l in range(L)]
    for t in range(1, T):
        for l in range(L):
            below = x[t - 1] if l == 0 else S[l - 1][t - 1]
            for j in range(n[l + 1]):
                u = U[l][t - 1][j] + sum(below[i] * ws[l][i][j] for i in range(n[l]))
                S[l][t][j] = 1.0 if u >= thr[l] else 0.0
                U[l][t][j] = 0.0 if S[l][t][j] else u
        if t > P - 1:
            o = L - 1
            for k in range(n[L]):
                D[o][t][k] = D[o][t - 1][k] + (1.0 if k == y and S[o][t - 1][k] < 1 else 0.0) \
                    - (1.0 if k != y and S[o][t - 1][k] >= 1 else 0.0)
                if D[o][t][k] >= eps:
                    E[o][t][k], D[o][t][k] = 1.0, 0.0
                elif D[o][t][k] <= -eps:
                    E[o][t][k], D[o][t][k] = -1.0, 0.0
                U[o][t][k] += thr[o] * E[o][t - 1][k]
            for l in range(L - 2, -1, -1):
                src = L - 1 if feedback == "dfa" else l + 1
                mat = ws[l + 1] if feedback == "symmetric" else fbs[l]  # [n_l, n_src]
                for j in range(n[l + 1]):
                    D[l][t][j] = D[l][t - 1][j] + sum(E[src][t - 1][k] * mat[j][k] for k in range(n[src + 1]))
                    if D[l][t][j] >= ethr[l]:
                        E[l][t][j], D[l][t][j] = 1.0, 0.0
                    elif D[l][t][j] <= -ethr[l]:
                        E[l][t][j], D[l][t][j] = -1.0, 0.0
                    if gate and sum(S[l][tt][j] for tt in range(0, P - 1)) == 0:
                        E[l][t][j] = 0.0
                    U[l][t][j] += thr[l] * E[l][t - 1][j]
    g = []
    for l in range(L):
        pre = [x if l == 0 else S[l - 1]][0]
        pre1 = [sum(pre[t][i] for t in range(T - 2 * w, T - w)) for i in range(n[l])]
        d = [sum(S[l][t][j] for t in range(T - w, T)) - sum(S[l][t][j] for t in range(T - 2 * w, T - w))
             for j in range(n[l + 1])]
        g.append([[d[j] * pre1[i] / w for i in range(n[l])] for j in range(n[l + 1])])
    return S, E, g


@pytest.mark.parametrize("feedback", ["symmetric", "fa", "dfa"])
def test_matches_step_by_step_loop(feedback):
    torch.manual_seed(3)
    sizes, T, P, w = [6, 5, 4, 3], 24, 12, 11
    m = create_model("emstdp_mlp", in_shape=(6,), hidden=[5, 4], num_classes=3, time_steps=T,
                     thresholds=[0.9, 0.7, 0.5]).double()
    with torch.no_grad():
        for lin in m.weight_layers():
            lin.weight.normal_(0.2, 0.5)
    rule = create_rule("emstdp", feedback=feedback, epsilon=2.0, error_thresholds=[0.3, 0.25], compare_every=0)
    rule.seed(1)
    rule.prepare(m)
    x = torch.rand(T, 1, 6, dtype=torch.float64).lt(0.6).double()
    y = 2
    r = rule.run(m, x, torch.tensor([y]))
    ws = [lin.weight.t().tolist() for lin in m.weight_layers()]
    fbs = [None if b is None else b.t().tolist() for b in rule.feedback_weights]
    S, E, g = _loop_reference(x[:, 0].tolist(), ws, m.thresholds, rule.error_thresholds, y, 2.0, feedback, fbs,
                              rule.gate_on(), P, w)
    for l in range(3):
        assert r.spikes[l + 1][:, 0].tolist() == S[l]
        assert r.errors[l][:, 0].tolist() == E[l]
        assert torch.allclose(r.updates[l], torch.tensor(g[l], dtype=torch.float64), atol=1e-12)
    assert sum(abs(v) for row in E[0] for v in row) > 0  # the errors reach the lowest layer: the case is non-trivial


# -- feedback modes and the gate, each where it changes the result -----------------------------

def _deep_case(feedback, gate=None, seed=0):
    torch.manual_seed(seed)
    m = create_model("emstdp_mlp", in_shape=(20,), hidden=[16, 12], num_classes=4, time_steps=40,
                     thresholds=[1.0, 1.0, 0.8]).double()
    with torch.no_grad():
        for lin in m.weight_layers():
            lin.weight.normal_(0.1, 0.4)
    rule = create_rule("emstdp", feedback=feedback, gate=gate, error_thresholds=[0.3, 0.3], compare_every=0)
    rule.seed(5)
    rule.prepare(m)
    x = torch.rand(40, 3, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64).lt(0.5).double()
    return m, rule, x, torch.tensor([0, 1, 3])


def test_fa_with_transposed_weights_is_symmetric_and_random_fa_differs():
    m, rule, x, y = _deep_case("fa")
    r_fa = rule.run(m, x, y)
    _, sym, _, _ = _deep_case("symmetric")
    r_sym = sym.run(m, x, y)
    assert not torch.equal(r_fa.errors[0], r_sym.errors[0]) and not torch.allclose(r_fa.updates[0], r_sym.updates[0])
    rule.feedback_weights = [m.layers[1].weight.detach().clone(), m.layers[2].weight.detach().clone()]
    rule.error_thresholds = list(sym.error_thresholds)
    r = rule.run(m, x, y)
    assert all(torch.equal(a, b) for a, b in zip(r.errors, r_sym.errors))
    assert all(torch.equal(a, b) for a, b in zip(r.updates, r_sym.updates))


def test_dfa_feeds_every_hidden_layer_from_the_output():
    m, fa, x, y = _deep_case("fa", gate=False)
    _, dfa, _, _ = _deep_case("dfa", gate=False)
    assert dfa.feedback_weights[0].shape == (4, 16) and fa.feedback_weights[0].shape == (12, 16)
    # silence the top hidden layer's error neurons: under FA the layer below gets nothing, under DFA it still does
    for rule in (fa, dfa):
        rule.feedback_weights[1] = torch.zeros_like(rule.feedback_weights[1])
    r_fa, r_dfa = fa.run(m, x, y), dfa.run(m, x, y)
    assert r_fa.errors[0].abs().sum() == 0 and r_dfa.errors[1].abs().sum() == 0
    assert r_dfa.errors[0].abs().sum() > 0
    assert not torch.allclose(r_fa.updates[0], r_dfa.updates[0])


def test_gate_blocks_errors_of_neurons_silent_in_phase1():
    m, on, x, y = _deep_case("symmetric", gate=True)
    _, off, _, _ = _deep_case("symmetric", gate=False)
    with torch.no_grad():  # silence hidden neurons 0..5 of layer 1 in phase 1 (strongly negative input weights)
        m.layers[0].weight[:6] = -1.0
    r_on, r_off = on.run(m, x, y), off.run(m, x, y)
    silent = r_on.spikes[1][1:19].sum((0, 1)) == 0  # gate window: steps 1 .. phase1 - 2 (phase1 = T // 2 = 20)
    assert silent[:6].all()
    assert r_on.errors[0][:, :, silent].abs().sum() == 0
    assert r_off.errors[0][:, :, silent].abs().sum() > 0
    assert not torch.allclose(r_on.updates[0], r_off.updates[0])
    assert on.gate_on() and not create_rule("emstdp", feedback="dfa").gate_on()


# -- batching ----------------------------------------------------------------------------------

@pytest.mark.parametrize("feedback", ["symmetric", "dfa"])
def test_batch_equals_loop_over_samples(feedback):
    m, rule, x, y = _deep_case(feedback)
    r = rule.run(m, x, y)
    singles = [rule.run(m, x[:, b:b + 1], y[b:b + 1]) for b in range(3)]
    for l in range(3):
        assert torch.equal(r.spikes[l + 1], torch.cat([s.spikes[l + 1] for s in singles], 1))
        assert torch.equal(r.errors[l], torch.cat([s.errors[l] for s in singles], 1))
        assert torch.allclose(r.updates[l], sum(s.updates[l] for s in singles) / 3, atol=1e-12)


# -- optimizer, clip, diagnostics ---------------------------------------------------------------

def test_reference_rmsprop_and_clip():
    p = torch.nn.Parameter(torch.tensor([0.5, -0.2]))
    opt = EMSTDPRMSprop([p], lr=0.1)
    g = torch.tensor([2.0, -0.5])  # the reference's g; .grad = -g
    p.grad = -g
    opt.step()
    m = 0.9 * 1.0 + 0.1 * g ** 2
    assert torch.allclose(p.detach(), torch.tensor([0.5, -0.2]) + 0.1 * g / torch.sqrt(m + 1e-8))
    m2, r = _deep_case("symmetric")[:2]
    with torch.no_grad():
        m2.layers[0].weight.mul_(10)
    r.after_step(m2)
    assert m2.layers[0].weight.abs().max() == 1.0


def test_step_stats_and_angle_have_no_side_effect():
    m, rule, x, y = _deep_case("symmetric")
    m.encode = lambda xx, generator=None: x
    out = rule.step(m, torch.zeros(3, 20, dtype=torch.float64), y, None)
    grads = [lin.weight.grad.clone() for lin in m.weight_layers()]
    angles = rule.bp_angles(m, x, y)
    assert all(torch.equal(g, lin.weight.grad) for g, lin in zip(grads, m.weight_layers()))
    assert all(0 <= float(a) <= 180 for a in angles)
    for k in ("emstdp/spikes_p1/0", "emstdp/spikes_p2/3", "emstdp/err_rate/1", "emstdp/err_rate/3"):
        assert k in out.stats
    assert out.logits.shape == (3, 4)


# -- bad input -----------------------------------------------------------------------------------

def test_bad_input_errors():
    with pytest.raises(ProtocolError, match="LayeredIFModel.*registered models that do: emstdp_mlp"):
        create_rule("emstdp").prepare(create_model("mlp", hidden=[8]))
    with pytest.raises(ValueError, match="epsilon"):
        create_rule("emstdp", epsilon=0.0)
    m = create_model("emstdp_mlp", hidden=[8], time_steps=20)
    with pytest.raises(ValueError, match="phase1"):
        create_rule("emstdp", phase1=20).prepare(m)
    with pytest.raises(ValueError, match="phase1"):
        create_rule("emstdp", phase1=1).prepare(m)
    with pytest.raises(ValueError, match="window"):
        create_rule("emstdp", window=10).prepare(m)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match="error_thresholds"):
        create_rule("emstdp", error_thresholds=[0.1, 0.2]).prepare(m)


def test_conv_frontend_is_frozen_and_trains_the_head():
    m = create_model("emstdp_mlp", hidden=[16], frontend="conv", conv_channels=[4, 8], time_steps=12)
    rule = create_rule("emstdp", compare_every=1)
    rule.prepare(m)
    assert m.sizes[0] == 8 * 7 * 7 and all(not p.requires_grad for p in m.frontend.parameters())
    out = rule.step(m, torch.rand(2, 1, 28, 28), torch.tensor([0, 1]), None)
    assert all(p.grad is None for p in m.frontend.parameters())
    assert all(lin.weight.grad is not None for lin in m.weight_layers()) and "emstdp/angle/2" in out.stats


def test_trainer_runs_emstdp(tmp_path):
    from bioprop.train import RunConfig, Trainer

    cfg = RunConfig.from_dict({
        "model": {"name": "emstdp_mlp", "hidden": [32], "time_steps": 20},
        "rule": {"name": "emstdp", "feedback": "fa"},
        "data": {"name": "mnist_embedded", "train_limit": 40, "batch_size": 10, "normalize": False},
        "optim": {"name": "adam", "lr": 1e-3, "betas": [0.0, 0.9]},
        "train": {"epochs": 1, "device": "cpu", "out_dir": str(tmp_path), "progress": False,
                  "max_steps_per_epoch": 3},
    })
    t = Trainer(cfg, log=lambda *a, **k: None)
    w0 = t.model.layers[0].weight.detach().clone()
    res = t.fit()
    assert not torch.equal(w0, t.model.layers[0].weight)
    assert "train/emstdp/err_rate/2" in t.history[-1] and res is not None


def test_gate_window_is_steps_1_to_phase1_minus_2():
    """The reference's gate is ``sum(spikes[0:twin]) > 0`` with ``twin = phase1 - 1``: a hidden neuron
    whose first spike comes at step ``phase1 - 1`` is gated off. Here it first fires at t = 3 (0.34 x 3)."""
    m = _net([1, 1, 2], [1.0, 1.0], [[[0.34]], [[1.0], [0.5]]], 12)
    x = torch.ones(12, 1, 1, dtype=torch.float64)
    runs = {}
    for p1, gate in ((4, True), (4, False), (5, True)):
        rule = create_rule("emstdp", phase1=p1, window=5, epsilon=1.0, error_thresholds=[0.5], gate=gate,
                           compare_every=0)
        rule.prepare(m)
        runs[p1, gate] = rule.run(m, x, torch.tensor([1]))
    assert runs[4, True].spikes[1][:4, 0, 0].tolist() == [0, 0, 0, 1]
    assert runs[4, True].errors[0].abs().sum() == 0
    assert runs[4, False].errors[0].abs().sum() > 0 and runs[5, True].errors[0].abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    m, rule, x, y = _deep_case("fa")
    r = rule.run(m, x, y)
    m.cuda()
    rule.prepare(m)
    rule.feedback_weights = [b.cuda() for b in _deep_case("fa")[1].feedback_weights]
    rc = rule.run(m, x.cuda(), y.cuda())
    assert all(torch.equal(a, b.cpu()) for a, b in zip(r.spikes, rc.spikes))
    assert all(torch.allclose(a, b.cpu(), atol=1e-10) for a, b in zip(r.updates, rc.updates))
