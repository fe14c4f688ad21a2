"""Two Routes rules: FA with B = W is BP; each regulariser drives B to its fixed point; the
conversion keeps the forward pass; angle metrics; KP under BPTT trains a spiking net."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bioprop import create_model, create_rule
from bioprop.metrics import angle_degrees
from bioprop.rules.alignment import (FBConv2d, FBLinear, convert_layers, fb_layers, regularizer, regularizer_curvature,
                                     regularizer_grad)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 5)).double()


def test_conversion_keeps_forward_and_fa_with_b_equal_w_is_bp():
    m = _net()
    x = torch.randn(7, 2, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (7,))
    out_ref = m(x)
    bp = torch.autograd.grad(F.cross_entropy(out_ref, y), list(m.parameters()))
    rule = create_rule("fa")
    m = rule.prepare(m)
    assert sum(1 for _ in fb_layers(m)) == 3
    assert torch.equal(m(x), out_ref)
    with torch.no_grad():
        for _, l in fb_layers(m):
            l.weight_b.copy_(l.weight)
    m.zero_grad()
    rule.step(m, x, y, F.cross_entropy)
    fa = [p.grad for n, p in m.named_parameters() if not n.endswith("weight_b")]
    for a, b in zip(fa, bp):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert all(not l.weight_b.requires_grad for _, l in fb_layers(m))  # FA's B is fixed


def test_b_is_a_parameter_initialised_independently():
    m = _net()
    create_rule("kp").prepare(m)
    names = [n for n, _ in m.named_parameters()]
    assert "0.weight_b" in names and "5.weight_b" in names
    for _, l in fb_layers(m):
        assert abs(angle_degrees(l.weight_b, l.weight) - 90) < 45  # unrelated draws


def _optimise(rule, layer, inputs, steps=3000, lr=0.5, position_mean=True):
    """Gradient descent on B with the rule's closed-form dR/dB (``regularizer_grad``)."""
    opt = torch.optim.SGD([layer.weight_b], lr=lr)
    a, b, g = {"wm": (1e-3, 1e-3, 0), "ia": (2e-3, 1e-3, 1e-3), "sa": (1e-3, 2e-3, 0), "aa": (1e-3, 2e-3, 0)}[rule]
    for i in range(steps):
        x = inputs(i)
        layer.weight_b.grad = regularizer_grad(rule, layer, x, a, b, g, position_mean)
        opt.step()
    return a, b, g


@pytest.mark.parametrize("position_mean", [True, False])
@pytest.mark.parametrize("rule", ["sa", "wm", "ia", "aa"])
@pytest.mark.parametrize("kind", ["linear", "conv_stride2", "conv_pad0"])
def test_closed_form_regulariser_gradient_equals_autograd(rule, kind, position_mean):
    torch.manual_seed(0)
    layer = {"linear": nn.Linear(7, 5), "conv_stride2": nn.Conv2d(3, 4, 3, stride=2, padding=1),
             "conv_pad0": nn.Conv2d(3, 4, (3, 2), padding=0)}[kind].double()
    seq = nn.Sequential(layer)
    convert_layers(seq, torch.Generator().manual_seed(1))
    layer = seq[0]
    x = torch.randn((6, 7) if kind == "linear" else (6, 3, 9, 8), dtype=torch.float64)
    a, b, g = 1.3e-3, 0.7e-3, 0.4e-3
    (ref,) = torch.autograd.grad(regularizer(rule, layer, x, a, b, g, position_mean), layer.weight_b)
    fast = regularizer_grad(rule, layer, x, a, b, g, position_mean)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-14)


def _fb_linear():
    seq = nn.Sequential(nn.Linear(6, 4).double())
    convert_layers(seq, torch.Generator().manual_seed(1))
    return seq[0]


def _whitened(n=6):
    """n samples of dimension n with x^T x / n = I exactly (the noise's second moment, sigma = 1)."""
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    return q * math.sqrt(n)


def test_regulariser_curvature_is_the_largest_eigenvalue_of_the_b_hessian():
    """sa, wm: 2 alpha; aa on a Linear layer: 2 alpha lambda_max(E[x x^T]) (positive, correlated
    inputs as after a ReLU, so it scales with the activations); conv aa: the dense Hessian of
    the autograd regulariser over B's entries. B itself is left unchanged."""
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(6, 4).double(), nn.Conv2d(2, 3, 3, padding=1).double())
    convert_layers(seq, torch.Generator().manual_seed(1))
    lin, conv = seq[0], seq[1]
    x = torch.rand(50, 6, dtype=torch.float64) + 0.5
    before = lin.weight_b.detach().clone()
    a, b = 1e-3, 2e-3
    for rule in ("sa", "wm"):
        assert regularizer_curvature(rule, lin, x, a, b, 0.0) == pytest.approx(2 * a, rel=1e-9)
    lam = torch.linalg.eigvalsh(x.T @ x / x.shape[0]).max().item()
    assert regularizer_curvature("aa", lin, x, a, b, 0.0, iters=200) == pytest.approx(2 * a * lam, rel=1e-6)
    assert regularizer_curvature("aa", lin, 3 * x, a, b, 0.0, iters=200) == pytest.approx(18 * a * lam, rel=1e-6)
    assert torch.equal(lin.weight_b.detach(), before)
    xc = torch.rand(4, 2, 5, 5, dtype=torch.float64)
    saved, n = conv.weight_b.detach().clone(), conv.weight_b.numel()

    def autograd_grad_at(v):  # dR/dB by autograd of the plain regulariser, at B = v
        with torch.no_grad():
            conv.weight_b.copy_(v.reshape(saved.shape))
        (g,) = torch.autograd.grad(regularizer("aa", conv, xc, a, b, 0.0, True), conv.weight_b)
        return g.reshape(-1)

    g0 = autograd_grad_at(torch.zeros(n, dtype=torch.float64))
    H = torch.stack([autograd_grad_at(e) - g0 for e in torch.eye(n, dtype=torch.float64)], 1)
    with torch.no_grad():
        conv.weight_b.copy_(saved)
    dense = torch.linalg.eigvalsh((H + H.T) / 2).abs().max().item()
    assert regularizer_curvature("aa", conv, xc, a, b, 0.0, iters=300) == pytest.approx(dense, rel=1e-5)


def test_sa_fixed_point():
    layer = _fb_linear()
    a, b, _ = _optimise("sa", layer, lambda i: None, steps=100, lr=250.0)
    torch.testing.assert_close(layer.weight_b.detach(), b / (2 * a) * layer.weight.detach(), rtol=1e-6, atol=1e-8)


def test_wm_fixed_point_with_exact_noise_moments():
    layer = _fb_linear()
    x = _whitened()  # E over noise replaced by a whitened sample
    a, b, _ = _optimise("wm", layer, lambda i: x, steps=100, lr=250.0)
    torch.testing.assert_close(layer.weight_b.detach(), b / (2 * a) * layer.weight.detach(), rtol=1e-5, atol=1e-8)


def test_ia_fixed_point():
    layer = _fb_linear()
    x = _whitened()
    a, b, g = _optimise("ia", layer, lambda i: x, steps=300, lr=150.0)
    W = layer.weight.detach()
    expected = a / (2 * b) * torch.linalg.solve(W @ W.T + g / b * torch.eye(4, dtype=torch.float64), W)
    torch.testing.assert_close(layer.weight_b.detach(), expected, rtol=1e-4, atol=1e-7)


def test_aa_fixed_point_on_the_data_span():
    layer = _fb_linear()
    q, _ = torch.linalg.qr(torch.randn(6, 3, dtype=torch.float64))
    x = q.T * math.sqrt(3)  # rank-3 data (x^T x / 3 = projector): B^T = W only on its span
    a, b, _ = _optimise("aa", layer, lambda i: x, steps=100, lr=250.0)
    W, B = layer.weight.detach(), layer.weight_b.detach()
    torch.testing.assert_close(x @ B.T, b / (2 * a) * (x @ W.T), rtol=1e-4, atol=1e-7)


def test_kp_with_matched_decay_drives_b_to_w():
    torch.manual_seed(0)
    m = create_model("mlp", in_shape=[8], hidden=[6], num_classes=3)
    rule = create_rule("kp")
    m = rule.prepare(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, weight_decay=0.05)
    diffs = []
    for i in range(300):
        x = torch.randn(16, 8)
        y = torch.randint(0, 3, (16,))
        opt.zero_grad()
        rule.step(m, x, y, F.cross_entropy)
        opt.step()
        if i % 100 == 0 or i == 299:
            diffs.append(sum(float((l.weight - l.weight_b).detach().norm()) for _, l in fb_layers(m)))
    # both kernels get the same gradient, so W - B shrinks exactly as (1 - lr wd)^t
    assert abs(diffs[-1] / diffs[0] - (1 - 0.1 * 0.05) ** 299) < 1e-4


@pytest.mark.parametrize("position_mean", [True, False])
def test_conv_regulariser_optimum_is_not_a_multiple_of_w(position_mean):
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False).double())
    convert_layers(seq, torch.Generator().manual_seed(1))
    layer = seq[0]
    x = torch.randn(64, 2, 5, 5, dtype=torch.float64)  # one fixed noise sample
    positions = 25 if position_mean else 1              # 5x5 output positions
    a, b, _ = _optimise("wm", layer, lambda i: x, steps=80 * positions, lr=250.0, position_mean=position_mean)
    # the optimum solved directly: R is quadratic in B, so solve H vec(B) = -grad R(0)
    B0 = torch.zeros_like(layer.weight_b)

    trained = layer.weight_b.detach().clone()
    flat = B0.flatten()

    def Rb(v):  # WM's regulariser written out: alpha ||B||^2 - beta E <conv(x, W), conv(x, B)>
        W = layer.weight.detach()
        amp = (layer.forward_b(x, W) * layer.forward_b(x, v.view_as(W))).sum() / (x.shape[0] * positions)
        return a * (v * v).sum() - b * amp

    H = torch.autograd.functional.hessian(Rb, flat)
    g0 = torch.autograd.functional.jacobian(Rb, torch.zeros_like(flat))
    opt_b = torch.linalg.solve(H, -g0).view_as(B0)
    torch.testing.assert_close(trained, opt_b, rtol=1e-5, atol=1e-7)
    ratio = opt_b / layer.weight.detach()
    assert float(ratio.std() / ratio.mean().abs()) > 1e-2  # zero padding: not a multiple of W
    if position_mean:  # away from the border every tap sees all positions: B ~ beta / (2 alpha) W there
        assert float((ratio.mean() - b / (2 * a)).abs()) < 0.5 * b / (2 * a)


def test_angle_metrics_agree_with_direct_computation():
    m = _net()
    x = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (5,))
    bp = dict(zip([n for n, _ in m.named_parameters()], torch.autograd.grad(F.cross_entropy(m(x), y), list(m.parameters()))))
    rule = create_rule("fa", compare_every=1, angle_every=1)
    m = rule.prepare(m)
    out = rule.step(m, x, y, F.cross_entropy)
    for name, l in fb_layers(m):
        direct = math.degrees(math.acos(float(torch.nn.functional.cosine_similarity(
            l.weight_b.detach().flatten(), l.weight.detach().flatten(), dim=0))))
        assert abs(out.stats[f"align/B_W_angle/{name}"] - direct) < 1e-9
        upd = angle_degrees(l.weight.grad, bp[f"{name}.weight"])
        assert abs(out.stats[f"align/update_angle/{name}"] - upd) < 1e-9
    assert out.stats["align/update_angle/5"] < 1e-4  # the last layer's gradient is exact under FA


def test_kp_under_bptt_trains_a_spiking_net():
    torch.manual_seed(0)
    m = create_model("spiking_mlp", in_shape=[10], hidden=[32], num_classes=2, time_steps=4)
    rule = create_rule("kp", model_rule="bptt")
    m = rule.prepare(m)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    for _ in range(150):
        opt.zero_grad()
        out = rule.step(m, x, y, F.cross_entropy)
        opt.step()
        rule.after_step(m)
    assert "rate/lif1" in out.stats  # BPTT's spike statistics come through
    assert isinstance(m.layers[0][1], FBLinear) and m.layers[0][1].weight_b.grad is not None
    assert float((rule.predict(m, x).argmax(1) == y).float().mean()) > 0.9
    with pytest.raises(TypeError, match="spiking"):
        create_rule("kp", model_rule="bptt").prepare(create_model("mlp"))
    with pytest.raises(ValueError, match="model rule"):
        create_rule("kp", model_rule="sa")


def test_every_rule_trains_an_mlp_from_the_cli(tmp_path, capsys):
    from bioprop.cli import main

    for r in ("fa", "sign_symmetry", "kp", "wm", "ia", "sa", "aa"):
        rc = main(["train", "--device", "cpu", "model=mlp", "model.hidden=[64]", f"rule={r}", "data.train_limit=512",
                   "optim.name=adam", "optim.lr=1e-3", "train.epochs=1", f"train.out_dir={tmp_path}", f"train.name={r}"])
        assert rc == 0, r
        assert '"test_acc"' in capsys.readouterr().out


def test_sign_symmetry_and_noisy_updates():
    m = _net()
    rule = create_rule("sign_symmetry", noisy_updates=1e-3)
    m = rule.prepare(m)
    for _, l in fb_layers(m):
        assert torch.equal(torch.sign(l.weight_b), torch.sign(l.weight))
    before = m[0].weight.detach().clone()
    rule.after_step(m)
    assert not torch.equal(before, m[0].weight)
    for _, l in fb_layers(m):
        assert torch.equal(torch.sign(l.weight_b), torch.sign(l.weight))


@pytest.mark.parametrize("name,params", [("resnet20", 269_722), ("resnet18", 11_173_962)])
def test_resnets_convert_and_fa_with_b_equal_w_is_bp(name, params):
    from bioprop.models import count_parameters

    torch.manual_seed(0)
    m = create_model(name)
    assert count_parameters(m) == params
    m = m.double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([1, 7])
    out = m(x)
    bp = torch.autograd.grad(F.cross_entropy(out, y), list(m.parameters()))
    rule = create_rule("fa")
    m = rule.prepare(m)
    n_conv = sum(1 for mod in m.modules() if isinstance(mod, FBConv2d))
    assert n_conv == (19 if name == "resnet20" else 20)
    with torch.no_grad():
        for _, l in fb_layers(m):
            l.weight_b.copy_(l.weight)
    torch.testing.assert_close(m(x), out)
    m.zero_grad()
    rule.step(m, x, y, F.cross_entropy)
    ours = [p.grad for n, p in m.named_parameters() if not n.endswith("weight_b")]
    for a, b in zip(ours, bp):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_optimizer_weight_decay_skips_b_where_the_regulariser_decays_it():
    from bioprop.train import load_config
    from bioprop.train.trainer import build_optimizer

    cfg = load_config(None, ["model=mlp", "optim.weight_decay=0.01"])
    for rule_name, kw, b_decay in [("sa", {}, 0.0), ("wm", {}, 0.0), ("kp", {}, 0.01), ("sa", {"decay_b": True}, 0.01)]:
        m = create_model("mlp", in_shape=[8], hidden=[6], num_classes=3)
        rule = create_rule(rule_name, **kw)
        m = rule.prepare(m)
        opt = build_optimizer(m.parameters(), cfg.optim, rule.no_weight_decay(m))
        decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
        for _, layer in fb_layers(m):
            assert decay[id(layer.weight)] == 0.01 and decay[id(layer.weight_b)] == b_decay
    # SA without the extra decay reaches its fixed point B = beta / (2 alpha) W = W under SGD with wd
    layer = _fb_linear()
    sgd = load_config(None, ["model=mlp", "optim.name=sgd", "optim.lr=250", "optim.momentum=0",
                             "optim.weight_decay=0.01"]).optim
    opt = build_optimizer([layer.weight_b], sgd, create_rule("sa").no_weight_decay(nn.Sequential(layer)))
    for _ in range(200):
        layer.weight_b.grad = regularizer_grad("sa", layer, None, 1e-3, 2e-3, 0.0)
        opt.step()
    torch.testing.assert_close(layer.weight_b.detach(), layer.weight.detach(), rtol=1e-6, atol=1e-8)


def _mlp_trainer(tmp_path, *overrides):
    from bioprop.train import Trainer, load_config

    cfg = load_config(None, ["model=mlp", "model.hidden=[32]", "data.train_limit=256", "data.batch_size=64",
                             "optim.name=sgd", "optim.lr=0.05", "optim.momentum=0", "train.epochs=1",
                             "train.device=cpu", f"train.out_dir={tmp_path}", *overrides])
    return Trainer(cfg, log=lambda s: None)


def test_b_optimizer_owns_b_and_takes_its_own_steps(tmp_path):
    """With ``b_optimizer`` the model's optimizer leaves B out; the rule's SGD / Adam steps B on the
    closed-form dR/dB (SGD: B - b_lr g; Adam's first step: B - b_lr g / (|g| + eps))."""
    for kind in ("sgd", "adam"):
        t = _mlp_trainer(tmp_path / kind, "rule=aa", f"rule.b_optimizer={kind}", "rule.b_lr=0.01")
        model, rule = t.model, t.rule
        in_main = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
        layers = list(fb_layers(model))
        assert all(id(l.weight_b) not in in_main and id(l.weight) in in_main for _, l in layers)
        assert {id(p) for p in rule.own_parameters(model)} == {id(l.weight_b) for _, l in layers}
        x, y = next(iter(t.dataset.loader("train", t.device, seed=0, epoch=0)))
        t.optimizer.zero_grad(set_to_none=True)
        rule.step(model, x, y, F.cross_entropy)
        before = {n: l.weight_b.detach().clone() for n, l in layers}
        grads = {n: l.weight_b.grad.detach().clone() for n, l in layers}
        t.optimizer.step()
        assert all(torch.equal(l.weight_b, before[n]) for n, l in layers)  # the model's step leaves B alone
        rule.after_step(model)
        for n, l in layers:
            g = grads[n]
            expected = before[n] - 0.01 * (g if kind == "sgd" else g / (g.abs() + 1e-8))
            torch.testing.assert_close(l.weight_b.detach(), expected, rtol=1e-5, atol=1e-7)
            assert l.weight_b.grad is None
    # the optimizer's state travels with the rule (checkpoints) and a checkpoint without it is refused
    state = rule.state_dict()
    fresh = _mlp_trainer(tmp_path / "fresh", "rule=aa", "rule.b_optimizer=adam", "rule.b_lr=0.01").rule
    fresh.load_state_dict(state)
    assert fresh.b_opt.state_dict()["state"][0]["step"] == 1
    with pytest.raises(ValueError, match="b_optimizer"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "b_optimizer"})


def test_b_optimizer_is_refused_where_b_does_not_learn_from_a_regulariser():
    for name in ("fa", "sign_symmetry", "kp"):
        with pytest.raises(ValueError, match="b_optimizer"):
            create_rule(name, b_optimizer="adam")
    with pytest.raises(ValueError, match="b_lr"):
        create_rule("aa", b_optimizer="adam", b_lr=0.0)


def test_sa_with_its_own_sgd_reaches_its_fixed_point(tmp_path):
    """SA's B converges to W under B's own optimizer, however the model's optimizer is set."""
    t = _mlp_trainer(tmp_path, "rule=sa", "rule.b_optimizer=sgd", "rule.b_lr=200", "rule.b_momentum=0",
                     "optim.lr=0")
    x, y = next(iter(t.dataset.loader("train", t.device, seed=0, epoch=0)))
    for _ in range(200):
        t.optimizer.zero_grad(set_to_none=True)
        t.rule.step(t.model, x, y, F.cross_entropy)
        t.optimizer.step()
        t.rule.after_step(t.model)
    for _, l in fb_layers(t.model):
        torch.testing.assert_close(l.weight_b.detach(), l.weight.detach(), rtol=1e-6, atol=1e-8)


def test_regulariser_gradient_is_scaled_like_the_loss_under_fp16_amp():
    """The trainer unscales the model optimizer's gradients, so dR/dB enters B.grad times the loss scale."""
    torch.manual_seed(0)
    m = create_model("mlp", in_shape=[8], hidden=[6], num_classes=3)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    grads = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)):
        rule = create_rule("sa")
        mm = rule.prepare(copy.deepcopy(m))
        rule.step(mm, x, y, F.cross_entropy, scaler)
        grads.append([l.weight_b.grad.clone() for _, l in fb_layers(mm)])
    for plain, scaled in zip(*grads):
        torch.testing.assert_close(scaled, plain * 2.0 ** 10)


def test_batch_centred_aa_ignores_the_input_mean():
    """With ``batch_center`` AA's dR/dB is that of the centred inputs, so a constant offset of every
    input leaves it unchanged (without centring it does not); its fixed point is B = W on the
    centred data's span."""
    torch.manual_seed(0)
    x = torch.randn(32, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (32,))
    offset = 3.0 * torch.randn(6, dtype=torch.float64)
    base, grads = nn.Sequential(nn.Linear(6, 4)).double(), {}
    for center in (False, True):
        for shift in (0.0, 1.0):
            m = copy.deepcopy(base)
            rule = create_rule("aa", batch_center=center)
            m = rule.prepare(m)
            rule.step(m, x + shift * offset, y, F.cross_entropy)
            grads[center, shift] = m[0].weight_b.grad.clone()
    torch.testing.assert_close(grads[True, 0.0], grads[True, 1.0], rtol=1e-12, atol=1e-14)
    assert not torch.allclose(grads[False, 0.0], grads[False, 1.0], rtol=1e-3)
    layer = m[0]
    torch.testing.assert_close(grads[True, 1.0], regularizer_grad("aa", layer, x - x.mean(0), 1e-3, 2e-3, 0.0))


# -- B-carrying layers: the input gradient goes through B, by hand ------------------------------

def test_linear_input_gradient_is_dy_times_b_by_hand():
    """dx = dy B (B != W), dW = dy^T x, db = sum dy: written out, not through our layer's code."""
    g = torch.Generator().manual_seed(1)
    m = nn.Sequential(nn.Linear(5, 3)).double()
    create_rule("fa").prepare(m)
    layer = m[0]
    assert not torch.allclose(layer.weight_b, layer.weight)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(4, 3, generator=g, dtype=torch.float64)
    layer(x).backward(dy)
    B = layer.weight_b.detach()
    want = torch.zeros(4, 5, dtype=torch.float64)
    for n in range(4):
        for i in range(5):
            want[n, i] = sum(dy[n, o] * B[o, i] for o in range(3))
    torch.testing.assert_close(x.grad, want, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(layer.weight.grad, dy.T @ x.detach(), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(layer.bias.grad, dy.sum(0), rtol=1e-13, atol=1e-14)


def test_conv_input_gradient_is_transposed_conv_with_b_by_hand():
    """Conv2d with stride 2 and padding 1: dx[n, c, i, j] = sum over output positions (p, q) and
    taps (u, v) with i = s p + u - pad, j = s q + v - pad of dy[n, o, p, q] B[o, c, u, v]."""
    g = torch.Generator().manual_seed(2)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1)).double()
    create_rule("fa").prepare(m)
    layer = m[0]
    x = torch.randn(2, 2, 7, 7, generator=g, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    y.backward(dy)
    B = layer.weight_b.detach()
    want = torch.zeros(2, 2, 7, 7, dtype=torch.float64)
    s, pad = 2, 1
    for p in range(y.shape[2]):
        for q in range(y.shape[3]):
            for u in range(3):
                for v in range(3):
                    i, j = s * p + u - pad, s * q + v - pad
                    if 0 <= i < 7 and 0 <= j < 7:
                        want[:, :, i, j] += dy[:, :, p, q] @ B[:, :, u, v]
    torch.testing.assert_close(x.grad, want, rtol=1e-12, atol=1e-13)
    W = layer.weight.detach()
    want_w = torch.zeros_like(W)
    xp = F.pad(x.detach(), (pad, pad, pad, pad))
    for p in range(y.shape[2]):
        for q in range(y.shape[3]):
            patch = xp[:, :, s * p:s * p + 3, s * q:s * q + 3]  # [N, C, 3, 3]
            want_w += torch.einsum("no,ncuv->ocuv", dy[:, :, p, q], patch)
    torch.testing.assert_close(layer.weight.grad, want_w, rtol=1e-12, atol=1e-13)


# -- the reference's options: backward-input centring, biases in the projections ----------------

def _linear_fb(seed=0, bias=True):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 4, bias=bias)).double()
    create_rule("kp").prepare(m)
    with torch.no_grad():
        m[0].bias.normal_() if bias else None
    return m[0]


@pytest.mark.parametrize("rule", ["wm", "aa", "ia"])
@pytest.mark.parametrize("conv", [False, True])
def test_regularizer_grad_with_backward_input_and_bias_matches_autograd(rule, conv):
    torch.manual_seed(3)
    if conv:
        m = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1)).double()
        create_rule("kp").prepare(m)
        x = torch.randn(5, 2, 7, 7, dtype=torch.float64) + 0.7
    else:
        m = nn.Sequential(nn.Linear(6, 4)).double()
        create_rule("kp").prepare(m)
        x = torch.randn(5, 6, dtype=torch.float64) + 0.7
    layer = m[0]
    xb = x - x.mean(0, keepdim=True)
    a, b, g = 2e-3, 1e-3, 1e-3
    for pm in (True, False):
        (ref,) = torch.autograd.grad(regularizer(rule, layer, x, a, b, g, pm, xb, True), layer.weight_b)
        torch.testing.assert_close(regularizer_grad(rule, layer, x, a, b, g, pm, xb, True), ref,
                                   rtol=1e-10, atol=1e-14)


def test_batch_center_ia_centres_only_the_backward_input_by_hand():
    """The reference centres the backward input only: IA's amp term pairs W x with B (x - mean x),
    its reconstruction B^T W x keeps the raw x. R written out for a Linear layer (sum over samples /
    N), differentiated by autograd, against the rule's B.grad."""
    torch.manual_seed(4)
    layer = _linear_fb(bias=False)
    x = torch.randn(16, 6, dtype=torch.float64) + 1.5
    xc = x - x.mean(0)
    W, B = layer.weight.detach(), layer.weight_b.detach().clone().requires_grad_(True)
    a, b, g = 2e-3, 1e-3, 1e-3
    n = x.shape[0]
    amp = -((x @ W.T) * (xc @ B.T)).sum() / n
    null = (((x @ W.T) @ B) ** 2).sum() / n
    (want,) = torch.autograd.grad(a * amp + b * null + g * (B ** 2).sum(), B)
    got = regularizer_grad("ia", layer, x, a, b, g, True, xc)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    # ... which is not IA on fully centred inputs (the old behaviour)
    assert not torch.allclose(regularizer_grad("ia", layer, xc, a, b, g, True), want, rtol=1e-6)
    # the rule passes the raw noise to A_W and the centred noise to A_B
    m = nn.Sequential(nn.Linear(6, 4, bias=False)).double()
    rule = create_rule("ia", batch_center=True)
    m = rule.prepare(m)
    replay = torch.Generator()
    replay.set_state(rule.generator.get_state())
    rule.step(m, x, torch.randint(0, 4, (16,)), F.cross_entropy)
    noise = torch.randn(x.shape, generator=replay, dtype=torch.float64)
    want_rule = regularizer_grad("ia", m[0], noise, a, b, g, True, noise - noise.mean(0))
    torch.testing.assert_close(m[0].weight_b.grad, want_rule, rtol=1e-12, atol=1e-15)
    # for wm the two agree (amp is bilinear: centring one side centres both)
    torch.testing.assert_close(regularizer_grad("wm", layer, x, 1e-3, 1e-3, 0.0, True, xc),
                               regularizer_grad("wm", layer, xc, 1e-3, 1e-3, 0.0, True), rtol=1e-12, atol=1e-15)


def test_reg_bias_adds_the_bias_to_both_projections_by_hand():
    torch.manual_seed(5)
    layer = _linear_fb(bias=True)
    x = torch.randn(8, 6, dtype=torch.float64)
    W, bvec = layer.weight.detach(), layer.bias.detach()
    B = layer.weight_b.detach().clone().requires_grad_(True)
    a, b = 1.5e-3, 2e-3  # at AA's defaults (beta = 2 alpha) the bias terms cancel in dR/dB
    yw, yb = x @ W.T + bvec, x @ B.T + bvec
    R = a * (yb ** 2).sum() / 8 - b * (yw * yb).sum() / 8
    (want,) = torch.autograd.grad(R, B)
    torch.testing.assert_close(regularizer_grad("aa", layer, x, a, b, 0.0, True, None, True), want,
                               rtol=1e-12, atol=1e-15)
    assert not torch.allclose(regularizer_grad("aa", layer, x, a, b, 0.0, True), want, rtol=1e-6)


@pytest.mark.parametrize("init", ["xavier", "default"])
def test_sign_symmetry_scale_is_the_init_std_from_the_fans(init):
    """uSF: B = sign(W) sqrt(2 / (fan_in + fan_out)) (biotorch's Xavier scale), or 1 / sqrt(3 fan_in)
    for PyTorch's default init; exact and deterministic. brSF / frSF magnitudes stay within the
    uniform bound sqrt(3) x that std."""
    m = _net()
    rule = create_rule("sign_symmetry", sign_init=init)
    m = rule.prepare(m)
    for _, l in fb_layers(m):
        fan_in = l.weight[0].numel()
        fan_out = l.weight.shape[0] * l.weight[0, 0].numel()
        scale = math.sqrt(2 / (fan_in + fan_out)) if init == "xavier" else 1 / math.sqrt(3 * fan_in)
        torch.testing.assert_close(l.weight_b, torch.sign(l.weight) * scale, rtol=0, atol=0)
    for mode in ("brsf", "frsf"):
        m = _net()
        rule = create_rule("sign_symmetry", sign_mode=mode, sign_init=init)
        m = rule.prepare(m)
        for _, l in fb_layers(m):
            fan_in = l.weight[0].numel()
            fan_out = l.weight.shape[0] * l.weight[0, 0].numel()
            scale = math.sqrt(2 / (fan_in + fan_out)) if init == "xavier" else 1 / math.sqrt(3 * fan_in)
            assert torch.equal(torch.sign(l.weight_b), torch.sign(l.weight))
            assert float(l.weight_b.abs().max()) <= math.sqrt(3) * scale
            assert float(l.weight_b.abs().max()) > 0.8 * math.sqrt(3) * scale


@pytest.mark.parametrize("mode", ["zeros", "reference"])
def test_ia_noise_padding_of_a_strided_conv_by_hand(mode):
    """``noise_padding=reference``: on a strided zero-padded convolution the reference pads the
    input explicitly and convolves 'VALID', so its noise covers the padding ring and IA's
    reconstruction term reconstructs the ring too. R written out with plain convolutions (sum over
    positions, mean over samples: ``position_mean=false``), differentiated by autograd, against
    the rule's B.grad; ``zeros`` (ours) draws noise of the unpadded input and zero-pads."""
    torch.manual_seed(6)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False)).double()
    rule = create_rule("ia", position_mean=False, noise_padding=mode)
    m = rule.prepare(m)
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    replay = torch.Generator()
    replay.set_state(rule.generator.get_state())
    rule.step(m, x, torch.zeros(4, dtype=torch.long), lambda out, y: out.sum())
    pad = 1 if mode == "reference" else 0
    noise = torch.randn(4, 2, 8 + 2 * pad, 8 + 2 * pad, generator=replay, dtype=torch.float64)
    W = m[0].weight.detach()
    B = m[0].weight_b.detach().clone().requires_grad_(True)
    conv_pad = 0 if mode == "reference" else 1
    yw = F.conv2d(noise, W, stride=2, padding=conv_pad)
    yb = F.conv2d(noise, B, stride=2, padding=conv_pad)
    recon = torch.nn.grad.conv2d_input(noise.shape, B, yw, stride=2, padding=conv_pad)
    a, b, g = 2e-3, 1e-3, 1e-3
    R = -a * (yw * yb).sum() / 4 + b * (recon ** 2).sum() / 4 + g * (B ** 2).sum()
    (want,) = torch.autograd.grad(R, B)
    torch.testing.assert_close(m[0].weight_b.grad, want, rtol=1e-12, atol=1e-15)
    assert m[0].padding == (1, 1)  # the layer's own padding is back
