"""TSSL-BP: forward dynamics, each backward term by hand, the vectorised backward against the
reference's plain O(T^2) loop (written out below), losses, the rule's life cycle and the models."""

import math

import pytest
import torch
import torch.nn.functional as F

from bioprop import ConfigError, create_model, create_rule
from bioprop.models import count_parameters
from bioprop.models.tssl_nets import PSPDropout, lif_psp_multistep, psp_filter, psp_kernel
from bioprop.rules.tssl import (TSSLFunction, count_loss, desired_psp, kernel_loss, tssl_backward,
                                tssl_neuron)

TAU_M, TAU_S = 5.0, 3.0
D = torch.float64


# -- the reference, written plainly: forward loop and the O(T^2) backward loop -----------------

def reference_forward(current, tau_m=TAU_M, tau_s=TAU_S, threshold=1.0):
    """The reference's forward: mem += -mem/tau_m + I; fire if mem > theta; reset; syn += (s - syn)/tau_s."""
    mem = torch.zeros_like(current[0])
    syn = torch.zeros_like(current[0])
    us, dus, ss, as_ = [], [], [], []
    for t in range(current.shape[0]):
        jump = -mem / tau_m + current[t]
        mem = mem + jump
        out = (mem > threshold).to(current.dtype)
        us.append(mem)
        dus.append(jump)
        mem = mem * (1 - out)
        syn = syn + (out - syn) / tau_s
        ss.append(out)
        as_.append(syn)
    return torch.stack(us), torch.stack(dus), torch.stack(ss), torch.stack(as_)


def reference_backward(grad, u, du, s, a, tau_m=TAU_M, tau_s=TAU_S, threshold=1.0, width=0.2, cap=8.0):
    """The reference's backward loop over t (and, inside, over k), carrying ``theta`` backwards."""
    T = grad.shape[0]
    theta_m = 1 / tau_m
    eps = [(1 - 1 / tau_s) ** k / tau_s for k in range(T)]
    out = torch.zeros_like(grad)
    theta = torch.zeros_like(grad[0])
    for t in range(T - 1, -1, -1):
        spk = s[t]
        partial_u = (-1 / du[t]).clamp(-cap, 0) * spk
        inter = torch.zeros_like(grad[0])
        for k in range(T - t):
            inter = inter + eps[k] * grad[t + k]
        g = -partial_u * inter
        if t != T - 1:
            g = g + theta * u[t] * theta_m * (-partial_u)
            g = g + theta * (1 - theta_m) * (1 - spk)
        theta = g * spk + theta * (1 - spk) * (1 - theta_m)
        f = ((threshold - u[t]) / width).clamp(-8, 8).exp()
        f = f / ((1 + f) * (1 + f) * width)
        out[t] = torch.where(a[t] < 1 / (4 * tau_s), inter * f, g)
    return out


class ReferenceNeuron(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current):
        u, du, s, a = reference_forward(current)
        ctx.save_for_backward(u, du, s, a)
        ctx.mark_non_differentiable(s)
        return a, s

    @staticmethod
    def backward(ctx, grad_a, grad_s):
        return reference_backward(grad_a, *ctx.saved_tensors)


def sur(x):
    """sigma'(x) / w with w = 0.2 at x = (theta - u) / w."""
    return math.exp(x) / ((1 + math.exp(x)) ** 2 * 0.2)


def backward_of(current, grad, quiet_factor=0.25):
    tr = lif_psp_multistep(current, TAU_M, TAU_S)
    return tssl_backward(grad, tr.u, tr.du, tr.s > 0, tr.a < quiet_factor / TAU_S, TAU_M, TAU_S)


def col(*v):
    return torch.tensor(v, dtype=D).unsqueeze(1)


# -- forward --------------------------------------------------------------------------------

def test_one_neuron_simulation_by_hand():
    tr = lif_psp_multistep(col(0.6, 0.7, 0.1, 1.5, 0.0), TAU_M, TAU_S)
    # u1 = 0.8 * 0.6 + 0.7 fires and resets; u2 = 0 + 0.1; u3 = 0.8 * 0.1 + 1.5 fires; u4 = 0
    torch.testing.assert_close(tr.u, col(0.6, 1.18, 0.1, 1.58, 0.0), rtol=0, atol=1e-14)
    torch.testing.assert_close(tr.du, col(0.6, 0.58, 0.1, 1.48, 0.0), rtol=0, atol=1e-14)
    torch.testing.assert_close(tr.s, col(0, 1, 0, 1, 0), rtol=0, atol=0)
    torch.testing.assert_close(tr.a, col(0, 1 / 3, 2 / 9, 13 / 27, 26 / 81), rtol=0, atol=1e-14)
    # strict threshold: u = 1 exactly does not fire
    assert lif_psp_multistep(col(1.0), TAU_M, TAU_S).s.item() == 0


def test_psp_kernel_filter_and_desired_psp_by_hand():
    torch.testing.assert_close(psp_kernel(4, 3.0, D), torch.tensor([1 / 3, 2 / 9, 4 / 27, 8 / 81], dtype=D))
    x = torch.tensor([0.5, -2.0], dtype=D).expand(6, 2)
    expect = torch.stack([(1 - (2 / 3) ** (t + 1)) * x[0] for t in range(6)])
    torch.testing.assert_close(psp_filter(x, 3.0), expect, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(desired_psp([0, 1, 1, 1, 1], 5, 3.0, D),
                               torch.tensor([0, 1 / 3, 5 / 9, 19 / 27, 65 / 81], dtype=D))
    torch.testing.assert_close(desired_psp([0, 1], 4, 3.0, D), torch.tensor([0, 1 / 3, 2 / 9, 13 / 27], dtype=D))
    with pytest.raises(ValueError, match="does not tile"):
        desired_psp([0, 1, 1], 5, 3.0)


def test_forward_equals_reference_loop_and_surrogate_path():
    g = torch.Generator().manual_seed(0)
    cur = torch.rand(7, 3, 5, generator=g, dtype=D) * 1.6 - 0.3
    tr = lif_psp_multistep(cur, TAU_M, TAU_S)
    for mine, ref in zip(tr, reference_forward(cur)):
        torch.testing.assert_close(mine, ref, rtol=1e-13, atol=1e-14)
    model = create_model("tssl_fmnist_mlp", arch="6", in_shape=[4], num_classes=3).double()
    x = torch.rand(5, 4, generator=g, dtype=D) * 4
    a_bptt, rec_bptt = model.simulate(x, model.surrogate_neuron)
    a_tssl, rec_tssl = model.simulate(x, tssl_neuron(model, create_rule("tssl").config))
    assert torch.equal(a_bptt, a_tssl)
    assert rec_tssl.spikes["lif1"] > 0


# -- backward, term by term, by hand ---------------------------------------------------------

def test_inter_neuron_term_by_hand():
    # one spike at t = 1 (u = 1.18, du = 0.58); later steps silent and not quiet (a >= 1/12)
    grad = backward_of(col(0.6, 0.7, 0.1, 0.2, 0.1), col(0.5, 1.0, -2.0, 0.25, 3.0))
    inter1 = 1 / 3 * 1.0 + 2 / 9 * -2.0 + 4 / 27 * 0.25 + 8 / 81 * 3.0  # = 2/9
    inter0 = 1 / 3 * 0.5 + 2 / 9 * 1.0 + 4 / 27 * -2.0 + 8 / 81 * 0.25 + 16 / 243 * 3.0  # = 17/54
    expect = [inter0 * sur((1 - 0.6) / 0.2), inter1 / 0.58, 0.0, 0.0, 0.0]  # t = 0 is quiet (a = 0)
    torch.testing.assert_close(grad, col(*expect), rtol=1e-12, atol=1e-15)
    # 1/du is capped at 8: u1 = 0.8 * 0.95 + 0.25 = 1.01 fires with du = 0.06
    grad = backward_of(col(0.95, 0.25), col(0.0, 1.0))
    torch.testing.assert_close(grad, col(2 / 9 * sur((1 - 0.95) / 0.2), 8 * (1 / 3)), rtol=1e-12, atol=0)


def test_intra_neuron_reset_term_by_hand():
    # spikes at t = 1 (u 1.18, du 0.58) and t = 3 (u 1.58, du 1.48); g chosen so that inter[1] = 0:
    # the gradient at t = 1 is then the reset term alone, theta_m u1 G2 / du1 with G2 = (1 - theta_m) G3
    grad = backward_of(col(0.6, 0.7, 0.1, 1.5, 0.0), col(0.0, -4 / 9, 0.0, 1.0, 0.0))
    g3 = (1 / 3) / 1.48            # inter[3] = eps0 * 1
    g2 = 0.8 * g3                  # silent step: the leak carries G back
    g1 = 0.2 * 1.18 * g2 / 0.58    # inter[1] = eps0 (-4/9) + eps2 = 0
    torch.testing.assert_close(grad, col(0.0, g1, g2, g3, 0.0), rtol=1e-12, atol=1e-15)
    # without the second spike the gradient at t = 1 vanishes (inter[1] = 0, nothing to carry)
    alone = backward_of(col(0.6, 0.7, 0.1, 0.2, 0.0), col(0.0, -4 / 9, 0.0, 1.0, 0.0))
    assert abs(alone[1].item()) < 1e-15


def test_surrogate_applies_exactly_below_quarter_over_tau_s():
    # one spike at t = 0; a = 1/3, 2/9, 4/27, 8/81 (>= 1/12), 16/243 (< 1/12)
    cur, g = col(1.2, 0.0, 0.0, 0.0, 0.3), col(1.0, 1.0, 1.0, 1.0, 1.0)
    inter = [sum((2 / 3) ** k / 3 for k in range(5 - t)) for t in range(5)]
    grad = backward_of(cur, g)
    expect = [inter[0] / 1.2, 0.0, 0.0, 0.0, inter[4] * sur((1 - 0.3) / 0.2)]
    torch.testing.assert_close(grad, col(*expect), rtol=1e-12, atol=1e-15)
    # raise the quiet level to 0.3/tau_s = 0.1 > 8/81: now t = 3 takes the surrogate too (u3 = 0)
    grad = backward_of(cur, g, quiet_factor=0.3)
    expect[3] = inter[3] * sur(1 / 0.2)
    torch.testing.assert_close(grad, col(*expect), rtol=1e-12, atol=1e-15)


def test_surrogate_mask_on_random_layer():
    gen = torch.Generator().manual_seed(3)
    cur = torch.rand(6, 40, generator=gen, dtype=D) * 1.5 - 0.2
    g = torch.randn(6, 40, generator=gen, dtype=D)
    tr = lif_psp_multistep(cur, TAU_M, TAU_S)
    quiet = tr.a < 1 / (4 * TAU_S)
    assert quiet.any() and (~quiet).any() and tr.s.any()
    with_sur = backward_of(cur, g)
    without = backward_of(cur, g, quiet_factor=0.0)
    eps = psp_kernel(6, TAU_S, D)
    inter = torch.stack([sum(eps[k] * g[t + k] for k in range(6 - t)) for t in range(6)])
    e = ((1 - tr.u) / 0.2).clamp(-8, 8).exp()
    torch.testing.assert_close(with_sur[quiet], (inter * e / ((1 + e) ** 2 * 0.2))[quiet], rtol=1e-12, atol=1e-15)
    assert torch.equal(with_sur[~quiet], without[~quiet])
    assert not torch.allclose(with_sur[quiet], without[quiet])


def test_vectorised_backward_equals_reference_loop():
    gen = torch.Generator().manual_seed(1)
    for shape in [(5, 64), (9, 2, 3, 4, 4)]:
        cur = torch.rand(*shape, generator=gen, dtype=D) * 1.6 - 0.3
        g = torch.randn(*shape, generator=gen, dtype=D)
        u, du, s, a = reference_forward(cur)
        assert s.any() and (s == 0).any() and ((du < 1 / 8) & (s > 0)).any()  # the cap is exercised
        x = cur.clone().requires_grad_(True)
        psp, spikes = TSSLFunction.apply(x, TAU_M, TAU_S, 1.0, 0.2, 8.0, 0.25)
        (mine,) = torch.autograd.grad((psp * g).sum(), x)
        ref = reference_backward(g, u, du, s, a)
        assert (mine - ref).abs().max() <= 1e-10 * ref.abs().max()
        assert not spikes.requires_grad


def test_function_dtypes():
    gen = torch.Generator().manual_seed(2)
    cur = torch.rand(5, 30, generator=gen, dtype=D) * 1.6 - 0.3
    g = torch.randn(5, 30, generator=gen, dtype=D)
    ref = backward_of(cur, g)
    x32 = cur.float().requires_grad_(True)
    a32, _ = TSSLFunction.apply(x32, TAU_M, TAU_S, 1.0, 0.2, 8.0, 0.25)
    (g32,) = torch.autograd.grad((a32 * g.float()).sum(), x32)
    assert a32.dtype == torch.float32 and g32.dtype == torch.float32
    torch.testing.assert_close(g32.double(), ref, rtol=1e-4, atol=1e-5)
    xb = cur.bfloat16().requires_grad_(True)  # autocast-style input: state simulated in fp32
    ab, _ = TSSLFunction.apply(xb, TAU_M, TAU_S, 1.0, 0.2, 8.0, 0.25)
    (gb,) = torch.autograd.grad(ab.sum(), xb)
    assert ab.dtype == torch.float32 and gb.dtype == torch.bfloat16


NETS = {  # (arch, in_shape, padding): Linear only; Conv2d; Conv2d with sum pooling
    "linear": ("12-7", [10], 0),
    "conv": ("3C3-4C3", [2, 7, 7], 1),
    "pool": ("3C3-P2-4C3-P2", [1, 12, 12], 0),
}


@pytest.mark.parametrize("kind", sorted(NETS))
def test_network_gradient_equals_reference_loop(kind):
    arch, in_shape, padding = NETS[kind]
    torch.manual_seed(0)
    model = create_model("tssl_fmnist_mlp", arch=arch, in_shape=in_shape, padding=padding, num_classes=3).double()
    with torch.no_grad():
        for layer in model.weight_layers():
            layer.weight.mul_(2.5)  # enough drive for spikes in every layer
    x = torch.rand(4, *in_shape, dtype=D, generator=torch.Generator().manual_seed(5)) * 3
    y = torch.tensor([0, 1, 2, 1])
    rule = create_rule("tssl")
    model = rule.prepare(model)
    model.zero_grad()
    out = rule.step(model, x, y, F.cross_entropy)
    mine = [p.grad.clone() for p in model.parameters()]
    for k, v in out.stats.items():
        if k.startswith("rate/"):
            assert 0 < float(v) < 1, (k, float(v))
    model.zero_grad()
    a, _ = model.simulate(x, ReferenceNeuron.apply)
    kernel_loss(a, y, [0, 1, 1, 1, 1], TAU_S).backward()
    for p, m in zip(model.parameters(), mine):
        assert p.grad.abs().max() > 0
        assert (m - p.grad).abs().max() <= 1e-10 * p.grad.abs().max()


# -- losses ----------------------------------------------------------------------------------

@pytest.mark.parametrize("train,filters,want", [
    # the paper and the NeurIPS submission commit (d0a06b7): [0,1,0,1,1] filtered once
    ([0, 1, 0, 1, 1], 1, [0, 1 / 3, 2 / 9, 13 / 27, 53 / 81]),
    # our default, the reference at 1d46185..cc9f56b: [0,1,1,1,1] filtered once
    ([0, 1, 1, 1, 1], 1, [0, 1 / 3, 5 / 9, 19 / 27, 65 / 81]),
    # the reference at HEAD: filtered in train() and again in loss_kernel
    ([0, 1, 1, 1, 1], 2, [0, 1 / 9, 7 / 27, 11 / 27, 131 / 243]),
    ([0, 1, 1, 1, 1], 0, [0, 1, 1, 1, 1]),
])
def test_kernel_target_variants_by_hand(train, filters, want):
    """Each selectable kernel-loss target against the recursion a[t] = 2/3 a[t-1] + d[t]/3 by hand
    (tau_s = 3), through the rule's configured loss."""
    rule = create_rule("tssl", desired_train=train, target_filters=filters)

    class M:
        tau_s = 3.0

    out = torch.zeros(5, 1, 2, dtype=D)
    y = torch.tensor([1])
    expect = 0.5 * sum(w * w for w in want)
    assert abs(rule.loss(M(), out, y).item() - expect) < 1e-14
    torch.testing.assert_close(desired_psp(train, 5, 3.0, D, filters=filters), torch.tensor(want, dtype=D),
                               rtol=1e-14, atol=1e-15)


def test_kernel_target_default_is_documented_choice():
    c = create_rule("tssl").config
    assert (c.desired_train, c.target_filters) == ([0, 1, 1, 1, 1], 1)
    with pytest.raises(ValueError, match="target_filters"):
        create_rule("tssl", target_filters=3)


def test_kernel_loss_equals_formula():
    gen = torch.Generator().manual_seed(4)
    out = torch.rand(5, 3, 4, generator=gen, dtype=D)
    y = torch.tensor([2, 0, 3])
    want = [0, 1 / 3, 5 / 9, 19 / 27, 65 / 81]
    total = 0.0
    for t in range(5):
        for b in range(3):
            for k in range(4):
                target = want[t] if k == y[b] else 0.0
                total += 0.5 * (out[t, b, k].item() - target) ** 2
    assert abs(kernel_loss(out, y, [0, 1, 1, 1, 1], 3.0).item() - total) < 1e-12


def test_count_loss_by_hand_and_its_gradient():
    # T = 2; counts (sums of PSPs): sample 0 label 0: [1.5, 2.0, 0.5]; sample 1 label 2: [0.5, 0.2, 5.0]
    out = torch.tensor([[[1.0, 1.0, 0.0], [0.25, 0.1, 2.0]],
                        [[0.5, 1.0, 0.5], [0.25, 0.1, 3.0]]], dtype=D, requires_grad=True)
    y = torch.tensor([0, 2])
    # desired 4, undesired 1: delta = (n - target)/2; label short: (1.5-4)/2; others above 1: (2-1)/2;
    # zero: label reaching 4 (5.0), others at or below 1 (0.5, 0.5, 0.2)
    deltas = [-1.25, 0.5]
    loss = count_loss(out, y, 4.0, 1.0)
    assert abs(loss.item() - 0.5 * 2 * sum(d * d for d in deltas)) < 1e-12
    (g,) = torch.autograd.grad(loss, out)
    expect = torch.zeros(2, 3, dtype=D)
    expect[0, 0], expect[0, 1] = -1.25, 0.5
    torch.testing.assert_close(g, expect.expand(2, 2, 3))  # dE/da[t] = delta at every t


# -- rule and models -------------------------------------------------------------------------

def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="valid keys"):
        create_rule("tssl", desired_trian=[0, 1])
    with pytest.raises(ConfigError, match="valid keys"):
        create_model("tssl_mnist_cnn", tau=3.0)
    with pytest.raises(ConfigError):
        create_rule("tssl", loss="softmax")
    with pytest.raises(ValueError, match="0/1"):
        create_rule("tssl", desired_train=[0, 2])
    with pytest.raises(ValueError, match="does not tile"):
        create_rule("tssl", desired_train=[0, 1, 1]).prepare(create_model("tssl_fmnist_mlp"))
    with pytest.raises(ValueError, match="cannot read layer"):
        create_model("tssl_fmnist_mlp", arch="400-X3")
    with pytest.raises(ValueError, match="must follow a convolution"):
        create_model("tssl_fmnist_mlp", arch="P2-400")
    with pytest.raises(ValueError, match="too small"):
        create_model("tssl_mnist_cnn", arch="15C5-P2-40C5-P2-40C5")


def test_prepare_rejects_other_models_and_bad_inputs():
    with pytest.raises(TypeError, match="tssl_mnist_cnn"):
        create_rule("tssl").prepare(create_model("spiking_mlp"))
    model = create_model("tssl_fmnist_mlp")
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\]"):
        model(torch.zeros(2, 784))


def test_after_step_clamps_weights():
    rule = create_rule("tssl", weight_clamp=0.5)
    model = rule.prepare(create_model("tssl_fmnist_mlp", arch="8", in_shape=[6], num_classes=3))
    with torch.no_grad():
        for layer in model.weight_layers():
            layer.weight.mul_(100)
    before = [layer.weight.clone() for layer in model.weight_layers()]
    rule.after_step(model)
    for w0, layer in zip(before, model.weight_layers()):
        assert layer.weight.abs().max() == 0.5
        torch.testing.assert_close(layer.weight, w0.clamp(-0.5, 0.5))


def test_dropout_mask_is_shared_over_time_and_along_rows():
    drop = PSPDropout(0.5)
    a = torch.ones(4, 3, 5, 6, 7)
    out = drop(a)
    assert torch.equal(out, out[:1].expand_as(out))            # same mask at every step
    assert torch.equal(out, out[..., :1].expand_as(out))       # one value per (sample, channel, row)
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(drop.eval()(a), a)


@pytest.mark.parametrize("loss", ["kernel", "count"])
def test_training_reduces_the_loss(loss):
    torch.manual_seed(0)
    model = create_model("tssl_fmnist_cnn", arch="4C3-P2-16", in_shape=[1, 8, 8], padding=1, num_classes=4)
    rule = create_rule("tssl", loss=loss)
    model = rule.prepare(model)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=gen) * 2
    y = torch.randint(0, 4, (16,), generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(25):
        opt.zero_grad(set_to_none=True)
        out = rule.step(model, x, y, F.cross_entropy)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        rule.after_step(model)
        losses.append(out.loss.item())
    assert sum(losses[-5:]) < 0.75 * sum(losses[:5])
    if loss == "kernel":  # the desired trains of the labels are learnt: most samples now classified
        assert (rule.predict(model, x).argmax(1) == y).float().mean().item() > 0.5


# parameter counts by hand: conv in*out*k*k, linear in*out, no biases
EXPECTED_MODELS = {
    # 28 -5-> 24 -P2-> 12 -5-> 8 -P2-> 4: 40*4*4 = 640
    "tssl_mnist_cnn": ((1, 28, 28), 1 * 15 * 25 + 15 * 40 * 25 + 640 * 300 + 300 * 10),
    "tssl_fmnist_mlp": ((1, 28, 28), 784 * 400 + 400 * 400 + 400 * 10),
    # padding 2: 28 -> 28 -P2-> 14 -> 14 -P2-> 7: 64*7*7 = 3136
    "tssl_fmnist_cnn": ((1, 28, 28), 1 * 32 * 25 + 32 * 64 * 25 + 3136 * 1024 + 1024 * 10),
    # padding 1: 32, 32, P2 16, P2 8, 8, 8: 256*8*8 = 16384
    "tssl_cifar10_cnn": ((3, 32, 32), 9 * (3 * 96 + 96 * 256 + 256 * 384 + 384 * 384 + 384 * 256)
                         + 16384 * 1024 + 1024 * 1024 + 1024 * 10),
    # 512*8*8 = 32768
    "tssl_cifar10_large": ((3, 32, 32), 9 * (3 * 128 + 128 * 256 + 256 * 512 + 512 * 1024 + 1024 * 512)
                           + 32768 * 1024 + 1024 * 512 + 512 * 10),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_registered_models_parameter_counts_and_output_shapes(name):
    in_shape, n_params = EXPECTED_MODELS[name]
    rule = create_rule("tssl")
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        model = create_model(name).eval()
        assert count_parameters(model) == n_params
        assert model.time_steps == 5 and model.tau_m == 5.0 and model.tau_s == 3.0
        assert rule.predict(model, torch.zeros(2, *in_shape)).shape == (2, 10)
        a, rec = model.simulate(torch.zeros(5, 2, *in_shape), model.surrogate_neuron)  # time-first input
    assert a.shape == (5, 2, 10) and rec.time_steps == 5
    assert [e.dst for e in model.graph()] == model.layer_names()
    assert len(model.layer_names()) == len(EXPECTED_ARCH[name].split("-")) - EXPECTED_ARCH[name].count("P") + 1


EXPECTED_ARCH = {
    "tssl_mnist_cnn": "15C5-P2-40C5-P2-300",
    "tssl_fmnist_mlp": "400-400",
    "tssl_fmnist_cnn": "32C5-P2-64C5-P2-1024",
    "tssl_cifar10_cnn": "96C3-256C3-P2-384C3-P2-384C3-256C3-1024-1024",
    "tssl_cifar10_large": "128C3-256C3-P2-512C3-P2-1024C3-512C3-1024-512",
}


def test_mnist_net_on_cpu_and_reference_initialisation():
    torch.manual_seed(0)
    model = create_model("tssl_cifar10_cnn", arch="96C3-64", in_shape=[3, 8, 8])
    conv, fc1, out = model.weight_layers()
    bound = 5.0 / math.sqrt(3 * 9)  # PyTorch's default conv init U(-1/sqrt(fan_in), ..) times 5
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    assert abs(fc1.weight.std().item() - math.sqrt(2 / (96 * 64))) < 0.05 * math.sqrt(2 / (96 * 64))  # Kaiming normal
    assert isinstance(model.layers[1][0], PSPDropout) and model.layers[1][0].p == 0.2
    mnist = create_model("tssl_mnist_cnn")
    logits = create_rule("tssl").predict(mnist.eval(), torch.rand(2, 1, 28, 28))
    assert logits.shape == (2, 10) and (logits >= 0).all()


def test_bptt_rule_trains_a_tssl_model():
    torch.manual_seed(0)
    model = create_model("tssl_mnist_cnn", arch="4C5-P2-20", in_shape=[1, 12, 12])
    rule = create_rule("bptt")
    model = rule.prepare(model)
    x = torch.rand(4, 1, 12, 12) * 3
    y = torch.tensor([1, 2, 3, 4])
    out = rule.step(model, x, y, F.cross_entropy)
    assert out.logits.shape == (4, 10) and torch.isfinite(out.loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_synaptic_operations_count_each_spike_through_pooling_and_fan_out():
    torch.manual_seed(0)
    model = create_model("tssl_mnist_cnn", arch="2C3-P2-5", in_shape=[1, 6, 6], num_classes=3).double()
    with torch.no_grad():
        for layer in model.weight_layers():
            layer.weight.mul_(4)
    x = torch.rand(2, 1, 6, 6, dtype=D) * 3
    spikes = {}

    def neuron(cur):
        a, s = model.surrogate_neuron(cur)
        spikes[len(spikes)] = s
        return a, s

    _, rec = model.simulate(x, neuron)
    s1, s2 = spikes[0], spikes[1]  # [T, 2, 2, 4, 4] conv spikes, [T, 2, 5] hidden spikes
    assert 0 < s1.sum() < s1.numel() and s2.sum() > 0
    # conv spikes -> 2x2 sum pooling (each spike one event to its window) -> Linear(8, 5): 5 per spike
    assert rec.synops["layers.1"].item() == s1.sum().item() * 5
    assert rec.synops["layers.2"].item() == s2.sum().item() * 3
    assert set(rec.synops) == {"layers.1", "layers.2"}


def test_config_files_train_from_the_cli(tmp_path, capsys):
    from pathlib import Path

    from bioprop.cli import main

    cfg = Path(__file__).resolve().parent.parent / "configs" / "tssl_fmnist_cnn.yaml"
    rc = main(["train", "--config", str(cfg), "--device", "cpu", "data=mnist_embedded", "data.train_limit=200",
               "data.val_fraction=0.2", "model.arch=4C5-P2-16", "train.epochs=1", f"train.out_dir={tmp_path}"])
    assert rc == 0
    out = capsys.readouterr().out
    assert '"val_acc"' in out and '"test_acc"' in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("loss", ["kernel", "count"])
def test_cuda_graph_step_equals_eager_step(loss):
    """float64 (no TF32): the graphed and eager steps must agree to rounding over several optimizer
    steps and two batch shapes."""
    results = []
    for graph in (False, True):
        torch.manual_seed(0)
        model = create_model("tssl_fmnist_cnn", arch="8C5-P2-16C5-P2-64", padding=2).cuda().double()
        rule = create_rule("tssl", loss=loss, cuda_graph=graph)
        model = rule.prepare(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)
        trace = []
        for b in (8, 8, 5, 8, 5):
            x = (torch.rand(b, 1, 28, 28, generator=g, dtype=D) * 3).cuda()
            y = torch.randint(0, 10, (b,), generator=g).cuda()
            opt.zero_grad(set_to_none=True)
            out = rule.step(model, x, y, F.cross_entropy)
            trace.append((out.loss.clone(), out.logits.clone(), out.stats["rate/lif1"].clone()))
            opt.step()
            rule.after_step(model)
        assert not rule._graph_failed
        results.append((trace, [p.detach().clone() for p in model.parameters()]))
    (t0, p0), (t1, p1) = results
    for a, b in zip(t0, t1):
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-12)
    for u, v in zip(p0, p1):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-12)
