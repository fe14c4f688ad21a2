"""EMSTDP learning curves of the reference NumPy code against ours, each with its own
initialisation, on the reference's own recipe (``EMSTDP_main.py``): the first ``--train`` MNIST
training images in order, batch 10, lr 1e-4 with the reference's RMSprop-like step and the weight
clip, the input coded with one random number per step; test accuracy on the first ``--test`` test
images every ``--eval-every`` training images. Writes ``benchmarks/results/emstdp_trajectory.jsonl``.

Why: with 100 hidden neurons our ``fa`` / ``dfa`` runs learn much more slowly than ``symmetric``
(docs/methods/emstdp.md). ``benchmarks/emstdp_fidelity.py`` shows the two codes take identical
steps from identical weights and spikes; this script asks the other question, whether the
reference, run on its own (its own ``np.random`` weights, feedback matrices and input stream),
learns as slowly in the same mode, i.e. whether the slow learning is the method's and the recipe's.

The reference is obtained and loaded as in ``benchmarks/emstdp_fidelity.py`` (``.ref/EMSTDP``,
``pip install opt_einsum numpy``; ``EMSTDP_algo.Network`` is built with the main script's settings,
no file of it is modified). Ours: ``emstdp_mlp`` + rule ``emstdp`` + :class:`EMSTDPRMSprop` +
``after_step`` clip, float32, its own generator; its points also carry the rule's diagnostics
averaged over the steps since the previous point (error-spike rates, hidden spikes, angles to BP
every 50 steps). Arm ``ours_readout_only`` keeps the hidden layer at its random initialisation
and trains only the output layer: what the readout alone reaches on random IF features.

    OMP_NUM_THREADS=1 python benchmarks/emstdp_trajectory.py --data-dir DIR [--feedback fa symmetric] \
        [--seeds 0] [--hidden 100] [--train 10000] [--eval-every 2000] [--test 2000]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from common import ROOT, environment, write_lines  # noqa: E402
from emstdp_fidelity import load_reference, reference_network, sync_reference  # noqa: E402

from bioprop.data import create_dataset  # noqa: E402
from bioprop.models import create_model  # noqa: E402
from bioprop.rules import create_rule  # noqa: E402
from bioprop.rules.emstdp import EMSTDPRMSprop  # noqa: E402

T = 100
BATCH = 10


def ref_code(x: np.ndarray) -> np.ndarray:
    """The main script's input code: one ``np.random.random`` per step, shared by all pixels and samples."""
    r = np.random.random([T, 1, 1])
    return (r < x[None]).astype(float)


def ref_curve(algo, sizes, feedback, lr, seed, xtr, ytr, xte, yte, every) -> List[Dict[str, Any]]:
    np.random.seed(seed)
    net = reference_network(algo, sizes, feedback, lr)   # draws its own weights and feedback matrices
    curve = []

    def test(n):
        pred = np.concatenate([net.Test(ref_code(xte[i:i + 1000]), len(xte[i:i + 1000]))
                               for i in range(0, len(xte), 1000)])
        curve.append({"images": n, "test_acc": float((pred == yte).mean())})

    test(0)
    t0 = time.perf_counter()
    for i in range(0, len(xtr), BATCH):
        net.Train(ref_code(xtr[i:i + BATCH]), ytr[i:i + BATCH], BATCH)
        if (i + BATCH) % every == 0:
            tt = time.perf_counter()
            test(i + BATCH)
            t0 += time.perf_counter() - tt
    return curve, len(xtr) / (time.perf_counter() - t0)


def our_curve(sizes, feedback, lr, seed, xtr, ytr, xte, yte, every, readout_only=False) -> List[Dict[str, Any]]:
    """Ours; ``readout_only``: the hidden layers keep their initial weights (their ``.grad`` is
    zeroed before the step), only the output layer learns."""
    torch.manual_seed(seed)
    model = create_model("emstdp_mlp", hidden=sizes[1:-1])
    rule = create_rule("emstdp", feedback=feedback, compare_every=50)
    rule.seed(seed)
    model = rule.prepare(model)
    opt = EMSTDPRMSprop(model.parameters(), lr=lr)
    xtr, ytr, xte, yte = map(torch.as_tensor, (xtr, ytr, xte, yte))
    xtr, xte = xtr.float().view(-1, 1, 28, 28), xte.float().view(-1, 1, 28, 28)
    curve = []
    gen = torch.Generator().manual_seed(seed + 1)
    stats: Dict[str, List[float]] = {}

    def test(n):
        with torch.no_grad():
            pred = torch.cat([model(xte[i:i + 1000], gen).argmax(1) for i in range(0, len(xte), 1000)])
        point = {"images": n, "test_acc": float((pred == yte).float().mean())}
        # diagnostics averaged over the training steps since the last point
        point.update({k: sum(v) / len(v) for k, v in stats.items() if v})
        stats.clear()
        curve.append(point)

    test(0)
    t0 = time.perf_counter()
    for i in range(0, len(xtr), BATCH):
        opt.zero_grad(set_to_none=True)
        out = rule.step(model, xtr[i:i + BATCH], ytr[i:i + BATCH], None)
        for k, v in out.stats.items():
            if k.startswith(("emstdp/err_rate", "emstdp/angle", "emstdp/spikes_p1")):
                stats.setdefault(k, []).append(float(v))
        if readout_only:
            for lin in model.weight_layers()[:-1]:
                lin.weight.grad = None
        opt.step()
        rule.after_step(model)
        if (i + BATCH) % every == 0:
            tt = time.perf_counter()
            test(i + BATCH)
            t0 += time.perf_counter() - tt
    return curve, len(xtr) / (time.perf_counter() - t0)


def lockstep_curves(algo, sizes, feedback, lr, seed, xtr, ytr, xte, yte, every):
    """Both codes from the same state on the same spikes for the whole run, float64: the reference
    gets our initial weights and feedback matrices (``sync_reference``), every training batch and
    every test pass is coded once (our generator) and given to both. Each side trains with its own
    code (ours: ``rule.run`` + :class:`EMSTDPRMSprop` + clip). Returns the two curves, each point
    with the largest weight difference between the two sides."""
    torch.manual_seed(seed)
    model = create_model("emstdp_mlp", hidden=sizes[1:-1]).double()
    rule = create_rule("emstdp", feedback=feedback, compare_every=0)
    rule.seed(seed)
    model = rule.prepare(model)
    np.random.seed(seed)
    net = reference_network(algo, sizes, feedback, lr)
    sync_reference(net, model, rule)
    opt = EMSTDPRMSprop(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed + 7)
    xtr_t = torch.as_tensor(xtr).view(-1, 1, 28, 28)
    xte_t = torch.as_tensor(xte).view(-1, 1, 28, 28)
    ytr_t = torch.as_tensor(ytr)
    ours, ref = [], []

    def test(n):
        po, pr = [], []
        for i in range(0, len(xte), 1000):
            sp = model.encode(xte_t[i:i + 1000], gen)
            po.append(model.simulate(sp)[-1].sum(0).argmax(1).numpy())
            pr.append(net.Test(sp.numpy().copy(), sp.shape[1]))
        wd = max(float(np.abs(lin.weight.detach().t().numpy() - w).max())
                 for lin, w in zip(model.weight_layers(), list(net.w_h) + [net.w_o]))
        for c, p in ((ours, po), (ref, pr)):
            c.append({"images": n, "test_acc": float((np.concatenate(p) == yte).mean()), "weights_max_abs_diff": wd})

    test(0)
    for i in range(0, len(xtr), BATCH):
        sp = model.encode(xtr_t[i:i + BATCH], gen)
        net.Train(sp.numpy().copy(), ytr[i:i + BATCH], BATCH)
        opt.zero_grad(set_to_none=True)
        res = rule.run(model, sp, ytr_t[i:i + BATCH])
        for lin, g in zip(model.weight_layers(), res.updates):
            lin.weight.grad = -g
        opt.step()
        rule.after_step(model)
        if (i + BATCH) % every == 0:
            test(i + BATCH)
    return ours, ref


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", default=str(ROOT / ".ref" / "EMSTDP"))
    p.add_argument("--data", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--feedback", nargs="+", default=["fa", "symmetric"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--eval-every", type=int, default=2000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--arms", nargs="+", default=["reference", "ours"], choices=["reference", "ours", "ours_readout_only", "lockstep"])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "emstdp_trajectory.jsonl"))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    algo = load_reference(Path(args.ref)) if {"reference", "lockstep"} & set(args.arms) else None
    kw = {"data_dir": args.data_dir} if args.data_dir else {}
    ds = create_dataset(args.data, batch_size=BATCH, normalize=False, **kw)
    # the reference's data: images / 255 as float64 [N, 784], the first N in file order
    xtr = ds.train_x[:args.train].reshape(args.train, -1).double().numpy() / 255.0
    ytr = ds.train_y[:args.train].numpy().astype(int)
    xte = ds.test_x[:args.test].reshape(args.test, -1).double().numpy() / 255.0
    yte = ds.test_y[:args.test].numpy().astype(int)
    sizes = [784, args.hidden, 10]
    env = {**environment(torch.device("cpu")), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    rows = []
    for fb in args.feedback:
        for seed in args.seeds:
            runs = []
            for arm in args.arms:
                if arm == "reference":
                    runs.append((arm, *ref_curve(algo, sizes, fb, args.lr, seed, xtr, ytr, xte, yte, args.eval_every)))
                elif arm == "lockstep":
                    o, r = lockstep_curves(algo, sizes, fb, args.lr, seed, xtr, ytr, xte, yte, args.eval_every)
                    runs += [("ours_lockstep", o, None), ("reference_lockstep", r, None)]
                else:
                    runs.append((arm, *our_curve(sizes, fb, args.lr, seed, xtr, ytr, xte, yte, args.eval_every,
                                                 readout_only=arm == "ours_readout_only")))
            for arm, curve, ips in runs:
                row = {"bench": "emstdp_trajectory", "arm": arm, "feedback": fb, "sizes": sizes, "seed": seed,
                       "data": args.data, "train_images": args.train, "order": "first N in file order",
                       "test_images": args.test, "batch": BATCH, "time_steps": T, "lr": args.lr,
                       "optimizer": "reference RMSprop-like (EMSTDPRMSprop) + clip 1",
                       "final_test_acc": curve[-1]["test_acc"], "curve": curve, "train_images_per_s": ips,
                       "reference": "zmeidd/EMSTDP EMSTDP_python/EMSTDP_algo.py (HEAD 278a53d)", **env}
                rows.append(row)
                print(f"{fb:9s} seed {seed} {arm:9s}: " + " ".join(f"{c['images']}:{100 * c['test_acc']:.1f}"
                                                                    for c in curve), flush=True)
                diag = {k.replace("emstdp/", ""): round(v, 3) for k, v in curve[-1].items() if k.startswith("emstdp/")}
                if diag:
                    print(f"    last interval: {diag}", flush=True)
                if "weights_max_abs_diff" in curve[-1]:
                    print("    weights max |ours - reference|: "
                          + " ".join(f"{c['weights_max_abs_diff']:.1e}" for c in curve), flush=True)
    if not args.no_write:
        write_lines(args.out, rows)


if __name__ == "__main__":
    main()
