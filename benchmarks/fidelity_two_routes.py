"""Side-by-side check of the Two Routes rules (``fa``, ``kp``, ``wm``, ``ia``, ``sa``, ``aa``)
against the original code (neuroailab/Neural-Alignment, TensorFlow 1 graph code, run under
TensorFlow 2's ``tf.compat.v1``): the same weights, inputs, output gradient and noise on both
sides; compared are the regulariser's value, its gradient with respect to the backward kernel
``B`` and the forward kernel ``W``, and the layer's backward pass (``dx`` through ``B``, ``dW``,
and KP's ``dB = dW``).

    python benchmarks/fidelity_two_routes.py [--ref .ref/neural-alignment] [--tf-python /tmp/venv-ekdaa/bin/python]

Getting the reference (never committed): clone it into the ignored ``.ref/`` folder,
``git clone https://github.com/neuroailab/Neural-Alignment .ref/neural-alignment`` (or the
``fetch`` tool's mirror of ``github:neuroailab/Neural-Alignment``; tested at d83defb), and an
interpreter with TensorFlow 2 (``pip install tensorflow-cpu``; tested: 2.21) given by
``--tf-python``. The reference is imported from ``.ref/`` at run time and patched there only: its
``Alignments/alignment.py`` and ``Layers/operations.py`` get ``tf.compat.v1`` for ``tf`` (they
use ``tf.add_to_collection`` and a graph), ``operations``' angle logging (``Metrics.utils``) is
stubbed, and ``tf.random.normal`` / ``tf.random.uniform`` inside ``alignment.py`` return the noise
our rule drew (the script checks the shape and the standard deviation the reference asks for).

Ours is the rule's own path: a one-layer model (float64, CPU) goes through ``rule.prepare`` and
one ``rule.step`` with the loss ``<out, dy>`` (so the output gradient is ``dy``); ``B.grad`` after
the step is compared with the reference's ``dR/dB`` (``fa``, ``kp``: with its backward op's
``dB``), ``W.grad`` with the reference's ``dW`` (its regulariser's ``dR/dW`` is zero with
``update_forward=False``, the reference's default; ``dR/dW`` is recorded too), ``dx`` with its
op's, and ``rule.layer_regularizer`` (R's value) plus the terms constant in ``B`` that ours leaves
out (``alpha ||W||^2`` in wm and sa, ``gamma ||W||^2`` in ia, ``alpha E||A_W x (+ b)||^2`` in aa)
with the reference's loss. The noise ours drew is replayed from the rule's generator state before
the step (the script checks that R's gradient on the replayed noise equals ``B.grad``). Our
options are the ones the docs name for the reference (``position_mean: false, reg_bias: true,
noise_padding: reference``, ``batch_center`` as the reference's ``batch_center_backward_input``);
the rows ``options: position_mean`` / ``reg_bias`` / ``noise_padding`` flip that one option back to
our default, on the layers where it can matter, and record how far it lands from the reference
(deliberate differences, see docs/methods/alignment.md; for ``noise_padding: zeros`` the reference
gets our noise inside and fresh draws, seed 1, on its padding ring, so that row mixes the ring's
effect with that of another noise draw).

Not compared, because ours does not offer them (docs/methods/alignment.md says so): the
reference's ``update_forward`` (R also trains ``W``), uniform noise, the input / output
standardisations and activations inside R (``center_input``, ``normalize_input``,
``*_forward_output``, ``*_backward_output``, ``activation_forward`` / ``_backward``), and IA's
``reconstruction_reversal``, ``reconstruction_amp`` and ``use_sparse``; all default to off there.
KP's regulariser, ``alpha (||W||^2 + ||B||^2)`` with ``W`` held, is our optimizer's weight decay on
``B`` (``2 alpha``), not the rule's, so for ``fa`` and ``kp`` only the op is compared.

Layers (the reference's conventions: NHWC, ``W`` as ``[in, out]`` / HWIO; a strided convolution
padded with ``tf.pad`` and convolved ``'VALID'`` as its ResNets' ``fixed_padding``, a padded
stride-1 one ``'SAME'``, an unpadded one ``'VALID'`` as its ``basic.conv``): Linear 20-7,
Conv2d 3-5 k3 s1 p0 and k3 s1 p1 on 8x8, Conv2d 3-5 k3 s2 p1 on 8x8 and on 9x9,
Conv2d 3-4 k1 s2 p0 on 8x8 (the ResNet shortcut), each with and without bias; batch 6; inputs
``relu(N(0.5, 1))`` (a non-zero mean, so batch centring matters); noise std 0.7.
Writes one JSON line per case to ``benchmarks/results/fidelity_two_routes.jsonl``: max abs and max
rel difference (``max |ours - ref| / max |ref|``) of each compared quantity, the largest of them,
the reference commit, TF and torch versions and the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: (alpha, beta, gamma) given to the reference: our defaults (checked against the rule's own), KP's
#: alpha is the reference's (ours is the optimizer's weight decay)
COEFFS = {"wm": (1e-3, 1e-3, 0.0), "ia": (2e-3, 1e-3, 1e-3), "sa": (1e-3, 2e-3, 0.0), "aa": (1e-3, 2e-3, 0.0),
          "kp": (1e-3, 0.0, 0.0), "fa": (0.0, 0.0, 0.0)}
SIGMA = 0.7
# (name, kind, in, out, kernel, stride, padding, spatial)
LAYERS = [("linear_20_7", "linear", 20, 7, 0, 1, 0, 0),
          ("conv_k3_s1_p0_8x8", "conv", 3, 5, 3, 1, 0, 8),
          ("conv_k3_s1_p1_8x8", "conv", 3, 5, 3, 1, 1, 8),
          ("conv_k3_s2_p1_8x8", "conv", 3, 5, 3, 2, 1, 8),
          ("conv_k3_s2_p1_9x9", "conv", 3, 5, 3, 2, 1, 9),
          ("conv_k1_s2_p0_8x8", "conv", 3, 4, 1, 2, 0, 8)]
RULE_NAMES = ("fa", "kp", "wm", "ia", "sa", "aa")
N = 6


# ------------------------------------------------------------------------------------------------
# the reference side (TensorFlow; no torch import)

def _load_reference(ref: Path):
    """The reference's ``alignment`` and ``operations`` modules, patched at run time for TF 2."""
    import importlib.util

    import tensorflow as tf2

    tf = tf2.compat.v1
    sys.path.insert(0, str(ref / "Alignments"))
    sys.path.insert(0, str(ref / "Layers"))
    metrics = types.ModuleType("Metrics")
    metrics.utils = types.SimpleNamespace(tensor_angle=lambda *a, **k: None, stats=lambda *a, **k: None)
    sys.modules.setdefault("Metrics", metrics)
    sys.modules.setdefault("Metrics.utils", metrics.utils)

    def load(name, path):
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod

    prim = load("primitives", ref / "Alignments" / "primitives.py")
    align = load("ref_alignment", ref / "Alignments" / "alignment.py")
    ops = load("ref_operations", ref / "Layers" / "operations.py")
    prim.tf = tf
    ops.tf = tf
    noise = {"value": None, "asked": None}

    class _Random:  # the injected noise in place of tf.random.normal / uniform
        def normal(self, shape, mean=0.0, stddev=1.0, **kw):
            noise["asked"] = ("normal", [int(s) for s in tf.get_static_value(shape)], float(mean), float(stddev))
            return tf.constant(noise["value"])

        def uniform(self, shape, **kw):
            raise RuntimeError("the cases use input_distribution='normal'")

    class _TF:
        random = _Random()

        def __getattr__(self, name):
            return getattr(tf, name)

    align.tf = _TF()
    return tf, align, ops, noise


def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _hwio(w):
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def _oihw(w):
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


def reference_case(tf, align, ops, noise, case: dict, arrays: dict) -> dict:
    """One case on the reference: R's value and gradients, the op's dx, dW, dB."""
    rule, kind = case["rule"], case["kind"]
    a, b, g = COEFFS[rule]
    stride, pad = case["stride"], case["padding"]
    W, B, x, dy = arrays["W"], arrays["B"], arrays["x"], arrays["dy"]
    bias = arrays.get("bias")
    common = dict(input_distribution="normal" if rule in ("wm", "ia") else None, input_stddev=SIGMA,
                  use_bias_forward=True, use_bias_backward=True,
                  batch_center_backward_input=case["batch_center"])
    cls = {"fa": lambda: align.Feedback(**common),
           "kp": lambda: align.Kolen_Pollack(alpha=lambda: a, **common),
           "wm": lambda: align.Mirror(alpha=lambda: a, beta=lambda: b, **common),
           "ia": lambda: align.Information(alpha=lambda: a, beta=lambda: b, gamma=lambda: g, **common),
           "sa": lambda: align.Symmetric(alpha=lambda: a, beta=lambda: b, **common),
           "aa": lambda: align.Activation(alpha=lambda: a, beta=lambda: b, **common)}[rule]
    explicit = kind == "conv" and stride > 1 and pad > 0  # fixed_padding: tf.pad, then 'VALID'
    graph = tf.Graph()
    with graph.as_default():
        if kind == "linear":
            fk = tf.Variable(W.T.copy(), dtype=tf.float64)  # [in, out]
            bk = tf.Variable(B.copy(), dtype=tf.float64)  # [out, in]
            x0 = xin = tf.constant(x)
            kw = {}
        else:
            fk = tf.Variable(_hwio(W), dtype=tf.float64)
            bk = tf.Variable(_hwio(B), dtype=tf.float64)
            x0 = xin = tf.constant(_nhwc(x))
            if explicit:
                xin = tf.pad(x0, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
                padding = "VALID"
            else:
                padding = "SAME" if pad > 0 else "VALID"
            kw = dict(strides=[1, stride, stride, 1], padding=padding)
        bvar = tf.constant(bias) if bias is not None else None
        noise["value"] = None
        if "noise" in arrays:
            nz = arrays["noise"]
            noise["value"] = nz if kind == "linear" else _nhwc(nz)
        alignment = cls()
        alignment(xin, forward_kernel=fk, backward_kernel=bk, activation=None,
                  layer_type="fc" if kind == "linear" else "conv", bias=bvar, **kw)
        loss = tf.add_n(tf.get_collection("ALIGNMENT_LOSSES"))
        dR = tf.gradients(loss, [fk, bk])
        # the layer's op on the same batch, output gradient dy
        op = (ops.custom_matmul(tie_grad=alignment.tie_grad) if kind == "linear"
              else ops.custom_conv2d(strides=kw["strides"], padding=kw["padding"], tie_grad=alignment.tie_grad))
        out = op(xin, fk, bk)
        dyt = tf.constant(dy if kind == "linear" else _nhwc(dy))
        dx, dw, db = tf.gradients(out, [x0, fk, bk], grad_ys=dyt)
        with tf.Session(graph=graph) as sess:
            sess.run(tf.global_variables_initializer())
            vals = sess.run({"loss": loss, "dRdW": dR[0] if dR[0] is not None else tf.zeros_like(fk),
                             "dRdB": dR[1] if dR[1] is not None else tf.zeros_like(bk),
                             "dx": dx, "dW": dw, "dB": db if db is not None else tf.zeros_like(bk)})
    res = {"loss": np.asarray(vals["loss"])}
    if kind == "linear":
        res.update(dRdW=vals["dRdW"].T, dRdB=vals["dRdB"], dx=vals["dx"], dW=vals["dW"].T, dB=vals["dB"])
    else:
        res.update(dRdW=_oihw(vals["dRdW"]), dRdB=_oihw(vals["dRdB"]), dx=vals["dx"].transpose(0, 3, 1, 2),
                   dW=_oihw(vals["dW"]), dB=_oihw(vals["dB"]))
    if noise["value"] is not None:
        kind_, shape, mean, std = noise["asked"]
        want = list(noise["value"].shape)
        if shape != want or mean != 0.0 or std != SIGMA:
            raise RuntimeError(f"the reference asked for noise {noise['asked']}, the injected one is {want}, std {SIGMA}")
    elif rule in ("wm", "ia"):
        raise RuntimeError("the reference drew no noise")
    return res


def tf_side(ref: Path, spec_path: str, out_path: str) -> None:
    import tensorflow as tf2

    tf, align, ops, noise = _load_reference(ref)
    spec = json.loads(Path(spec_path).read_text())
    data = np.load(spec["arrays"])
    results = {}
    for case in spec["cases"]:
        cid = case["id"]
        arrays = {k[len(cid) + 1:]: data[k] for k in data.files if k.startswith(cid + "/")}
        for k, v in reference_case(tf, align, ops, noise, case, arrays).items():
            results[f"{cid}/{k}"] = v
    np.savez(out_path, **results)
    Path(out_path + ".json").write_text(json.dumps({"tf_version": tf2.__version__}))


# ------------------------------------------------------------------------------------------------
# our side (torch)

def our_case(case: dict, options: str):
    """Build the layer, run one ``rule.step``; returns the arrays both sides get and our results."""
    import torch
    from torch import nn

    from bioprop.rules import RULES
    from bioprop.rules.alignment import _padding_ring, fb_layers

    rule_name, kind = case["rule"], case["kind"]
    torch.manual_seed(case["seed"])
    if kind == "linear":
        layer = nn.Linear(case["in"], case["out"], bias=case["bias"])
        x = torch.relu(torch.randn(N, case["in"]) + 0.5)
    else:
        layer = nn.Conv2d(case["in"], case["out"], case["kernel"], case["stride"], case["padding"], bias=case["bias"])
        x = torch.relu(torch.randn(N, case["in"], case["spatial"], case["spatial"]) + 0.5)
    model = nn.Sequential(layer).double()
    x = x.double()
    if case["bias"]:
        with torch.no_grad():
            layer.bias.normal_(0.0, 0.5)
    opts = dict(angle_every=0, sigma=SIGMA, batch_center=case["batch_center"], **REFERENCE_OPTIONS)
    opts.update(DEVIATIONS[options])
    rule = RULES.create(rule_name, **opts)
    rule.seed(case["seed"])
    if rule_name in ("wm", "ia", "sa", "aa") and (rule.alpha, rule.beta, rule.gamma) != COEFFS[rule_name]:
        raise RuntimeError(f"{rule_name}: the rule's coefficients {(rule.alpha, rule.beta, rule.gamma)} are not "
                           f"the ones the reference gets {COEFFS[rule_name]}")
    model = rule.prepare(model)
    (_, fb), = list(fb_layers(model))
    with torch.no_grad():
        fb.weight_b.normal_(0.0, float(fb.weight.std()))
    dy = torch.randn_like(model(x))
    state = rule.generator.get_state()
    model.zero_grad(set_to_none=True)
    rule.step(model, x, dy, lambda out, t: (out * t).sum())
    ours = {"dW": fb.weight.grad.detach().clone(),
            "dB": fb.weight_b.grad.detach().clone() if fb.weight_b.grad is not None else torch.zeros_like(fb.weight_b)}
    # the noise the step drew, replayed from the generator
    arrays = {"W": fb.weight, "B": fb.weight_b, "x": x, "dy": dy}
    if case["bias"]:
        arrays["bias"] = fb.bias
    inp = x
    if rule_name in ("wm", "ia"):
        shape = tuple(x.shape)
        ring = _padding_ring(fb) if rule.config.noise_padding == "reference" else None
        replay = torch.Generator()
        replay.set_state(state)
        if ring is not None:
            shape = shape[:-2] + (shape[-2] + 2 * ring[0], shape[-1] + 2 * ring[1])
        inp = torch.randn(shape, generator=replay, dtype=x.dtype) * SIGMA
        ref_noise = inp
        ring = _padding_ring(fb)
        if ring is not None and rule.config.noise_padding != "reference":
            # our default draws noise of the unpadded input; the reference fills its padding ring
            # too: give it ours inside and fresh draws on the ring
            extra = torch.randn(shape[:-2] + (shape[-2] + 2 * ring[0], shape[-1] + 2 * ring[1]),
                                generator=torch.Generator().manual_seed(1), dtype=x.dtype) * SIGMA
            extra[..., ring[0]:ring[0] + shape[-2], ring[1]:ring[1] + shape[-1]] = inp
            ref_noise = extra
        arrays["noise"] = ref_noise
    elif rule_name == "sa":
        inp = None
    if rule_name in ("wm", "ia", "sa", "aa"):
        replayed = rule.layer_regularizer(fb, inp)
        if not torch.equal(replayed, ours["dB"]):
            raise RuntimeError(f"{case['id']}: R's gradient on the replayed noise differs from B.grad by "
                               f"{float((replayed - ours['dB']).abs().max()):.3e}")
        value = rule.layer_regularizer(fb, inp, grad=False)
        ours["dRdB_autograd"] = torch.autograd.grad(value, fb.weight_b)[0]  # the plain path, regularizer()
        W = fb.weight.detach()
        a, b, g = rule.alpha, rule.beta, rule.gamma
        if rule_name in ("wm", "sa"):
            value = value + a * (W * W).sum()
        elif rule_name == "ia":
            value = value + g * (W * W).sum()
        else:  # aa: alpha E||A_W x (+ b)||^2, summed over positions (as position_mean=False)
            with torch.no_grad():
                yw = fb.forward_b(x, W)
                if rule.config.reg_bias and fb.bias is not None:
                    yw = yw + fb.bias.reshape((-1,) + (1,) * (yw.dim() - 2))
                norm = x.shape[0] * (yw[0].numel() // W.shape[0] if rule.config.position_mean else 1)
                value = value + a * (yw * yw).sum() / norm
        ours["loss"] = value.detach()
        ours["dRdB"] = replayed
    ours["dRdW"] = torch.zeros_like(fb.weight)  # R never writes W.grad: W.grad is the BP gradient
    xg = x.clone().requires_grad_(True)
    (model(xg) * dy).sum().backward()
    ours["dx"] = xg.grad.detach()
    if rule_name in ("fa", "kp"):  # B.grad is the op's: none (fa), dW (kp; the reference's KP decay
        ours["dB_op"] = ours["dB"]  # alpha ||B||^2 is ours the optimizer's weight decay 2 alpha on B)
    to_np = lambda t: t.detach().cpu().numpy()
    return {k: to_np(v) for k, v in arrays.items()}, {k: to_np(v) for k, v in ours.items()}


def _diff(ours: np.ndarray, ref: np.ndarray):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise RuntimeError(f"shape {ours.shape} vs the reference's {ref.shape}")
    abs_ = float(np.abs(ours - ref).max()) if ours.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return abs_, (abs_ / scale if scale > 0 else (0.0 if abs_ == 0 else float("inf")))


#: our options that reproduce the reference, and the rows that flip one of them back to our default
REFERENCE_OPTIONS = dict(position_mean=False, reg_bias=True, noise_padding="reference")
DEVIATIONS = {"reference": {}, "position_mean": {"position_mean": True}, "reg_bias": {"reg_bias": False},
              "noise_padding": {"noise_padding": "zeros"}}


def _applies(options: str, rule: str, kind: str, bias: bool, stride: int, padding: int) -> bool:
    """Whether flipping ``options`` can change anything on this layer (the rows that record it)."""
    if options == "reference":
        return True
    if rule not in ("wm", "ia", "aa"):
        return False  # sa's R has no data term; fa, kp have none of these options
    if options == "position_mean":
        return kind == "conv"
    if options == "reg_bias":
        return bias
    return rule in ("wm", "ia") and kind == "conv" and stride > 1 and padding > 0


def cases():
    out = []
    seed = 0
    for options in DEVIATIONS:
        for rule in RULE_NAMES:
            for (lname, kind, cin, cout, k, s, p, hw) in LAYERS:
                for bias in (False, True):
                    if not _applies(options, rule, kind, bias, s, p):
                        continue
                    centring = (False, True) if rule in ("wm", "ia", "aa") and options == "reference" else (False,)
                    for bc in centring:
                        seed += 1
                        out.append(dict(id=f"c{seed}", options=options, rule=rule, layer=lname, kind=kind, bias=bias,
                                        batch_center=bc, seed=seed, **{"in": cin, "out": cout, "kernel": k,
                                                                       "stride": s, "padding": p, "spatial": hw}))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", default=str(HERE.parent / ".ref" / "neural-alignment"))
    p.add_argument("--tf-python", default=os.environ.get("TF_PYTHON", "/tmp/venv-ekdaa/bin/python"),
                   help="an interpreter with TensorFlow 2 (the reference side runs there)")
    p.add_argument("--tf-side", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(HERE / "results" / "fidelity_two_routes.jsonl"))
    a = p.parse_args()
    ref = Path(a.ref)
    if not (ref / "Alignments" / "alignment.py").is_file():
        raise SystemExit(f"the reference is not at {ref}: git clone https://github.com/neuroailab/Neural-Alignment {ref}")
    if a.tf_side:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        tf_side(ref, *a.tf_side)
        return

    sys.path.insert(0, str(HERE))
    import torch

    from common import environment, write_lines

    torch.set_num_threads(1)
    commit = subprocess.run(["git", "-C", str(ref), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    all_cases = cases()
    ours, arrays = {}, {}
    for c in all_cases:
        arr, res = our_case(c, c["options"])
        ours[c["id"]] = res
        arrays.update({f"{c['id']}/{k}": v for k, v in arr.items()})
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "arrays.npz", **arrays)
        (Path(tmp) / "spec.json").write_text(json.dumps({"cases": all_cases, "arrays": str(Path(tmp) / "arrays.npz")}))
        env = dict(os.environ, OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
                   TF_ENABLE_ONEDNN_OPTS="0", TF_CPP_MIN_LOG_LEVEL="2")
        run = subprocess.run([a.tf_python, __file__, "--ref", str(ref), "--tf-side", str(Path(tmp) / "spec.json"),
                              str(Path(tmp) / "ref.npz")], capture_output=True, text=True, env=env)
        if run.returncode != 0:
            raise SystemExit(f"the reference side failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        refs = dict(np.load(Path(tmp) / "ref.npz"))
        tf_version = json.loads((Path(tmp) / "ref.npz.json").read_text())["tf_version"]
    base = environment(torch.device("cpu"))
    rows = []
    for c in all_cases:
        cid, res = c["id"], ours[c["id"]]
        diffs = {}
        for key in ("loss", "dRdB", "dRdW", "dW", "dx"):
            if key in res:
                diffs[key] = _diff(res[key], refs[f"{cid}/{key}"])
        if "dRdB_autograd" in res:
            diffs["dRdB_autograd"] = _diff(res["dRdB_autograd"], refs[f"{cid}/dRdB"])
        if "dB_op" in res:
            diffs["dB_op"] = _diff(res["dB_op"], refs[f"{cid}/dB"])
        row = {"benchmark": "fidelity_two_routes", "case": {k: v for k, v in c.items() if k != "id"},
               "reference": f"neuroailab/Neural-Alignment@{commit[:7]}", "tf_version": tf_version,
               "dtype": "float64", "max_abs": {k: v[0] for k, v in diffs.items()},
               "max_rel": {k: v[1] for k, v in diffs.items()},
               "worst_rel": max(v[1] for v in diffs.values()), **base}
        rows.append(row)
        print(f"{c['options']:9s} {c['rule']:3s} {c['layer']:18s} bias={int(c['bias'])} bc={int(c['batch_center'])}: "
              f"worst rel {row['worst_rel']:.2e} " + " ".join(f"{k} {v[1]:.1e}" for k, v in diffs.items()))
    write_lines(a.out, rows)


if __name__ == "__main__":
    main()
