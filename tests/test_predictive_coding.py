"""Predictive coding against exact BP: FixedPred(1, L) and Exact are BP; eta < 1 converges
geometrically; Strict approaches BP as the output error shrinks; Strict's energy decreases."""

import pytest
import torch
import torch.nn.functional as F

from bioprop import create_model, create_rule
from bioprop.models import blocks_of
from bioprop.rules.predictive_coding import pc_errors

D = torch.float64


def _model(kind, dtype=torch.float64):
    torch.manual_seed(0)
    if kind == "mlp":
        m = create_model("mlp", in_shape=[1, 6, 6], hidden=[12, 10, 8], num_classes=4)
        x = torch.randn(16, 1, 6, 6)
    else:
        m = create_model("pc_cnn")
        x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, 4, (16,))
    return m.to(dtype), x.to(dtype), y


def _bp(m, x, y, loss_fn=F.cross_entropy):
    params = list(m.parameters())
    return torch.autograd.grad(loss_fn(m(x), y), params)


def _pc(m, x, y, loss_fn=F.cross_entropy, **kw):
    blocks = blocks_of(m)
    r = pc_errors(blocks, x, y, loss_fn, **kw)
    return torch.autograd.grad(r.outputs, list(m.parameters()), r.eps), r


def _relerr(a, b):
    return max(float((u - v).norm() / v.norm()) for u, v in zip(a, b))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_fixed_pred_eta1_n_depth_is_exact_bp(kind):
    m, x, y = _model(kind)
    L = len(blocks_of(m))
    for n in (L, L + 3):
        g, r = _pc(m, x, y, variant="fixed_pred", eta=1.0, n=n)
        assert _relerr(g, _bp(m, x, y)) < 1e-10
        assert r.vjps == L - 1  # one input VJP per block: zero errors and settled errors are skipped
    g, _ = _pc(m, x, y, variant="fixed_pred", eta=1.0, n=L - 1)
    assert _relerr(g, _bp(m, x, y)) > 1e-3  # one sweep short: the first block's error is still zero


def test_fixed_pred_float32_stays_within_1e5_of_bp_on_the_cnn():
    m, x, y = _model("cnn", torch.float32)
    g, _ = _pc(m, x, y, variant="fixed_pred", eta=1.0)
    assert _relerr(g, _bp(m, x, y)) < 1e-5


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_exact_is_bp(kind):
    m, x, y = _model(kind)
    g, _ = _pc(m, x, y, variant="exact")
    assert _relerr(g, _bp(m, x, y)) < 1e-10


def test_small_eta_error_to_bp_falls_geometrically():
    m, x, y = _model("mlp")
    bp = _bp(m, x, y)
    errs = [_relerr(_pc(m, x, y, variant="fixed_pred", eta=0.5, n=n)[0], bp) for n in (10, 20, 30, 40)]
    assert all(b < a for a, b in zip(errs, errs[1:]))
    ratios = [b / a for a, b in zip(errs, errs[1:])]
    assert max(ratios) < 0.2 and errs[-1] < 1e-5


def test_strict_approaches_bp_as_output_error_shrinks():
    m, x, y = _model("mlp")
    errs = []
    for scale in (1.0, 1e-2, 1e-4):
        loss_fn = lambda o, t, s=scale: s * F.cross_entropy(o, t)  # noqa: E731
        g, _ = _pc(m, x, y, loss_fn, variant="strict", eta=0.2, n=300)
        errs.append(_relerr(g, _bp(m, x, y, loss_fn)))
    assert errs[2] < errs[1] < errs[0] and errs[2] < 1e-3


def test_strict_energy_decreases_monotonically_with_small_eta():
    m, x, y = _model("cnn")
    _, r = _pc(m, x, y, variant="strict", eta=0.05, n=30)
    e = r.energies
    assert len(e) == 31 and all(b <= a + 1e-12 for a, b in zip(e, e[1:])) and e[-1] < e[0]


def test_rule_fills_grad_and_compares_with_bp():
    m, x, y = _model("cnn", torch.float32)
    rule = create_rule("pc", compare_every=1)
    m = rule.prepare(m)
    m.zero_grad()
    out = rule.step(m, x, y, F.cross_entropy)
    bp = _bp(m, x, y)
    assert _relerr([p.grad for p in m.parameters()], bp) < 1e-5
    for l in range(1, 6):
        assert out.stats[f"pc/angle/{l}"] < 0.1 and out.stats[f"pc/relerr/{l}"] < 1e-5
    assert out.stats["pc/vjps"] == 4.0
    strict = create_rule("pc", variant="strict", eta=0.1, n=20, compare_every=1)
    m.zero_grad()
    out = strict.step(m, x, y, F.cross_entropy)
    assert out.stats["pc/angle/1"] > 1.0  # Strict(0.1, 20) is an approximation


def test_pc_rejects_models_without_blocks_and_bad_settings():
    with pytest.raises(TypeError, match="block sequence"):
        create_rule("pc").prepare(torch.nn.Linear(3, 2))
    m, x, y = _model("mlp")
    with pytest.raises(ValueError, match="eta"):
        pc_errors(blocks_of(m), x, y, F.cross_entropy, eta=0.0)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("variant,n", [("fixed_pred", 1), ("fixed_pred", 2), ("fixed_pred", None),
                                       ("fixed_pred", 9), ("exact", None)])
def test_fast_chain_path_equals_the_general_sweeps(kind, variant, n):
    """One VJP per block (input and parameters together) gives the same updates as the sweep loop
    plus a second pass, also when the front stops above the first block (n < L: zero updates there)."""
    grads = {}
    for fast in (True, False):
        m, x, y = _model(kind)
        rule = create_rule("pc", variant=variant, eta=1.0, n=n, fast=fast)
        m = rule.prepare(m)
        out = rule.step(m, x, y, F.cross_entropy)
        grads[fast] = [p.grad for p in m.parameters()], out.stats
    for a, b in zip(grads[True][0], grads[False][0]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    if n == 1:  # only the top block has an error after one sweep
        assert float(grads[True][0][0].abs().max()) == 0.0
    for k in ("pc/energy", "pc/err_norm/1"):
        torch.testing.assert_close(grads[True][1][k], grads[False][1][k], rtol=1e-12, atol=1e-14)


def test_bad_inference_settings_are_rejected():
    with pytest.raises(ValueError, match="n >= 1"):
        create_rule("pc", n=0)
    with pytest.raises(ValueError, match="eta > 0"):
        create_rule("pc", eta=0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("variant,eta,n", [("strict", 0.1, 20), ("fixed_pred", 1.0, None), ("fixed_pred", 0.1, 20)])
def test_cuda_graph_step_equals_eager_step(variant, eta, n):
    """The captured step, replayed over several optimizer steps and two batch shapes, gives the
    eager step's gradients (the parameters are read in place after each update)."""
    runs = {}
    for graph in (True, False):
        torch.manual_seed(0)
        m = create_model("pc_cnn").cuda().double()  # float64: no TF32, so any difference is a bug
        rule = create_rule("pc", variant=variant, eta=eta, n=n, cuda_graph=graph)
        m = rule.prepare(m)
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(1)
        seen = []
        for i in range(4):
            b = 32 if i < 3 else 20
            x = torch.randn(b, 1, 28, 28, generator=g, dtype=torch.float64).cuda()
            y = torch.randint(0, 10, (b,), generator=g).cuda()
            opt.zero_grad(set_to_none=True)
            out = rule.step(m, x, y, F.cross_entropy)
            seen.append([p.grad.clone() for p in m.parameters()] + [out.loss.clone(), out.stats["pc/energy"].clone()])
            opt.step()
        runs[graph] = seen
        if graph:
            assert len(rule._graphed.graphs) == 2
    for a_step, b_step in zip(runs[True], runs[False]):
        for a, b in zip(a_step, b_step):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("strict_errors", ["final", "torch2pc"])
def test_strict_sweeps_by_hand_two_block_linear(strict_errors):
    """Strict on f2(f1(x)) = W2 W1 x with L = 1/2 ||out - y||^2, n = 3 Jacobi sweeps of step eta,
    written out by hand: e1 = W1 x - v1, e2 = W2 v1 - y, v1 += eta (e1 - e2 W2). ``final`` updates
    with the errors at the last beliefs; ``torch2pc`` with the last sweep's (stale) errors and the
    Jacobian at the last beliefs (dW2 = e2^T v1_final)."""
    g = torch.Generator().manual_seed(3)
    W1, W2 = torch.randn(4, 3, generator=g, dtype=D), torch.randn(2, 4, generator=g, dtype=D)
    x, y = torch.randn(5, 3, generator=g, dtype=D), torch.randn(5, 2, generator=g, dtype=D)
    eta, n = 0.3, 3
    v1 = x @ W1.T
    for _ in range(n):
        e1, e2 = x @ W1.T - v1, v1 @ W2.T - y
        v1 = v1 + eta * (e1 - e2 @ W2)
    if strict_errors == "final":
        e1, e2 = x @ W1.T - v1, v1 @ W2.T - y
    want = [e1.T @ x, e2.T @ v1]

    m = torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), torch.nn.Linear(4, 2, bias=False)).to(D)
    with torch.no_grad():
        m[0].weight.copy_(W1)
        m[1].weight.copy_(W2)
    loss_fn = lambda out, t: 0.5 * ((out - t) ** 2).sum()  # noqa: E731
    got, _ = _pc(m, x, y, loss_fn, variant="strict", eta=eta, n=n, strict_errors=strict_errors)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # the rule passes the option through
    rule = create_rule("pc", variant="strict", eta=eta, n=n, strict_errors=strict_errors)
    rule.step(m, x, y, loss_fn)
    for p, b in zip(m.parameters(), want):
        torch.testing.assert_close(p.grad, b, rtol=1e-12, atol=1e-12)
