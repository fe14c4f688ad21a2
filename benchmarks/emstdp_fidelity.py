"""EMSTDP fidelity: our ``emstdp`` rule beside the reference NumPy code on the same weights, the
same feedback matrices and the same input spike trains; writes
``benchmarks/results/emstdp_fidelity.jsonl``.

The reference (zmeidd/EMSTDP, ``EMSTDP_python/EMSTDP_algo.py``) is not part of this repository.
Get it into the ignored ``.ref/`` folder and install its one extra dependency::

    git clone https://github.com/zmeidd/EMSTDP .ref/EMSTDP      # (or the fetch tool's mirror)
    pip install opt_einsum numpy

Patches, all applied at run time here, none to its files: ``EMSTDP_main.py`` (Python 2: it
crashes on Python 3 at its first evaluation, ``range(test_size / tbs)``) is not used; we build
``EMSTDP_algo.Network`` directly with the main script's settings (``rel = 0``, ``delt = 5``,
``dr = 1``, ``init = 0``, ``clp``, ``lim = 1``, ``T = 100``, ``twin = 49``, ``epsilon = 3``,
threshold ratios 0.5 / 0.1, ``dropr = 0``, ``evt = 0``), overwrite its weights ``w_h``, ``w_o``
and feedback matrices ``e_h``, ``e_o`` with ours (transposed: it stores ``[in, out]``), feed it our
input spike trains (one random number per step shared by all pixels and samples, drawn by our
generator), and read its per-step spike arrays from ``Network.Train``'s locals at return (a
``sys.setprofile`` hook). Both sides run in float64. Our optimizer is
:class:`bioprop.rules.emstdp.EMSTDPRMSprop` (the reference's ``m = 0.9 m + 0.1 g^2`` from 1,
``W += lr g / sqrt(m + 1e-8)``) and the rule's ``after_step`` clip; each side then trains on its
own for ``--batches`` batches, and every batch is compared.

    OMP_NUM_THREADS=1 python benchmarks/emstdp_fidelity.py [--ref .ref/EMSTDP] [--batches 5]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from common import ROOT, environment, write_lines  # noqa: E402

from bioprop.data import create_dataset  # noqa: E402
from bioprop.models import create_model  # noqa: E402
from bioprop.rules import create_rule  # noqa: E402
from bioprop.rules.emstdp import EMSTDPRMSprop  # noqa: E402

MODES = {"symmetric": 0, "fa": 1, "dfa": 2}


def load_reference(ref: Path):
    """Import ``EMSTDP_algo`` from the reference checkout (one-line error when it is missing)."""
    algo = ref / "EMSTDP_python" / "EMSTDP_algo.py"
    if not algo.exists():
        raise SystemExit(f"reference not found at {algo}: git clone https://github.com/zmeidd/EMSTDP {ref}")
    sys.path.insert(0, str(algo.parent))
    try:
        import EMSTDP_algo  # type: ignore
    except ImportError as e:
        raise SystemExit(f"cannot import the reference ({e}): pip install opt_einsum numpy")
    return EMSTDP_algo


def reference_network(algo, sizes: List[int], feedback: str, lr: float):
    """``EMSTDP_algo.Network`` with ``EMSTDP_main.py``'s settings."""
    # Network(dfa, dropr, evt, norm, rel, delt, dr, init, clp, lim, inputs, hiddens, outputs, threshold_h,
    #         threshold_o, T, bias, lr, scale, twin, epsilon)
    return algo.Network(MODES[feedback], 0.0, 0, 0.0, 0, 5, 1, 0, True, 1.0, sizes[0], list(sizes[1:-1]), sizes[-1],
                        0.5, 0.1, 100, 0.0, lr, 1.0, 49, 3)


def sync_reference(net, model, rule) -> None:
    """Give the reference network our weights and feedback matrices (float64, ``[in, out]``)."""
    ws = [lin.weight.detach().double().t().numpy().copy() for lin in model.weight_layers()]
    net.w_h, net.w_o = ws[:-1], ws[-1]
    fb = [None if b is None else b.double().t().numpy().copy() for b in rule.feedback_weights]
    if rule.config.feedback != "symmetric":
        # the reference indexes e_h[der] for hidden layer der - 1 (der >= 1) and e_o for the top one
        net.e_h = [np.zeros((1, 1))] + fb[:-1]
        net.e_o = fb[-1]


def run_reference_train(net, spikes: np.ndarray, labels: np.ndarray) -> Dict[str, Any]:
    """``net.Train`` on spikes ``[T, B, n_0]``; returns its locals at return (spike arrays)."""
    captured: Dict[str, Any] = {}

    def hook(frame, event, arg):
        if event == "return" and frame.f_code is type(net).Train.__code__:
            captured.update(frame.f_locals)

    sys.setprofile(hook)
    try:
        net.Train(spikes, labels, spikes.shape[1])
    finally:
        sys.setprofile(None)
    return captured


def compare(args, sizes: List[int], feedback: str, data) -> List[Dict[str, Any]]:
    algo = load_reference(Path(args.ref))
    torch.manual_seed(args.seed)
    model = create_model("emstdp_mlp", hidden=sizes[1:-1], num_classes=sizes[-1]).double()
    rule = create_rule("emstdp", feedback=feedback, compare_every=0)
    rule.seed(args.seed)
    model = rule.prepare(model)
    np.random.seed(args.seed)
    net = reference_network(algo, sizes, feedback, args.lr)
    thr_ok = (np.allclose(net.threshold_h + [net.threshold_o], model.thresholds, rtol=1e-12)
              and np.allclose(net.ethreshold_h, rule.error_thresholds, rtol=1e-12))
    sync_reference(net, model, rule)
    opt = EMSTDPRMSprop(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed + 7)
    rows = []
    for b, (x, y) in enumerate(data):
        if b >= args.batches:
            break
        x = x.double()
        spikes = model.encode(x, gen)
        before = [w.copy() for w in net.w_h] + [net.w_o.copy()]
        loc = run_reference_train(net, spikes.numpy().copy(), y.numpy().astype(int))
        after = [w for w in net.w_h] + [net.w_o]
        opt.zero_grad(set_to_none=True)
        res = rule.run(model, spikes, y)
        mine_before = [lin.weight.detach().clone() for lin in model.weight_layers()]
        for lin, g in zip(model.weight_layers(), res.updates):
            lin.weight.grad = -g
        opt.step()
        rule.after_step(model)
        ref_spikes = [np.asarray(s, dtype=float) for s in loc["hidden_spikes"]] + [np.asarray(loc["output_spikes"], float)]
        ref_errors = [np.asarray(s, dtype=float) for s in loc["sdelta_h"]] + [np.asarray(loc["sdelta"], float)]
        spike_diff = int(sum(np.abs(res.spikes[l + 1].numpy() - ref_spikes[l]).sum() for l in range(len(ref_spikes))))
        err_diff = int(sum(np.abs(res.errors[l].numpy() - ref_errors[l]).sum() for l in range(len(ref_errors))))
        dw = []
        for l, lin in enumerate(model.weight_layers()):
            ours = (lin.weight.detach() - mine_before[l]).t().numpy()
            theirs = after[l] - before[l]
            dw.append(float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-300)))
        wdiff = max(float(np.abs(lin.weight.detach().t().numpy() - after[l]).max())
                    for l, lin in enumerate(model.weight_layers()))
        ms = [opt.state[lin.weight]["m"].t().numpy() for lin in model.weight_layers()]
        mdiff = max(float(np.abs(m - r).max()) for m, r in zip(ms, list(net.lm_h) + [net.lm_o]))
        rows.append({
            "bench": "emstdp_fidelity", "sizes": sizes, "feedback": feedback, "batch_index": b, "batch": int(y.shape[0]),
            "data": args.data, "seed": args.seed, "dtype": "float64", "thresholds_equal": bool(thr_ok),
            "spikes_per_layer_ours": [int(s.sum()) for s in res.spikes[1:]],
            "spikes_per_layer_ref": [int(s.sum()) for s in ref_spikes],
            "error_spikes_ours": [int(np.abs(e.numpy()).sum()) for e in res.errors],
            "error_spikes_ref": [int(np.abs(e).sum()) for e in ref_errors],
            "spike_mismatches": spike_diff, "error_spike_mismatches": err_diff,
            "update_rel_err_per_layer": dw, "weights_max_abs_diff": wdiff, "rmsprop_state_max_abs_diff": mdiff,
            "update_norms_ours": [float(g.norm()) for g in res.updates],
            "reference": "zmeidd/EMSTDP EMSTDP_python/EMSTDP_algo.py (HEAD 278a53d)",
        })
        print(f"{sizes} {feedback:9s} batch {b}: spikes {rows[-1]['spikes_per_layer_ours']} vs "
              f"{rows[-1]['spikes_per_layer_ref']}, mismatches {spike_diff}/{err_diff}, dW rel err "
              f"{max(dw):.1e}, W diff {wdiff:.1e}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", default=str(ROOT / ".ref" / "EMSTDP"))
    p.add_argument("--data", default="mnist_embedded")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "emstdp_fidelity.jsonl"))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    kw = {"data_dir": args.data_dir} if args.data_dir else {}
    ds = create_dataset(args.data, batch_size=args.batch_size, normalize=False, **kw)
    env = {**environment(torch.device("cpu")), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    rows = []
    for sizes in ([784, 100, 10], [784, 64, 32, 10]):
        for fb in MODES:
            data = ds.loader("train", torch.device("cpu"), seed=args.seed, epoch=0)
            rows += compare(args, sizes, fb, data)
    rows = [{**r, **env} for r in rows]
    ok = all(r["spike_mismatches"] == 0 and r["error_spike_mismatches"] == 0 and r["thresholds_equal"] for r in rows)
    print(f"all equal: {ok}; max update rel err {max(max(r['update_rel_err_per_layer']) for r in rows):.2e}")
    if not args.no_write:
        write_lines(args.out, rows)


if __name__ == "__main__":
    main()
