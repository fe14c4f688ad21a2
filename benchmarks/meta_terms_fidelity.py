"""The plasticity terms F0-F9 against the reference code's own functions, on the same weights and sample.

The reference (NeuralDynamicsAndComputing/MetaLearning-Plasticity) keeps its whole pool of terms in
the history of ``optim.py``: the "learning rule template" ``generic_rule`` of commit 476ae40
(F0, F1, F2, F3, F4, F5, F6, F7 and the decay F8 under its own indices) and the release's
``plasticity_rule`` (v1.0.0: F0, F2, F9 with Oja's plus sign). This script loads both functions
from ``.ref/MetaLearning-Plasticity`` (``git show <commit>:optim.py``; nothing of it is copied into
bioprop), runs each with one coefficient non-zero on a small softplus network's activations and
errors (our ``Plasticity`` forward and error recursion, fixed random B, float64), and compares the
reference's weight change with ``theta_r * F_r`` of ``bioprop.meta.terms`` in every layer.

One change is made to the 476ae40 function at run time: its hard-coded ``vec = ['1', '2', '3']``
line is replaced by the term under test (the function ignores its caller's vec there).

    git clone https://github.com/NeuralDynamicsAndComputing/MetaLearning-Plasticity .ref/MetaLearning-Plasticity
    python benchmarks/meta_terms_fidelity.py

One JSON line per (term, reference function) goes to ``benchmarks/results/meta_terms_fidelity.jsonl``.
"""

from __future__ import annotations

import math
import subprocess
import types
from pathlib import Path

import torch

from common import ROOT, environment, write_lines

from bioprop.meta import TERMS, Plasticity, PlasticityConfig
from bioprop.meta.terms import TermInputs

REF = ROOT / ".ref" / "MetaLearning-Plasticity"
OUT = ROOT / "benchmarks" / "results" / "meta_terms_fidelity.jsonl"
TEMPLATE = "476ae40"          # ENH: learning rule template added for experimentation (2022-02-19)
RELEASE = "13aefa8"           # tag v1.0.0
D64 = torch.float64

# our term -> (reference commit, function, its vec index or None, which Theta slot carries the coefficient)
# 476ae40: Theta = (lr, dr, tre, fur, fiv, six, svn, eit, nin); the pseudo-gradient is exp(lr), decay exp(dr)
MAP = {
    "pseudo_grad": [(TEMPLATE, None, "lr"), (RELEASE, None, 0)],
    "post_act_pre_err": [(TEMPLATE, "1", "tre")],
    "error_hebb": [(TEMPLATE, "3", "fiv"), (RELEASE, "1", 1)],
    "hebb": [(TEMPLATE, "2", "fur")],
    "post_err": [(TEMPLATE, "6", "eit")],
    "pre_err": [(TEMPLATE, "7", "nin")],
    "post_act": [(TEMPLATE, "4", "six")],
    "pre_act": [(TEMPLATE, "5", "svn")],
    "decay": [(TEMPLATE, None, "dr")],
    "oja": [(RELEASE, "2", 2)],
}
SLOTS = ["lr", "dr", "tre", "fur", "fiv", "six", "svn", "eit", "nin"]


def load(commit: str) -> types.ModuleType:
    if not (REF / ".git").exists():
        raise SystemExit(f"reference code not found at {REF}; clone it there (see this script's docstring)")
    src = subprocess.run(["git", "-C", str(REF), "show", f"{commit}:optim.py"], check=True, capture_output=True,
                         text=True).stdout
    if commit == TEMPLATE:
        assert "    vec = ['1', '2', '3']\n" in src
        src = src.replace("    vec = ['1', '2', '3']\n", "    vec = VEC\n")
    mod = types.ModuleType(f"ref_optim_{commit}")
    exec(compile(src, f"{commit}:optim.py", "exec"), mod.__dict__)
    return mod


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.manual_seed(0)
    sizes_hidden, n_in, n_out = [7, 5, 4], 12, 3
    rule = Plasticity(PlasticityConfig(hidden=sizes_hidden, terms=[f"F{r}" for r in range(10)]), n_in, n_out)
    W, B = rule.init_weights(torch.Generator().manual_seed(1), D64)
    x = torch.rand(1, n_in, dtype=D64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([2])
    acts, logits = rule.forward(W, x)
    e = rule.errors(W, B, acts, logits, y)
    ys = list(acts) + [torch.softmax(logits, dim=1)]
    mods = {c: load(c) for c in (TEMPLATE, RELEASE)}
    coef = 0.37
    rows = []
    for name, refs in MAP.items():
        ours = []
        for l, k in enumerate(rule.keys):
            ours.append(coef * TERMS.get(name).fn(TermInputs(ys[l], ys[l + 1], e[l], e[l + 1], W[k])))
        for commit, vec, slot in refs:
            params = {}
            for l, k in enumerate(rule.keys):
                p = W[k].clone()
                p.adapt = True
                params[f"fc{l + 1}.weight"] = p
            if commit == TEMPLATE:
                th = {s: torch.tensor(0.0, dtype=D64) for s in SLOTS}
                th["lr"] = th["dr"] = torch.tensor(-math.inf, dtype=D64)      # exp(-inf) = 0: no pseudo-gradient, no decay
                th[slot] = torch.tensor(math.log(coef) if slot in ("lr", "dr") else coef, dtype=D64)
                mods[commit].VEC = [vec] if vec else []
                mods[commit].generic_rule(ys, e, params, {}, [th[s] for s in SLOTS])
                fn = f"optim.py:generic_rule@{commit}"
            else:
                th = [torch.tensor(0.0, dtype=D64) for _ in range(3)]
                th[slot] = torch.tensor(coef, dtype=D64)
                mods[commit].plasticity_rule(ys, e, params, {}, th, [vec] if vec else [], "fix")
                fn = f"optim.py:plasticity_rule@{commit} (v1.0.0)"
            diffs = []
            for l, k in enumerate(rule.keys):
                ref_dw = params[f"fc{l + 1}.weight"] - W[k]
                diffs.append(float((ref_dw - ours[l]).abs().max() / ours[l].abs().max().clamp_min(1e-300)))
            rows.append({**environment(torch.device("cpu")), "benchmark": "meta_terms_fidelity", "term": name,
                         "index": TERMS.get(name).index, "reference": fn, "ref_vec": vec, "ref_coefficient": slot,
                         "coefficient": coef, "network": [n_in, *sizes_hidden, n_out], "dtype": "float64",
                         "max_rel_diff_per_layer": diffs, "agree": max(diffs) < 1e-12})
            print(f"F{TERMS.get(name).index} {name:17s} vs {fn:45s} max rel diff {max(diffs):.1e}")
    write_lines(OUT, rows)


if __name__ == "__main__":
    main()
