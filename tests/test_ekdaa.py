"""EKDAA (rule ``ekdaa``): the output layer is BP's; with E = W^T and beta -> 0 the errors tend to
the BP deltas; the release's SGD identity for E; the conv projection is the convolution's
adjoint; signum networks train; diagnostics have no side effect; bad models get one line."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bioprop import create_model, create_rule
from bioprop.models.protocols import ProtocolError
from bioprop.rules.ekdaa import ekdaa_errors, ekdaa_plan, project


def _mlp(act="tanh", dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    m = create_model("ekdaa_mlp", in_shape=[1, 5, 5], hidden=[12, 10, 8], num_classes=4, activation=act)
    x = torch.randn(16, 1, 5, 5)
    y = torch.randint(0, 4, (16,))
    return m.to(dtype), x.to(dtype), y


def _cnn(act="tanh", dtype=torch.float64, seed=0, features=(3, "P", 4, 5, "P")):
    torch.manual_seed(seed)
    m = create_model("ekdaa_cnn", in_shape=[2, 8, 8], features=list(features), hidden=[9], num_classes=4,
                     activation=act)
    x = torch.randn(6, 2, 8, 8)
    y = torch.randint(0, 4, (6,))
    return m.to(dtype), x.to(dtype), y


def _prepared(model, **kw):
    rule = create_rule("ekdaa", **kw)
    return rule, rule.prepare(model)


def _bp_deltas(model, x, y):
    """BP's dL/dh_l of every weight layer's pre-activation, times B (per-sample deltas)."""
    plan = ekdaa_plan(model)
    pres = []

    def grab(mod, inp, out):
        out.retain_grad()
        pres.append(out)
    hs = [m.register_forward_hook(grab) for m in plan.layers]
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    for h in hs:
        h.remove()
    model.zero_grad(set_to_none=True)
    return [p.grad * x.shape[0] for p in pres]


@pytest.mark.parametrize("make", [_mlp, _cnn])
def test_output_layer_update_is_bp(make):
    m, x, y = make()
    rule, m = _prepared(m)
    out = rule.step(m, x, y, F.cross_entropy)
    readout = ekdaa_plan(m).layers[-1]
    bp = torch.autograd.grad(F.cross_entropy(m(x), y), readout.weight)[0]
    assert torch.allclose(readout.weight.grad, bp, rtol=1e-12, atol=1e-14)
    assert torch.allclose(out.loss, F.cross_entropy(m(x), y))


@pytest.mark.parametrize("make", [_mlp, _cnn])
def test_beta_to_zero_errors_tend_to_bp_deltas(make):
    """With E = W^T (argmax routing through pools) e_l / beta^(L-l) -> delta_l, error O(beta)."""
    m, x, y = make()
    rule, m = _prepared(m, pool_target="argmax")
    plan = ekdaa_plan(m)
    L = len(plan.layers)
    deltas = _bp_deltas(m, x, y)
    errs = {}
    for beta in (1e-2, 5e-3, 2.5e-3):
        r = ekdaa_errors(plan, x, y, F.cross_entropy, beta=beta, pool_target="argmax")
        errs[beta] = [float((r.errors[l] / beta ** (L - 1 - l) - deltas[l]).norm() / deltas[l].norm())
                      for l in range(L - 1)]
    for l in range(L - 1):
        e1, e2, e3 = errs[1e-2][l], errs[5e-3][l], errs[2.5e-3][l]
        assert e3 < 5e-3
        assert 1.7 < e1 / e2 < 2.3 and 1.7 < e2 / e3 < 2.3   # linear in beta
    # the update's angle to BP goes to 0 as well
    angles = []
    for beta in (1e-2, 2.5e-3):
        rule.config.beta, rule.config.compare_every = beta, 1
        stats = rule.step(m, x, y, F.cross_entropy).stats
        angles.append([float(stats[f"ekdaa/angle/{l + 1}"]) for l in range(L)])
    assert all(a < 0.5 for a in angles[1]) and all(a1 < a0 or a0 < 1e-6 for a0, a1 in zip(*angles))


def test_upsampled_pool_targets_do_not_vanish_with_beta():
    """The release's bilinear target: pre-pool errors stay non-zero even as beta -> 0."""
    m, x, y = _cnn()
    _, m = _prepared(m)
    r = ekdaa_errors(ekdaa_plan(m), x, y, F.cross_entropy, beta=1e-8)
    pooled = 0  # the first conv layer is followed by a pool
    assert float(r.errors[pooled].abs().max()) > 1e-3
    up = F.interpolate(F.max_pool2d(r.pre[pooled], 2), scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(r.targets[pooled], up, atol=1e-6)


@pytest.mark.parametrize("make", [_mlp, _cnn])
@pytest.mark.parametrize("momentum", [0.0, 0.85])
def test_sgd_identity_of_the_error_kernels(make, momentum):
    """Under SGD with E_0 = W_0^T: E_t = (1 - gamma) W_0^T + gamma W_t^T (the release's identity)."""
    m, x, y = make()
    gamma = 0.3
    rule, m = _prepared(m, gamma=gamma)
    plan = ekdaa_plan(m)
    w0 = [l.weight.detach().clone() for l in plan.layers]
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=momentum)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        xb = torch.randn(x.shape, generator=g, dtype=x.dtype)
        opt.zero_grad(set_to_none=True)
        rule.step(m, xb, y, F.cross_entropy)
        opt.step()
    checked = 0
    for l, layer in enumerate(plan.layers):
        if l == 0:
            assert not hasattr(layer, "weight_e")
            continue
        expect = (1 - gamma) * w0[l].transpose(0, 1) + gamma * layer.weight.detach().transpose(0, 1)
        assert not torch.allclose(layer.weight, w0[l])
        assert torch.allclose(layer.weight_e, expect, rtol=0, atol=1e-12)
        checked += 1
    assert checked == len(plan.layers) - 1


@pytest.mark.parametrize("stride,padding,kernel", [(1, 1, 3), (2, 1, 3), (2, 0, 3), (1, 2, 5), (3, 1, 2)])
def test_conv_projection_is_the_adjoint_of_the_convolution(stride, padding, kernel):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel, stride=stride, padding=padding, bias=False).double()
    x_shape = torch.Size([1, 2, 7, 7])
    A = torch.autograd.functional.jacobian(lambda v: conv(v.reshape(x_shape)).flatten(), torch.zeros(x_shape.numel(),
                                           dtype=torch.float64))
    out_shape = conv(torch.zeros(x_shape, dtype=torch.float64)).shape
    e = torch.randn(out_shape, dtype=torch.float64)
    E = conv.weight.detach().transpose(0, 1)
    got = project(conv, E, e, x_shape)
    assert torch.allclose(got.flatten(), A.t() @ e.flatten(), atol=1e-12)
    if kernel == 3:  # the release's kernel: the adjoint of the convolution with spatially transposed W
        conv_t = copy.deepcopy(conv)
        with torch.no_grad():
            conv_t.weight.copy_(conv.weight.transpose(2, 3))
        At = torch.autograd.functional.jacobian(lambda v: conv_t(v.reshape(x_shape)).flatten(),
                                                torch.zeros(x_shape.numel(), dtype=torch.float64))
        ref = project(conv, E, e, x_shape, conv_kernel="reference")
        assert torch.allclose(ref.flatten(), At.t() @ e.flatten(), atol=1e-12)
        assert not torch.allclose(ref, got)


def test_dense_projection_hand_computed():
    lin = nn.Linear(2, 3, bias=False)
    E = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # [in, out]
    e = torch.tensor([[1.0, 0.0, -1.0]])
    assert torch.equal(project(lin, E, e, torch.Size([1, 2])), torch.tensor([[-2.0, -2.0]]))


def test_signum_network_trains_where_bp_cannot():
    """phi = sign: phi' = 0 almost everywhere, so BP trains only the readout; EKDAA trains the
    hidden layer too and fits the (non-linear) task far better on the same schedule."""
    final, first = {}, {}
    for name in ("ekdaa", "bp"):
        torch.manual_seed(0)
        n, d = 256, 10
        x = torch.randn(n, 1, 1, d)
        y = ((x[:, 0, 0, 0] * x[:, 0, 0, 1] > 0).long() * 2 + (x[:, 0, 0, 2] > 0).long())  # 4 classes, XOR-like
        m = create_model("ekdaa_mlp", in_shape=[1, 1, d], hidden=[128], num_classes=4, activation="signum")
        hidden = m[0][1].weight
        w_first = hidden.detach().clone()
        if name == "bp":
            assert float(torch.autograd.grad(F.cross_entropy(m(x), y), hidden)[0].abs().max()) == 0.0
        rule = create_rule(name)
        m = rule.prepare(m)
        opt = torch.optim.SGD(m.parameters(), lr=0.003, momentum=0.9)
        losses = []
        for _ in range(100):
            opt.zero_grad(set_to_none=True)
            losses.append(float(rule.step(m, x, y, F.cross_entropy).loss))
            opt.step()
        assert torch.equal(hidden, w_first) == (name == "bp")
        final[name] = sum(losses[-10:]) / 10
        first[name] = sum(losses[:10]) / 10
    assert final["ekdaa"] < 0.25 * first["ekdaa"] and final["ekdaa"] < 0.6 * final["bp"]


@pytest.mark.parametrize("make", [_mlp, _cnn])
def test_compare_every_has_no_side_effect(make):
    runs = []
    for every in (0, 1):
        m, x, y = make(dtype=torch.float32)
        rule, m = _prepared(m, compare_every=every, e_init="random")
        rule.seed(3)
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        rng = torch.get_rng_state()
        stats = {}
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            stats = rule.step(m, x, y, F.cross_entropy).stats
            opt.step()
        assert torch.equal(torch.get_rng_state(), rng)
        runs.append(([p.detach().clone() for p in m.parameters()], stats))
    assert all(torch.equal(a, b) for a, b in zip(runs[0][0], runs[1][0]))
    assert "ekdaa/angle/1" not in runs[0][1] and "ekdaa/angle/1" in runs[1][1]
    assert "ekdaa/E_W_angle/2" in runs[1][1]


def test_random_e_init_is_independent_and_checkpointed():
    m, x, y = _mlp()
    rule, m = _prepared(m, e_init="random")
    plan = ekdaa_plan(m)
    E = plan.layers[1].weight_e
    assert E.shape == plan.layers[1].weight.t().shape
    cos = F.cosine_similarity(E.detach().flatten(), plan.layers[1].weight.detach().t().flatten(), dim=0)
    assert abs(float(cos)) < 0.3
    sd = m.state_dict()
    assert any(k.endswith("weight_e") for k in sd)
    m2, _, _ = _mlp(seed=5)
    rule2, m2 = _prepared(m2, e_init="random")
    m2.load_state_dict(sd)
    assert torch.equal(ekdaa_plan(m2).layers[1].weight_e, E)
    assert all(id(p) in {id(q) for q in m.parameters()} for p in rule.kernels(m))
    assert {id(p) for p in rule.no_weight_decay(m)} == {id(p) for p in rule.kernels(m)}


def test_bad_models_get_one_line_errors():
    bn = nn.Sequential(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), nn.BatchNorm1d(3), nn.Linear(3, 2))
    with pytest.raises(ProtocolError, match=r"block 2 \(BatchNorm1d\)") as ei:
        create_rule("ekdaa").prepare(bn)
    assert "\n" not in str(ei.value)
    drop = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Dropout(0.5), nn.Linear(3, 2))
    with pytest.raises(ProtocolError, match="dropout"):
        create_rule("ekdaa").prepare(drop)
    act_top = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh())
    with pytest.raises(ProtocolError, match="Linear readout"):
        create_rule("ekdaa").prepare(act_top)
    with pytest.raises(ProtocolError, match="BlockModel"):
        create_rule("ekdaa").prepare(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="e_init"):
        create_rule("ekdaa", e_init="zeros")


def test_trainer_runs_ekdaa_and_resumes(tmp_path):
    from bioprop.train import Trainer, load_config

    ov = ["model=ekdaa_mlp", "model.hidden=[32]", "rule=ekdaa", "rule.compare_every=2", "data.train_limit=600",
          "data.batch_size=100", "train.epochs=1", "train.device=cpu", "train.progress=false",
          f"train.out_dir={tmp_path}", "optim.name=sgd", "optim.lr=0.05", "optim.weight_decay=0.01"]
    t = Trainer(load_config(None, ov), log=lambda s: None)
    opt_params = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in opt_params for p in t.rule.kernels(t.model))
    row = t.fit()
    assert "train/ekdaa/angle/2" in t.history[-1]
    assert row["test_acc"] > 0.3
    E = [p.detach().clone() for p in t.rule.kernels(t.model)]
    assert not torch.equal(E[0], ekdaa_plan(t.model).layers[1].weight.detach().t())  # E learned
    resumed = Trainer(load_config(None, ov), resume=t.run_dir, log=lambda s: None)
    assert all(torch.equal(a, b) for a, b in zip(resumed.rule.kernels(resumed.model), E))


def test_bilinear_targets_with_full_size_conv_updates_warn():
    """The combination that leaves the release's CNN at chance warns once at prepare, naming the fix;
    argmax routing, conv_normalize, and models without conv+pool do not."""
    import warnings as _w

    from bioprop.models import create_model
    from bioprop.rules import create_rule

    def warns(model_kw, **rule_kw):
        with _w.catch_warnings(record=True) as rec:
            _w.simplefilter("always")
            create_rule("ekdaa", **rule_kw).prepare(create_model(**model_kw))
        return [str(r.message) for r in rec if "pool_target=argmax" in str(r.message)]

    cnn = dict(name="ekdaa_cnn", in_shape=(3, 8, 8), features=[4, "P"], hidden=[8])
    assert warns(cnn)
    assert not warns(cnn, pool_target="argmax")
    assert not warns(cnn, conv_normalize=True)
    assert not warns(dict(name="ekdaa_mlp", in_shape=(1, 4, 4), hidden=[8]))
