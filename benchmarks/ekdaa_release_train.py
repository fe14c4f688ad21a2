"""Train the original EKDAA code (tzee/EKDAA-Release, TensorFlow 2) and our ``ekdaa`` rule side by
side on the release's CIFAR-10 network and recipe, on the same short schedule, data, batches and
initial weights: does the release itself learn on a schedule where our rule with its bilinear pool
targets stays at chance?

    python benchmarks/ekdaa_release_train.py [--arms release ours_release_options ...] \
        [--train-n 5000] [--epochs 2] [--test-n 2000] [--seed 0] [--data-dir /work/data]

Getting the reference (never committed): clone it into the ignored ``.ref/`` folder,
``git clone https://github.com/tzee/EKDAA-Release .ref/EKDAA-Release``, and ``pip install
tensorflow-cpu`` (tested: 2.21). Its model state sits in class attributes, so every arm runs in its
own process.

The setup is the release's ``eg_model.py``: conv3 64-64-P-64-128-P-128-128-P, FC 128 tanh, FC 10
softmax, no bias, Glorot uniform (the release's draw, seeded with ``keras.utils.set_random_seed(seed)``,
copied into our model for every arm), batch 50, SGD lr 1e-3 momentum 0.85 on batch *sums*, input
``x / 255 - 0.5`` (CIFAR-10, JPEG q75 copy here), no augmentation; a shortened schedule: the first
``--train-n`` training images, ``--epochs`` epochs, shuffled each epoch by one numpy permutation
shared by all arms, test accuracy on the first ``--test-n`` test images after every epoch. Keras 3
refuses the release's three ``apply_gradients`` calls with one optimizer, so the release gets
``ekdaa_fidelity._MomentumSGD`` (tf.keras SGD's update, ``v <- m v - lr g; w <- w + v``).

Arms:

- ``release``: the release's ``EKDAA_Model`` (bilinear pool targets, linear convs in the forward
  pass, its normalisations);
- ``release_bp``: the release's ``BP_model`` on the same network (its "BP" also sends the error
  back through the pools by bilinear upsampling, so it is not exact backprop);
- ``ours_release_options``: ``ekdaa_cnn`` with ``conv_activation: identity`` and the rule with the
  release's options (``reduction: sum``, ``conv_normalize``, ``conv_kernel: reference``,
  ``target_activation: tanh``, ``pool_target: upsample``), SGD lr 1e-3 momentum 0.85;
- ``ours_release_options_argmax``: the same with ``pool_target: argmax``;
- ``ours_bp``: exact backprop (autograd) on the release's forward network (linear convs, tanh FC),
  lr 1e-3 on the batch-sum loss.

Each row also records every weight layer's relative change ``||W_end - W_0|| / ||W_0||``.
Writes one JSON line per arm to ``benchmarks/results/ekdaa_release.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import ROOT, environment, write_lines

ARMS = ("release", "release_bp", "ours_release_options", "ours_release_options_argmax", "ours_bp")
B = 50
FEATURES = [64, 64, "P", 64, 128, "P", 128, 128, "P"]
FLAT = (4, 4, 128)


def _cifar(data_dir: str, n_train: int, n_test: int):
    """The first ``n_train`` training and ``n_test`` test images, NHWC, scaled x / 255 - 0.5."""
    from bioprop.data.formats import read_cifar

    root = Path(data_dir) / "cifar-10-batches-py"
    xs, ys = [], []
    for i in range(1, 6):
        if sum(len(y) for y in ys) >= n_train:
            break
        x, y = read_cifar(root / f"data_batch_{i}")
        xs.append(x)
        ys.append(y)
    x, y = np.concatenate(xs)[:n_train], np.concatenate(ys)[:n_train]
    xt, yt = read_cifar(root / "test_batch")
    xt, yt = xt[:n_test], yt[:n_test]
    f = lambda a: a.reshape(len(a), 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0 - 0.5
    return f(x), np.asarray(y, np.int64), f(xt), np.asarray(yt, np.int64)


def _release_model(ref: Path, seed: int, bp: bool = False):
    sys.path.insert(0, str(ref))
    import tensorflow as tf

    import keras

    keras.utils.set_random_seed(seed)  # Keras 3's unseeded GlorotUniform ignores tf.random.set_seed alone
    from library.FNN import FNN
    from library.learning_mechs import Learning_Mechs

    from ekdaa_fidelity import GLOROT as g
    from ekdaa_fidelity import _MomentumSGD, add_conv_stack

    m = FNN("eg_model", 0)
    m.add_input(input_shape=(B, 32, 32, 3))
    add_conv_stack(m, FEATURES)
    m.flatten()
    m.add_fc(nodes=128, activation="tanh", **g)
    m.add_fc(nodes=10, activation="softmax", **g)
    m.build(learning_mechanism=Learning_Mechs.BP() if bp else Learning_Mechs.EKDAA())
    m.set_optimizer(_MomentumSGD(1e-3, 0.85))
    return m, m.get_model()


def run_arm(arm: str, ref: Path, data_dir: str, n_train: int, epochs: int, n_test: int, seed: int) -> dict:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import torch
    import torch.nn.functional as F

    from ekdaa_fidelity import _w

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    x, y, xt, yt = _cifar(data_dir, n_train, n_test)
    if len(x) % B or len(xt) % B:
        raise SystemExit(f"--train-n and --test-n must be multiples of the batch {B} (the release has no partial batch)")
    rm, internal = _release_model(ref, seed, bp=(arm == "release_bp"))
    ours = arm.startswith("ours")
    options = {}
    if ours:
        from bioprop import create_model, create_rule
        from bioprop.rules.ekdaa import ekdaa_plan

        model = create_model("ekdaa_cnn", in_shape=[3, 32, 32], features=FEATURES, hidden=[128], conv_activation="identity")
        rule = None
        if arm != "ours_bp":
            options = dict(reduction="sum", conv_normalize=True, conv_kernel="reference", target_activation="tanh",
                           pool_target="argmax" if arm.endswith("argmax") else "upsample")
            rule = create_rule("ekdaa", **options)
            model = rule.prepare(model)
        plan = ekdaa_plan(model)
        L = len(plan.layers)
        with torch.no_grad():  # the release's Glorot draw, layouts converted (ekdaa_fidelity's helpers)
            from ekdaa_fidelity import _e

            # the release keeps a placeholder weight per max-pool ([B, 1, C, 1]): skip those
            idx = [i for i, w in enumerate(internal.weights) if w.shape.rank == 2 or w.shape[0] != B]
            assert len(idx) == L, (len(idx), L)
            for l, layer in enumerate(plan.layers):
                fl = FLAT if l == L - 2 else None
                layer.weight.copy_(torch.from_numpy(_w(internal.weights[idx[l]].numpy(), fl)))
                if hasattr(layer, "weight_e"):
                    layer.weight_e.copy_(torch.from_numpy(_e(internal.E[idx[l]].numpy(), fl)))
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.85)
        weights = lambda: [layer.weight.detach().double().numpy().copy() for layer in plan.layers]

        def train_step(xb, yb):
            xt_, yt_ = torch.from_numpy(xb.transpose(0, 3, 1, 2).copy()), torch.from_numpy(yb)
            opt.zero_grad(set_to_none=True)
            if rule is None:
                logits = model(xt_)
                loss = F.cross_entropy(logits, yt_, reduction="sum")
                loss.backward()
                loss = loss / len(yb)
            else:
                out = rule.step(model, xt_, yt_, F.cross_entropy)
                logits, loss = out.logits, out.loss
            opt.step()
            return float(loss.detach()), (logits.argmax(1) == yt_).float().mean().item()

        def test_acc():
            correct = 0
            with torch.no_grad():
                for i in range(0, len(xt), B):
                    xb = torch.from_numpy(xt[i:i + B].transpose(0, 3, 1, 2).copy())
                    correct += int((model(xb).argmax(1) == torch.from_numpy(yt[i:i + B])).sum())
            return correct / len(xt)
    else:
        wl = [i for i, w in enumerate(internal.weights) if w.shape.rank == 2 or w.shape[0] != B]
        weights = lambda: [np.asarray(internal.weights[i].numpy(), np.float64).copy() for i in wl]

        def train_step(xb, yb):
            onehot = np.eye(10, dtype=np.float32)[yb]
            rm.forward(data=xb, is_training=True)
            p = np.asarray(internal.z[-1].numpy(), np.float64)
            loss = float(-np.mean(np.log(np.clip(p[np.arange(len(yb)), yb], 1e-12, None))))
            rm.backward(data=None, labels=onehot)
            rm.update()
            return loss, float(np.mean(p.argmax(1) == yb))

        def test_acc():
            return float(rm.infer(data=xt, labels=yt, batch_size=B)) / 100.0

    rng = np.random.RandomState(seed)
    w0 = weights()
    curve = []
    t0 = time.perf_counter()
    for ep in range(epochs):
        perm = rng.permutation(len(x))
        losses, accs = [], []
        te = time.perf_counter()
        for b in range(len(x) // B):
            sel = perm[b * B:(b + 1) * B]
            lo, ac = train_step(x[sel], y[sel])
            losses.append(lo)
            accs.append(ac)
        train_s = time.perf_counter() - te
        acc = test_acc()
        curve.append({"epoch": ep + 1, "train_loss": float(np.mean(losses)), "train_acc": float(np.mean(accs)),
                      "test_acc": acc, "finite": bool(np.isfinite(losses).all()), "train_s": train_s})
        print(f"{arm} epoch {ep + 1}: loss {np.mean(losses):.4f} train acc {np.mean(accs):.4f} test acc {acc:.4f} "
              f"({train_s:.0f}s)", file=sys.stderr, flush=True)
    return {"bench": "ekdaa_release_train", "arm": arm, "implementation": "bioprop" if ours else "tzee/EKDAA-Release",
            "rule_options": options, "data": "CIFAR-10 (JPEG q75 copy)", "scaling": "x / 255 - 0.5",
            "network": "conv3 64-64-P-64-128-P-128-128-P, FC 128 tanh, FC 10 (the release's eg_model.py)",
            "optimizer": "SGD lr 1e-3 momentum 0.85 on batch sums (the release's)", "batch": B, "seed": seed,
            "epochs": epochs, "train_n": n_train, "test_n": n_test, "shortened": True, "recipe_epochs": 500,
            "test_acc": curve[-1]["test_acc"], "selection": "final epoch", "curve": curve,
            # per weight layer (conv 1-6, FC 1-2): ||W_end - W_0|| / ||W_0||
            "rel_weight_change": [float(np.linalg.norm(a - b) / np.linalg.norm(b)) for a, b in zip(weights(), w0)],
            "wall_s": time.perf_counter() - t0, "tensorflow": tf.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", nargs="+", choices=ARMS, default=["release", "ours_release_options"])
    p.add_argument("--arm", choices=ARMS, help="run one arm in this process and print its row")
    p.add_argument("--train-n", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--test-n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default="/work/data")
    p.add_argument("--ref", default=str(ROOT / ".ref" / "EKDAA-Release"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ekdaa_release.jsonl"))
    a = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ref = Path(a.ref)
    if not (ref / "library" / "EKDAA_model.py").is_file():
        raise SystemExit(f"the reference is not at {ref}: git clone https://github.com/tzee/EKDAA-Release {ref}")
    if a.arm:
        print("ROW " + json.dumps(run_arm(a.arm, ref, a.data_dir, a.train_n, a.epochs, a.test_n, a.seed)))
        return
    import torch

    env = environment(torch.device("cpu"))
    for arm in a.arms:
        cmd = [sys.executable, __file__, "--arm", arm, "--ref", str(ref), "--data-dir", a.data_dir, "--train-n",
               str(a.train_n), "--epochs", str(a.epochs), "--test-n", str(a.test_n), "--seed", str(a.seed)]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        got = [json.loads(l[4:]) for l in out.stdout.splitlines() if l.startswith("ROW ")]
        if out.returncode != 0 or not got:
            raise SystemExit(f"arm {arm} failed:\n{out.stdout[-3000:]}")
        row = {**got[0], **env}
        print(f"{arm}: test acc {row['test_acc']:.4f} after {row['epochs']} epochs ({row['wall_s']:.0f}s)")
        write_lines(a.out, [row])


if __name__ == "__main__":
    main()
