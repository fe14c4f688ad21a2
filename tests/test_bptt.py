"""BPTT through the unrolled simulation: gradients against finite differences."""

import pytest
import torch
import torch.nn.functional as F

from bioprop import create_model, create_rule
from bioprop.neurons import relaxed


def _tiny(kind: str, **kw):
    torch.manual_seed(0)
    if kind == "mlp":
        m = create_model("spiking_mlp", in_shape=[4], hidden=[5, 3], num_classes=2, time_steps=4,
                         threshold=0.5, leak=0.8, **kw)
        x = torch.randn(3, 4, dtype=torch.float64)
    else:
        m = create_model("spiking_convnet", in_shape=[1, 6, 6], channels=[2, 3], hidden=[4], num_classes=2,
                         time_steps=3, batch_norm=False, threshold=0.5, leak=0.7, **kw)
        x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    m = m.double()
    for p in m.parameters():
        p.data.mul_(2.0)  # enough drive for spikes to matter
    return m, x


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_bptt_gradient_equals_finite_differences_of_smooth_relaxation(kind, reset):
    m, x = _tiny(kind, reset=reset)
    m.spike = relaxed("atan", 2.0)  # smooth network: BPTT must be its exact gradient
    y = torch.tensor([0, 1, 1][: x.shape[0]])
    rule = create_rule("bptt")
    m = rule.prepare(m)
    m.zero_grad()
    rule.step(m, x, y, F.cross_entropy)
    params = dict(m.named_parameters())
    eps = 1e-6
    checked = 0
    for name, p in params.items():
        flat = p.data.view(-1)
        idx = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(1))[:6]
        for i in idx:
            old = flat[i].item()
            flat[i] = old + eps
            lp = F.cross_entropy(m(x), y).item()
            flat[i] = old - eps
            lm = F.cross_entropy(m(x), y).item()
            flat[i] = old
            fd = (lp - lm) / (2 * eps)
            assert abs(p.grad.view(-1)[i].item() - fd) <= 1e-6 * max(1.0, abs(fd)), (name, int(i))
            checked += 1
    assert checked > 20


def test_bptt_uses_surrogate_and_heaviside_forward():
    m, x = _tiny("mlp")
    logits, rec = m.run(x)
    # forward spikes are binary: spike counts are integers
    for v in rec.spikes.values():
        assert float(v) == round(float(v))
    rule = create_rule("bptt")
    m = rule.prepare(m)
    rule.step(m, x, torch.tensor([0, 1, 1]), F.cross_entropy)
    # the surrogate lets gradient reach the first layer
    first = next(iter(m.parameters()))
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_detach_reset_changes_the_gradient():
    grads = []
    for detach in (False, True):
        m, x = _tiny("mlp", detach_reset=detach)
        m.spike = relaxed("atan", 2.0)
        loss = F.cross_entropy(m(x), torch.tensor([0, 1, 1]))
        loss.backward()
        grads.append(next(iter(m.parameters())).grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_bptt_rejects_ann():
    with pytest.raises(TypeError, match="spiking"):
        create_rule("bptt").prepare(create_model("mlp"))


def test_spike_train_input_time_first():
    m = create_model("spiking_mlp", in_shape=[4], hidden=[5], num_classes=2, time_steps=9)
    x = (torch.rand(9, 3, 4) > 0.5).float()
    logits, rec = m.run(x)
    assert logits.shape == (3, 2) and rec.time_steps == 9
    m.time_steps = 6  # the input's T=9 would be simulated, not the model's 6: refused
    with pytest.raises(ValueError, match=r"T=9 time steps but model.time_steps=6"):
        m.run(x)
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        m(torch.randn(3, 5))


def test_bptt_time_steps_refuses_a_spike_input_of_another_t():
    """A spike-train input sets T itself: ``rule.time_steps`` naming another T is refused by the
    rule (naming the rule's field), not passed on to the model as if the model were misconfigured."""
    import torch.nn.functional as F

    from bioprop import create_rule

    torch.manual_seed(0)
    m = create_model("spiking_mlp", in_shape=[4], hidden=[5], num_classes=2, time_steps=6)
    rule = create_rule("bptt", time_steps=2)
    m = rule.prepare(m)
    spikes, y = (torch.rand(6, 3, 4) < 0.5).float(), torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match=r"bptt: rule.time_steps=2, but the spike-train input has T=6 time steps"):
        rule.step(m, spikes, y, F.cross_entropy)
    assert m.time_steps == 6
    ok = create_rule("bptt", time_steps=6)
    assert torch.isfinite(ok.step(ok.prepare(m), spikes, y, F.cross_entropy).loss)


def test_bptt_time_steps_is_training_only():
    """``rule.time_steps`` sets T for training steps; evaluation keeps the model's T."""
    import torch.nn.functional as F

    from bioprop import create_rule

    torch.manual_seed(0)
    m = create_model("spiking_mlp", in_shape=[4], hidden=[5], num_classes=2, time_steps=6)
    rule = create_rule("bptt", time_steps=2)
    m = rule.prepare(m)
    assert m.time_steps == 6
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 0])
    out = rule.step(m, x, y, F.cross_entropy)
    assert out.stats is not None and m.time_steps == 6
    seen = []
    orig = type(m).run

    def spy(self, inp):
        seen.append(self.time_steps)
        return orig(self, inp)

    type(m).run = spy
    try:
        rule.step(m, x, y, F.cross_entropy)
        rule.predict(m, x)
    finally:
        type(m).run = orig
    assert seen == [2, 6] and m.time_steps == 6
