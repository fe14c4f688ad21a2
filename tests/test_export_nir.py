"""NIR export and import (bioprop.export): the graph computes the model's function (run by the
discrete-time reference runner), the file round trip rebuilds the same model, what has no exact
NIR form is refused, and an external consumer (snnTorch's NIR import) gives the same outputs."""

import copy
import dataclasses

import pytest
import torch

nir = pytest.importorskip("nir")

from bioprop.cli import main  # noqa: E402
from bioprop.export import NIRExportError, from_nir, load_nir, reduce_readout, run_nir, save_nir, to_nir  # noqa: E402
from bioprop.models import create_model  # noqa: E402

# every covered model family, small; thresholds low enough that every layer spikes
CASES = [
    ("spiking_mlp", dict(hidden=[20, 16], batch_norm=True, in_shape=(1, 6, 6), time_steps=10, threshold=0.5)),  # LIF, reset by subtraction
    ("spiking_mlp", dict(hidden=[20], neuron="if", reset="zero", in_shape=(1, 6, 6), time_steps=6)),  # IF, reset to zero
    ("spiking_mlp", dict(hidden=[20], neuron="lif", reset="zero", leak=0.8, in_shape=(36,), time_steps=6)),  # LIF
    ("spiking_convnet", dict(channels=[4, 6], hidden=[12], pool="avg", in_shape=(1, 8, 8), time_steps=5)),
    ("tssl_fmnist_mlp", dict(arch="30-20", in_shape=(1, 6, 6), threshold=0.3)),
    ("tssl_mnist_cnn", dict(arch="4C3-P2-6C3-P2-10", in_shape=(1, 14, 14), dropout=0.2, threshold=0.2)),
    ("f400", dict(hidden=24, in_shape=(1, 6, 6), neuron="if", time_steps=8)),
    ("f400", dict(hidden=24, in_shape=(1, 6, 6), neuron="lif", time_steps=8)),
    ("f64c5", dict(channels=4, in_shape=(1, 8, 8), time_steps=12, threshold=1.5)),
    ("alexnet_f", dict(channels=(4, 4, 6, 6, 4), in_shape=(3, 8, 8), time_steps=10, threshold=1.5, leak=0.9)),
    ("cifarnet_f", dict(channels=(4, 6, 6, 8, 4), in_shape=(3, 8, 8), time_steps=6, neuron="if")),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CASES)]


def _trained_stats(model, steps=3):
    """A few train-mode passes so BatchNorm running statistics are not the identity."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.rand(8, *model.in_shape, dtype=next(model.parameters()).dtype))
    return model.eval()


def _model(name, kw, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return _trained_stats(create_model(name, **kw).to(dtype))


def _spikes(model, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    return (torch.rand((model.time_steps, batch) + tuple(model.in_shape), generator=g) < 0.5).to(dtype)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_graph_computes_the_model(name, kw):
    """The exported graph, run step by step with NIR's neuron ODEs under forward Euler (dt of the
    graph), gives the model's logits on the same spike train (float64: to rounding)."""
    model = _model(name, kw)
    x = _spikes(model)
    ref = model(x)
    assert ref.abs().sum() > 0
    got = run_nir(to_nir(model), x)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_file_round_trip_gives_the_same_model(name, kw, tmp_path):
    """bioprop -> .nir file -> bioprop: same class, same parameters, same outputs (float32, exact)."""
    model = _model(name, kw, dtype=torch.float32)
    x = _spikes(model)
    path = save_nir(model, tmp_path / "m.nir")
    back = from_nir(path)
    assert type(back) is type(model)
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    assert torch.equal(back(x), model(x))
    # and the file's graph, run by the reference runner, computes the same logits (float32 rounding)
    torch.testing.assert_close(run_nir(load_nir(path), x.double()).float(), model(x), rtol=1e-4, atol=1e-5)


def test_subtract_reset_is_written_with_leak_after_reset():
    """IDE's LIF (reset by subtraction, leak after the reset) is LI -> Threshold with the reset fed
    back through Scale(-leak * theta), a cycle of one step; never NIR's LIF (which resets to zero)."""
    model = _model("f400", dict(hidden=8, in_shape=(4,), neuron="lif", leak=0.9, threshold=2.0, time_steps=4))
    g = to_nir(model)
    assert type(g.nodes["lif1.v"]).__name__ == "LI" and type(g.nodes["lif1"]).__name__ == "Threshold"
    assert float(g.nodes["lif1.reset"].scale.flat[0]) == pytest.approx(-0.9 * 2.0)
    assert ("lif1", "lif1.reset") in g.edges and ("lif1.reset", "lif1.v") in g.edges
    assert ("feedback", "lif1.v") in g.edges and not any(type(n).__name__ == "LIF" for n in g.nodes.values())


def test_refuses_what_has_no_exact_form(tmp_path):
    with pytest.raises(NIRExportError, match="max pooling"):
        to_nir(create_model("spiking_convnet", channels=[2], hidden=[], in_shape=(1, 6, 6)))
    big = create_model("alexnet_f", channels=(4, 4, 4, 4, 4), in_shape=(3, 16, 16))
    with pytest.raises(NIRExportError, match="transposed convolution"):
        to_nir(big, dense_limit=1000)
    with pytest.raises(NIRExportError, match="no NIR export"):
        to_nir(create_model("mlp", hidden=[4]))


def test_edited_or_foreign_graph_is_refused(tmp_path):
    model = _model("spiking_mlp", dict(hidden=[6], in_shape=(4,), time_steps=3), dtype=torch.float32)
    g = to_nir(model)
    g.nodes["layers.0.1"].weight = g.nodes["layers.0.1"].weight * 1.5
    with pytest.raises(NIRExportError, match="changed after export"):
        from_nir(g)
    foreign = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": [4]}),
                                  "output": nir.Output(output_type={"output": [4]})},
                           edges=[("input", "output")], metadata={})
    with pytest.raises(NIRExportError, match="not written by bioprop"):
        from_nir(foreign)


def test_cli_export(tmp_path, capsys):
    from bioprop.train import RunConfig, Trainer

    cfg = RunConfig.from_dict({
        "model": {"name": "spiking_mlp", "hidden": [16], "time_steps": 3},
        "rule": {"name": "bptt"},
        "data": {"name": "mnist_embedded", "train_limit": 64, "batch_size": 32},
        "train": {"epochs": 1, "seed": 0, "device": "cpu", "out_dir": str(tmp_path), "progress": False,
                  "name": "run"},
    })
    run_dir = Trainer(cfg, log=lambda *a: None).fit()["run_dir"]
    out = tmp_path / "m.nir"
    assert main(["export", run_dir, "--format", "nir", str(out)]) == 0
    back = from_nir(out)
    assert back.model_name == "spiking_mlp"
    assert main(["export", str(tmp_path / "nothing"), str(out)]) == 2
    assert "no bioprop checkpoint" in capsys.readouterr().err


# -- an external consumer: snnTorch's NIR import ------------------------------------------------
def _snntorch_run(graph, x, chain):
    """Run ``graph`` through snnTorch's NIR import: every node converted by snnTorch's own
    converter (its recurrent LIF <-> Linear subgraph becomes an RLeaky), chained in order.
    (snnTorch 1.0.0's ``import_from_nir`` itself fails on any recurrent graph with nirtorch 2.x,
    so the nodes are chained here; the neuron semantics are snnTorch's.)"""
    pytest.importorskip("snntorch")
    pytest.importorskip("nirtorch")
    from snntorch import import_nir as imp

    g = imp._replace_rnn_subgraph_with_nirgraph(copy.deepcopy(graph))
    mods = {k: imp._nir_to_snntorch_module(n, init_hidden=True) for k, n in g.nodes.items()}
    outs = []
    for t in range(x.shape[0]):
        h = x[t]
        for k in chain:
            h = mods[k](h)
            h = h[0] if isinstance(h, tuple) else h
        outs.append(h)
    return torch.stack(outs)


def test_snntorch_feedforward_tssl():
    """TSSL-BP MLP (CubaLIF): snnTorch's Synaptic neurons give the same output spikes, hence logits."""
    model = _model("tssl_fmnist_mlp", dict(arch="30-20", in_shape=(36,), threshold=0.3), dtype=torch.float32)
    x = _spikes(model, batch=4)
    g = to_nir(model)
    out = _snntorch_run(g, x, ["layers.0", "lif1", "layers.1", "lif2", "layers.2", "output_neurons"])
    ours = run_nir(g, x, reduce=False)
    assert ours.sum() > 0
    assert torch.equal(out, ours)  # spikes: equal (float32 membranes; no threshold tie on this input)
    torch.testing.assert_close(reduce_readout(out, {"reduce": "psp_sum", "tau_s": model.tau_s}), model(x),
                               rtol=1e-5, atol=1e-5)


def test_snntorch_recurrent_feedback():
    """F400 with LIF neurons reset to zero (NIR's LIF; snnTorch's import knows no other reset) and
    its feedback cycle: snnTorch's RLeaky gives the same readout currents, hence logits."""
    torch.manual_seed(0)
    model = create_model("f400", hidden=30, in_shape=(36,), time_steps=8, fb_norm_range=1.5, fb_gain_init=1.4)
    _trained_stats(model)
    model.neuron = dataclasses.replace(model.neuron, reset="zero")
    x = _spikes(model, batch=4)
    g = to_nir(model)
    out = _snntorch_run(g, x, ["encoder.1", "lif1", "classifier"])
    ours = run_nir(g, x, reduce=False)
    torch.testing.assert_close(out, ours.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reduce_readout(out, {"reduce": "leak_weighted_mean", "leak": model.neuron.leak}),
                               model(x), rtol=1e-5, atol=1e-5)
