"""The explicit contracts between rules and models (bioprop.models.protocols), and what they buy:
layer rules act on every weight layer of the feedback SNNs, one FeedbackSNN implementation
whose multi-layer map is checked against the simulated dynamics, and stable checkpoints."""

import copy
import json
from pathlib import Path
from typing import List, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bioprop import MODELS, create_model, create_rule
from bioprop.models import (BlockModel, EquilibriumModel, ProtocolError, PSPModel, SpikingModel, blocks_of,
                            models_satisfying, require, satisfies)
from bioprop.models.feedback import FeedbackSNN
from bioprop.rules.alignment import fb_layers

DATA = Path(__file__).parent / "data"


# -- protocol checks ------------------------------------------------------------------------

@pytest.mark.parametrize("rule,model,missing,fits", [
    ("ide", "spiking_mlp", "sample_masks(), begin(), simulate(), equilibrium_map(), readout()",
     "alexnet_f, cifarnet_f, f400, f64c5"),
    ("bptt", "mlp", "time_steps, run()", "alexnet_f, cifarnet_f, f400, f64c5, spiking_convnet, spiking_mlp, tssl_"),
    ("tssl", "f400", "tau_m, tau_s, weight_layers()", "tssl_cifar10_cnn, tssl_cifar10_large, tssl_fmnist_cnn"),
    ("pc", "f400", "blocks()", "convnet, ekdaa_cnn, ekdaa_mlp, mlp, pc_cnn, resnet18, resnet20"),
])
def test_a_rule_names_the_missing_part_and_the_models_that_fit(rule, model, missing, fits):
    kw = {"hidden": 8} if model == "f400" else {}
    with pytest.raises(ProtocolError) as e:
        create_rule(rule).prepare(create_model(model, **kw))
    msg = str(e.value)
    assert "\n" not in msg
    assert f"rule {rule!r} needs" in msg and f"{model} lacks {missing};" in msg
    assert f"registered models that do: {fits}" in msg


def test_a_model_missing_one_part_gets_an_error_naming_that_part():
    class NoReadout(nn.Module):
        in_shape = (4,)

        def sample_masks(self, batch, generator=None):
            return None

        def begin(self, x, masks=None):
            raise AssertionError

        def simulate(self, st, time_steps=None, fast=None):
            raise AssertionError

        def equilibrium_map(self, a, st, detach=False):
            raise AssertionError

    with pytest.raises(ProtocolError, match=r"NoReadout lacks readout\(\); registered"):
        create_rule("ide").prepare(NoReadout())
    with pytest.raises(ProtocolError, match=r"lacks blocks\(\)"):
        blocks_of(NoReadout())
    assert blocks_of(nn.Sequential(nn.Linear(2, 2))) and satisfies(nn.Sequential, BlockModel)


#: small configurations of the registered models that are slow at their defaults
_SMALL = {"f400": dict(hidden=8), "f64c5": dict(channels=4), "alexnet_f": dict(channels=(2, 2, 2, 2, 2)),
          "cifarnet_f": dict(channels=(2, 2, 2, 2, 2)), "resnet18": dict(), "tssl_cifar10_large": dict(arch="8C3-8"),
          "tssl_cifar10_cnn": dict(arch="8C3-8")}
#: every registered model with a ``time_steps`` field (the test below checks the list is complete)
_TIMED_MODELS = ["spiking_mlp", "spiking_convnet", "tssl_mnist_cnn", "tssl_fmnist_mlp", "tssl_fmnist_cnn",
                 "tssl_cifar10_cnn", "tssl_cifar10_large", "f400", "f64c5", "alexnet_f", "cifarnet_f", "emstdp_mlp"]


def test_every_model_with_time_steps_is_in_the_spike_input_check():
    timed = [n for n in MODELS.names() if getattr(create_model(n, **_SMALL.get(n, {})), "time_steps", None) is not None]
    assert sorted(timed) == sorted(_TIMED_MODELS)


@pytest.mark.parametrize("name", _TIMED_MODELS)
def test_a_spike_input_whose_t_differs_from_model_time_steps_is_refused(name):
    """Called directly (not through the trainer, which checks the config), a model given a spike
    train ``[T, B, ...]`` of another T than its ``time_steps`` refuses it with the one-line error,
    instead of silently simulating the input's T; the matching T runs. emstdp_mlp encodes images
    itself and takes no spike-train input at all."""
    torch.manual_seed(0)
    model = create_model(name, **_SMALL.get(name, {})).eval()
    T = model.time_steps
    if name == "emstdp_mlp":
        with pytest.raises(ValueError, match=r"does not match the expected \[B, 1, 28, 28\]"):
            model(torch.zeros((T, 2) + tuple(model.in_shape)))
        return
    spikes = (torch.rand((T + 1, 2) + tuple(model.in_shape)) < 0.3).float()
    with pytest.raises(ValueError, match=rf"the spike-train input has T={T + 1} time steps but "
                                         rf"model.time_steps={T}; set model.time_steps={T + 1} "):
        model(spikes)
    with torch.no_grad():
        assert model(spikes[:T]).shape[0] == 2


def test_registered_classes_and_built_models_agree_on_their_protocols():
    """The suggestions come from the classes the registrations declare: they must say what the
    built models really are (runtime isinstance checks of the protocols)."""
    small = _SMALL
    for name in MODELS.names():
        assert MODELS.returns(name) is not None, f"{name} is registered without returns="
        model = create_model(name, **small.get(name, {}))
        for proto in (BlockModel, SpikingModel, PSPModel, EquilibriumModel):
            assert isinstance(model, proto) == (name in models_satisfying(proto)), (name, proto.__name__)
            assert isinstance(model, proto) == satisfies(model, proto)
    require(create_model("f400", hidden=8), EquilibriumModel, "test")


# -- layer rules see every weight layer of the feedback SNNs ---------------------------------

_SMALL = {
    "f400": dict(in_shape=[1, 5, 5], hidden=12, num_classes=3),
    "f64c5": dict(in_shape=[1, 8, 8], channels=3, num_classes=3),
    "alexnet_f": dict(in_shape=[3, 8, 8], channels=[3, 4, 4, 3, 2], num_classes=3),
    "cifarnet_f": dict(in_shape=[3, 8, 8], channels=[2, 3, 4, 3, 3], num_classes=3),
}


def _base(name: str) -> Tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    m = create_model(name, dropout=0.0, time_steps=6, fb_gain_init=0.9, **_SMALL[name]).double()
    x = torch.randn((5,) + tuple(m.in_shape), dtype=torch.float64) + 0.5
    return m, x, torch.tensor([0, 1, 2, 1, 0])


_IDE = dict(solver="broyden", max_iter=100, tol=1e-12)


def _weight_grads(m: nn.Module) -> dict:
    return {k: p.grad.detach().clone() for k, p in m.named_parameters() if p.grad is not None and "weight_b" not in k}


def _step(model: nn.Module, rule, x, y) -> dict:
    model.train()
    rule.step(model, x, y, F.cross_entropy)
    return _weight_grads(model)


def _layer_rule(name: str):
    return create_rule(name, model_rule="ide", model_rule_config=_IDE, angle_every=0)


def _converted(m: nn.Module) -> List[Tuple[str, nn.Module]]:
    return list(fb_layers(m))


@pytest.mark.filterwarnings("ignore:.*exact weight transport")
@pytest.mark.parametrize("rule", ["fa", "kp", "wm"])
@pytest.mark.parametrize("name", list(_SMALL))
def test_layer_rules_under_ide_act_on_every_weight_layer(name, rule):
    """With B = W every gradient equals plain ide's; changing the B of any one layer (the
    classifier, and each inner convolution of the multi-layer models) changes the gradient of the
    encoder below it. (Before the models applied every layer as its module, the inner
    convolutions' B was never used: their B could be anything.)"""
    base, x, y = _base(name)
    plain = _step(copy.deepcopy(base), create_rule("ide", **_IDE), x, y)

    def with_b(scale_layer=None):
        r = _layer_rule(rule)
        m = r.prepare(copy.deepcopy(base))
        with torch.no_grad():
            for lname, layer in _converted(m):
                layer.weight_b.copy_(layer.weight * (-3.0 if lname == scale_layer else 1.0))
        return _step(m, r, x, y), [n for n, _ in _converted(m)]

    same, layers = with_b()
    assert set(same) == set(plain)
    for k in plain:
        torch.testing.assert_close(same[k], plain[k], rtol=1e-9, atol=1e-12, msg=k)
    inner = {f"convs.{i}" for i in range(4)} if name in ("alexnet_f", "cifarnet_f") else set()
    assert {"encoder" if n.startswith("encoder") else n for n in layers} == {"encoder", "classifier"} | inner
    enc = next(k for k in plain if k.startswith("encoder") and k.endswith("weight"))
    for lname in layers:
        if lname.startswith("encoder"):
            continue  # its B only carries the error into the input
        changed, _ = with_b(lname)
        rel = (changed[enc] - plain[enc]).norm() / plain[enc].norm()
        assert rel > 1e-3, f"{name}/{rule}: the B of {lname} does not reach the encoder's gradient ({rel:.2e})"


def test_a_layer_rule_names_the_weight_layers_it_cannot_convert():
    with pytest.warns(RuntimeWarning, match=r"fa: exact weight transport kept in feedback \(SpectralNormOperator\)"):
        _layer_rule("fa").prepare(create_model("alexnet_f", **_SMALL["alexnet_f"]))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # BatchNorm keeps backprop by design: no warning
        create_rule("fa").prepare(create_model("resnet20"))


def test_the_fast_simulation_honours_layer_rules_or_says_it_does_not():
    """bf16 folding computes a B-carrying conv from its weight (the simulation is forward-only,
    and its forward is exactly Conv2d's); a conv module with another forward runs as its module,
    with a warning."""
    from bioprop.neurons import SimOptions

    class Doubled(nn.Conv2d):  # not a plain Conv2d forward
        def forward(self, x):
            return 2 * super().forward(x)

    conv, bn = Doubled(2, 2, 3, padding=1), nn.BatchNorm2d(2).eval()
    ref = lambda s: bn(conv(s))  # noqa: E731
    with pytest.warns(RuntimeWarning, match="Doubled is not a plain Conv2d"):
        f = SimOptions("bf16").conv_bn(conv, bn, None, reference=ref)
    s = (torch.rand(1, 2, 4, 4) > 0.5).float()
    with torch.no_grad():
        assert torch.equal(f(s), ref(s))
    r = create_rule("fa", model_rule="ide", model_rule_config={"precision": "bf16"})
    with pytest.warns(RuntimeWarning, match="exact weight transport kept in feedback"):
        m = r.prepare(create_model("alexnet_f", dropout=0.0, time_steps=3, **_SMALL["alexnet_f"]))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        r.step(m, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), F.cross_entropy)


# -- the multi-layer map, checked against the dynamics ---------------------------------------

def _written_out_map(m: FeedbackSNN, x: torch.Tensor, w_fb: torch.Tensor):
    """AlexNet-F's equilibrium map (eval mode, running statistics), written out from the paper:
    a1 = clamp((W_fb a5 + BN(F x)) / Vth), a_{l+1} = clamp(BN_l(F_l a_l) / Vth)."""
    vth = m.neuron.threshold

    def bn_eval(z, bn):
        shape = (1, -1, 1, 1)
        return (z - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) \
            * bn.weight.view(shape) + bn.bias.view(shape)

    drive = bn_eval(F.conv2d(x, m.encoder.weight, m.encoder.bias, 2, 1), m.bn)

    def f(a5, feedback_sign=1.0):
        h = torch.clamp((feedback_sign * F.conv_transpose2d(a5, w_fb, stride=2, padding=1, output_padding=1)
                         + drive) / vth, 0, 1)
        for conv, bn in zip(m.convs, m.bns):
            h = torch.clamp(bn_eval(F.conv2d(h, conv.weight, conv.bias, conv.stride, conv.padding), bn) / vth, 0, 1)
        return h

    return f


def _fixed_point(f, shape, sign=1.0):
    a = torch.zeros(shape, dtype=torch.float64)
    for _ in range(500):
        a_next = f(a, sign)
        if (a_next - a).abs().max() < 1e-13:
            return a_next
        a = a_next
    raise AssertionError("the written-out map did not converge")


def test_multilayer_if_rates_converge_to_the_fixed_point_of_the_map():
    """IF neurons, long T: the simulated rates of AlexNet-F (small channel counts) reach the fixed
    point of the map computed by plain iteration of the map written out here, and the model's own
    map has the same fixed point. (Flipping the sign of the feedback term in the model's map, or
    dropping a layer's BatchNorm, fails this test.)"""
    torch.manual_seed(3)
    m = create_model("alexnet_f", neuron="if", in_shape=[3, 8, 8], channels=[3, 4, 4, 3, 3], num_classes=3,
                     dropout=0.0, power_iters=0, fb_gain_init=0.9, threshold=1.5).double().eval()
    with torch.no_grad():
        for bn in [m.bn, *m.bns]:
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(1.0, 2.0)
            bn.bias.uniform_(0.4, 1.0)
        m.bn.bias.uniform_(0.5, 1.0)
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        st = m.begin(x)
        f = _written_out_map(m, x, st.weight)
        shape = (3,) + m.hidden_shape
        a_star = _fixed_point(f, shape)
        a_flip = _fixed_point(f, shape, -1.0)
        feedback_effect = float((a_star - a_flip).abs().mean())
        assert feedback_effect > 0.01  # the feedback matters here
        assert 0.05 < float(a_star.mean()) < 0.95
        torch.testing.assert_close(m.equilibrium_map(a_star, st), a_star, rtol=0, atol=1e-12)
        errs = []
        for T in (250, 2000):
            a_T, _ = m.simulate(st, time_steps=T)
            errs.append(float((a_T - a_star).abs().mean()))
    # mean |a_T - a*| falls with T (about 1/T for IF) and ends far below the feedback's effect
    assert errs[1] < 1e-3 and errs[1] < 0.5 * errs[0] and 20 * errs[1] < feedback_effect, (errs, feedback_effect)


# -- one implementation, same checkpoints ----------------------------------------------------

@pytest.mark.parametrize("name", list(_SMALL))
def test_state_dict_keys_and_parameter_order_are_those_of_earlier_checkpoints(name):
    """``tests/data/feedback_snn_state_keys.json`` was written by the two feedback classes this
    one replaced (commit 6882537): the same keys, shapes and parameter order (optimizer state is
    indexed by it) load earlier checkpoints unchanged."""
    ref = json.loads((DATA / "feedback_snn_state_keys.json").read_text())[name]
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in ref["kwargs"].items()}
    m = create_model(name, **kw)
    assert [[k, list(v.shape)] for k, v in m.state_dict().items()] == ref["state_dict"]
    assert [k for k, _ in m.named_parameters()] == ref["parameters"]
    old = {k: torch.randn(s) if s else torch.tensor(3) for k, s in ref["state_dict"]}
    m.load_state_dict(old, strict=True)


def test_b_is_independent_of_w_when_the_rule_and_the_model_share_a_seed():
    """torch.manual_seed(0) for the model and a rule with its default seed 0: B must still be an
    independent draw (it reproduced W exactly in every bias-free layer, making FA exact BP)."""
    from bioprop.metrics import angle_degrees_tensor
    for name in ("resnet20", "convnet"):
        torch.manual_seed(0)
        model = create_rule("fa").prepare(create_model(name))
        angles = [float(angle_degrees_tensor(layer.weight_b, layer.weight)) for _, layer in fb_layers(model)]
        assert min(angles) > 60, (name, angles)
