"""Side-by-side check of the ``ekdaa`` rule against the original code (tzee/EKDAA-Release,
TensorFlow 2) on the same weights and batches: targets, errors, projections and updates of every
layer, and the weights and error kernels after each optimizer step.

    python benchmarks/ekdaa_fidelity.py [--data-dir /work/data] [--ref .ref/EKDAA-Release] [--steps 3]

Getting the reference (never committed): clone it into the ignored ``.ref/`` folder, e.g.
``git clone https://github.com/tzee/EKDAA-Release .ref/EKDAA-Release`` (or the ``fetch`` tool's
mirror of ``github:tzee/EKDAA-Release``), and ``pip install tensorflow-cpu`` (tested: 2.21).
Its model state sits in class attributes, so every case runs in its own process.

Cases (batch 50, SGD lr 1e-3 momentum 0.85 as the release, float32, CPU):

- ``mlp``: Fashion-MNIST, dense 784-64-32-10, tanh (the release's dense-only branch);
- ``cnn_pool``: CIFAR-10 (JPEG q75 copy), conv3 8 - P - conv3 16 - P - FC 32 - FC 10, tanh: every
  conv is followed by a max-pool, where the release's forward pass (which feeds each conv the
  *pre*-activation of the layer below) is our ``ekdaa_cnn`` with ``conv_activation: identity``;
- ``cnn_release``: the release's layout (conv-conv-P-conv-conv-P, FC, FC) shrunk to 8-8-P-8-16-P,
  FC 32: one backward pass, to locate where the release departs from any consistent network (the
  filter update of a conv that follows a conv takes ``tanh(h)`` as its input while the forward
  pass fed it ``h``).

``cnn_pool``'s first row also records, as ``rel_err_with_our_conv_defaults``, how far our default
conv options (``conv_kernel: adjoint``, no ``conv_normalize``) land from the release's
projections and updates on the same batch.

Our rule runs with the release's options (``reduction: sum``, ``conv_normalize``, ``conv_kernel:
reference``, ``target_activation: tanh``, and ``update_top_kernel: false`` in the dense-only
case). Keras 3's optimizer refuses the release's three ``apply_gradients`` calls on different
variable lists, so the release model gets a momentum-SGD object with the same ``apply_gradients``
(``v <- m v - lr g; w <- w + v``, tf.keras SGD's formula). The input is scaled as the release
(x / 255 - 0.5). Writes one JSON line per case and step to
``benchmarks/results/ekdaa_fidelity.jsonl``: the relative error ||ours - ref|| / ||ref|| of every
compared tensor, the largest of them, and the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from common import ROOT, environment, write_lines

CASES = ("mlp", "cnn_pool", "cnn_release")
B = 50


def _data(case: str, data_dir: str, n: int):
    """``n`` images scaled as the release (x / 255 - 0.5) and labels, NHWC for images."""
    from bioprop.data.formats import read_cifar, read_idx

    if case == "mlp":
        for d in (Path(data_dir) / "fashion-mnist", Path(data_dir) / "fashion_mnist", Path("/usr/share/datasets/fashion-mnist")):
            if (d / "train-images-idx3-ubyte.gz").is_file():
                x = read_idx(d / "train-images-idx3-ubyte.gz")[:n].reshape(n, -1).astype(np.float32)
                y = read_idx(d / "train-labels-idx1-ubyte.gz")[:n].astype(np.int64)
                return x / 255.0 - 0.5, y, "fashion_mnist (first training images)"
        raise SystemExit("Fashion-MNIST not found (give --data-dir)")
    x, y = read_cifar(Path(data_dir) / "cifar-10-batches-py" / "data_batch_1")
    x = x[:n].reshape(n, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32)
    return x / 255.0 - 0.5, y[:n], "CIFAR-10 (JPEG q75 copy), first training images"


class _MomentumSGD:
    """tf.keras SGD's momentum update (v <- m v - lr g; w <- w + v) for any variable list."""

    def __init__(self, lr: float, momentum: float):
        import tensorflow as tf

        self.tf, self.lr, self.m, self.v = tf, lr, momentum, {}

    def apply_gradients(self, pairs):
        for g, w in pairs:
            key = id(w)
            if key not in self.v:
                self.v[key] = self.tf.zeros_like(w)
            self.v[key] = self.m * self.v[key] - self.lr * g
            w.assign_add(self.v[key])


#: the release's layer options in every model we build with it (Glorot init, no bias, no dropout)
GLOROT = dict(w_init="glorot_uniform", use_bias=False, b_init="glorot_uniform", dropout=0.0)


def add_conv_stack(m, features) -> None:
    """Add the release's VGG-style conv stack to its model ``m``: an int = a 3x3 tanh conv with that
    many filters, ``"P"`` = a 2x2 max-pool."""
    for f in features:
        if f == "P":
            m.add_maxpool(kernel=2, stride=2)
        else:
            m.add_conv(filters=f, filter_size=3, activation="tanh", **GLOROT)


def _ref_model(case: str, ref: Path):
    sys.path.insert(0, str(ref))
    import tensorflow as tf

    tf.random.set_seed(0)
    from library.FNN import FNN
    from library.learning_mechs import Learning_Mechs

    m = FNN("fidelity", 0)
    g = GLOROT
    if case == "mlp":
        m.add_input(input_shape=(B, 784))
        m.add_fc(nodes=64, activation="tanh", **g)
        m.add_fc(nodes=32, activation="tanh", **g)
    else:
        m.add_input(input_shape=(B, 32, 32, 3))
        add_conv_stack(m, [8, "P", 16, "P"] if case == "cnn_pool" else [8, 8, "P", 8, 16, "P"])
        m.flatten()
        m.add_fc(nodes=32, activation="tanh", **g)
    m.add_fc(nodes=10, activation="softmax", **g)
    m.build(learning_mechanism=Learning_Mechs.EKDAA())
    m.set_optimizer(_MomentumSGD(1e-3, 0.85))
    return m, m.get_model()


# -- layout conversions (TF: NHWC activations, HWIO kernels, HWC-major flattening) --------------
def _act(t, flat_hwc=None):
    """A release activation as ours: NHWC -> NCHW; a flat HWC vector -> CHW order."""
    a = np.asarray(t)
    if a.ndim == 4:
        return a.transpose(0, 3, 1, 2)
    if flat_hwc is not None:
        h, w, c = flat_hwc
        return a.reshape(a.shape[0], h, w, c).transpose(0, 3, 1, 2).reshape(a.shape[0], -1)
    return a


def _w(t, flat_hwc=None):
    """A release weight (dense [in, out] or conv HWIO) as our ``weight``."""
    a = np.asarray(t)
    if a.ndim == 4:
        return a.transpose(3, 2, 0, 1)
    if flat_hwc is not None:
        h, w, c = flat_hwc
        return a.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(a.shape[1], -1)
    return a.T


def _e(t, flat_hwc=None):
    """A release error kernel (``tf.transpose`` of the weight: [out, in] or [O, I, W, H]) as our
    ``weight_e`` (``[in, out]`` / ``[I, O, H, W]``)."""
    a = np.asarray(t)
    if a.ndim == 4:
        return a.transpose(1, 0, 3, 2)
    if flat_hwc is not None:
        h, w, c = flat_hwc
        return a.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(a.shape[0], -1).T
    return a.T


def _layout(case: str):
    """Per weight layer of ours: the release's weight index, the index of its output in the
    release's ``z``/``e`` lists, the index of its target in ``passback`` (``None`` for the readout),
    and how to read its projection to the layer input ``(h index, passback index)``."""
    if case == "mlp":
        return dict(w=[0, 1, 2], e=[1, 2, 3], target=[1, 2, None], proj=[None, (1, 1), (2, 2)], flat=None)
    if case == "cnn_pool":  # in, conv, P, conv, P, flatten, fc, fc
        return dict(w=[0, 2, 4, 5], e=[1, 3, 7, 8], target=[1, 3, 5, None], proj=[None, (2, 2), (6, 4), (7, 5)],
                    flat=(8, 8, 16))
    # in, conv, conv, P, conv, conv, P, flatten, fc, fc
    return dict(w=[0, 1, 3, 4, 6, 7], e=[1, 2, 4, 5, 9, 10], target=[1, 2, 4, 5, 7, None],
                proj=[None, (1, 1), (3, 3), (4, 4), (8, 6), (9, 7)], flat=(8, 8, 16))


def run_case(case: str, ref: Path, data_dir: str, steps: int) -> list:
    import tensorflow as tf
    import torch
    import torch.nn.functional as F

    from bioprop import create_model, create_rule
    from bioprop.rules.ekdaa import ekdaa_errors, ekdaa_plan

    torch.set_num_threads(1)
    rm, internal = _ref_model(case, ref)
    lay = _layout(case)
    flat = lay["flat"]
    if case == "mlp":
        model = create_model("ekdaa_mlp", in_shape=[784], hidden=[64, 32])
        kw = dict(update_top_kernel=False)
    else:
        feats = [8, "P", 16, "P"] if case == "cnn_pool" else [8, 8, "P", 8, 16, "P"]
        model = create_model("ekdaa_cnn", in_shape=[3, 32, 32], features=feats, hidden=[32], conv_activation="identity")
        kw = dict(conv_normalize=True, conv_kernel="reference", target_activation="tanh")
    rule = create_rule("ekdaa", reduction="sum", **kw)
    model = rule.prepare(model)
    plan = ekdaa_plan(model)
    L = len(plan.layers)
    fl = lambda l: flat if (flat is not None and l == L - 2) else None  # the first dense layer reads the flatten

    def load():
        with torch.no_grad():
            for l, layer in enumerate(plan.layers):
                layer.weight.copy_(torch.from_numpy(_w(internal.weights[lay["w"][l]].numpy(), fl(l))))
                if l > 0:
                    layer.weight_e.copy_(torch.from_numpy(_e(internal.E[lay["w"][l]].numpy(), fl(l))))

    load()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.85)
    x_all, y_all, data_name = _data(case, data_dir, B * steps)
    rows = []
    for s in range(steps):
        xb, yb = x_all[s * B:(s + 1) * B], y_all[s * B:(s + 1) * B]
        onehot = tf.one_hot(yb, 10)
        rm.forward(data=xb, is_training=True)
        rm.backward(data=None, labels=onehot.numpy())
        snap = {k: [np.array(v.numpy()) if hasattr(v, "numpy") else None for v in getattr(internal, k)]
                for k in ("h", "z", "e", "passback", "del_w", "del_E")}
        xt = torch.from_numpy(_act(xb))
        yt = torch.from_numpy(yb)
        r = ekdaa_errors(plan, xt, yt, F.cross_entropy, conv_normalize=kw.get("conv_normalize", False),
                         conv_kernel=kw.get("conv_kernel", "adjoint"), target_activation=kw.get("target_activation"),
                         update_top_kernel=kw.get("update_top_kernel", True))
        rel = {}

        def cmp(name, ours, theirs):
            ours = ours.detach().double().numpy()
            theirs = np.asarray(theirs, dtype=np.float64)
            if ours.shape != theirs.shape:
                raise SystemExit(f"{case} {name}: shape {ours.shape} vs the release's {theirs.shape}")
            rel[name] = float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-30))

        cmp("logits_softmax", torch.softmax(r.logits, 1), snap["z"][-1])
        for l in range(L):
            f = fl(l) if l == L - 2 else None
            cmp(f"error/{l + 1}", r.errors[l], _act(snap["e"][lay["e"][l]]))
            if lay["target"][l] is not None:
                t = snap["passback"][lay["target"][l]]
                t = t.reshape(snap["z"][lay["e"][l]].shape)
                cmp(f"target/{l + 1}", r.targets[l], _act(t))
            if lay["proj"][l] is not None:
                hi, pi = lay["proj"][l]
                proj = snap["h"][hi] - snap["passback"][pi]
                cmp(f"projection/{l + 1}", r.projections[l], _act(proj, flat if (flat is not None and l == L - 2) else None))
            cmp(f"dW/{l + 1}", r.dW[l], _w(snap["del_w"][lay["w"][l]], f))
            if r.dE[l] is not None:
                cmp(f"dE/{l + 1}", r.dE[l], _e(snap["del_E"][lay["w"][l]], f))
            elif l > 0:
                rel[f"dE/{l + 1}(release updates it: {bool(np.any(snap['del_E'][lay['w'][l]]))})"] = None
        if case == "cnn_pool" and s == 0:
            # how far our defaults (adjoint kernel, no max-normalisation) are from the release here
            rd = ekdaa_errors(plan, xt, yt, F.cross_entropy, target_activation="tanh")
            full = dict(rel)
            for l in range(1, L):
                f = fl(l) if l == L - 2 else None
                hi, pi = lay["proj"][l]
                cmp(f"projection/{l + 1}", rd.projections[l], _act(snap["h"][hi] - snap["passback"][pi], f))
                cmp(f"dW/{l + 1}", rd.dW[l], _w(snap["del_w"][lay["w"][l]], f))
            cmp("dW/1", rd.dW[0], _w(snap["del_w"][lay["w"][0]]))
            defaults = {k: v for k, v in rel.items() if k.startswith(("projection", "dW"))}
            rel.clear()
            rel.update(full)
        # one optimizer step on both sides, then the parameters
        rm.update()
        opt.zero_grad(set_to_none=True)
        rule.step(model, xt, yt, F.cross_entropy)
        opt.step()
        for l, layer in enumerate(plan.layers):
            f = fl(l)
            cmp(f"W_after/{l + 1}", layer.weight, _w(internal.weights[lay["w"][l]].numpy(), f))
            if l > 0:
                cmp(f"E_after/{l + 1}", layer.weight_e, _e(internal.E[lay["w"][l]].numpy(), f))
        vals = [v for v in rel.values() if v is not None]
        row = {"bench": "ekdaa_fidelity", "case": case, "step": s + 1, "batch": B, "data": data_name,
               "options": rule.config.__dict__, "rel_err": rel, "max_rel_err": max(vals),
               "tensorflow": tf.__version__}
        if case == "cnn_pool" and s == 0:
            row["rel_err_with_our_conv_defaults"] = defaults
        if case == "cnn_release":
            # the release feeds each conv the pre-activation of the conv below: h2 = conv(h1), not conv(tanh(h1))
            h1, h2 = torch.from_numpy(_act(snap["h"][1])), torch.from_numpy(_act(snap["h"][2]))
            w1 = plan.layers[1].weight.detach() if s == 0 else None
            if w1 is not None:
                lin = F.conv2d(h1, w1, padding=1)
                act = F.conv2d(torch.tanh(h1), w1, padding=1)
                row["release_h2_vs_conv_h1"] = float((lin - h2).norm() / h2.norm())
                row["release_h2_vs_conv_tanh_h1"] = float((act - h2).norm() / h2.norm())
            rows.append(row)
            break  # the parameters differ from here on (the filter updates above): one step only
        rows.append(row)
        load_check = max(rel[k] for k in rel if k.startswith(("W_after", "E_after")))
        if load_check > 1e-3:
            break
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="/work/data")
    p.add_argument("--ref", default=str(ROOT / ".ref" / "EKDAA-Release"))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--case", choices=CASES, help="run one case in this process and print its rows")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ekdaa_fidelity.jsonl"))
    a = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ref = Path(a.ref)
    if not (ref / "library" / "EKDAA_model.py").is_file():
        raise SystemExit(f"the reference is not at {ref}: git clone https://github.com/tzee/EKDAA-Release {ref}")
    if a.case:
        for row in run_case(a.case, ref, a.data_dir, a.steps):
            print("ROW " + json.dumps(row))
        return
    import torch

    env = environment(torch.device("cpu"))
    rows = []
    for case in CASES:
        out = subprocess.run([sys.executable, __file__, "--case", case, "--ref", str(ref), "--data-dir", a.data_dir,
                              "--steps", str(a.steps)], capture_output=True, text=True)
        got = [json.loads(l[4:]) for l in out.stdout.splitlines() if l.startswith("ROW ")]
        if out.returncode != 0 or not got:
            raise SystemExit(f"case {case} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        for r in got:
            r.update(env)
            rows.append(r)
            worst = sorted(((v, k) for k, v in r["rel_err"].items() if v is not None), reverse=True)[:3]
            print(f"{case} step {r['step']}: max rel err {r['max_rel_err']:.2e}; worst {worst}")
    write_lines(a.out, rows)


if __name__ == "__main__":
    main()
