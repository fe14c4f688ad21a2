"""Build the README's results tables from the JSON lines in ``benchmarks/results/``.

Each table lists the newest line per (config, overrides, seed) of one results file; figures are
never typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

RESULTS = Path(__file__).resolve().parent / "results"


def _lines(name: str) -> List[Dict]:
    f = RESULTS / name
    return [json.loads(l) for l in f.read_text().splitlines() if l.strip()] if f.is_file() else []


def _rows(name: str) -> List[Dict]:
    rows = _lines(name)
    newest: Dict[tuple, Dict] = {}
    for r in rows:
        newest[(r.get("config"), tuple(r.get("overrides", [])), r.get("seed"))] = r
    return list(newest.values())


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


#: published figures of the reference implementations (REFERENCES.md), for the configs that reproduce them
PUBLISHED = {
    "configs/ide_f400_fmnist_if.yaml": "90.04 +- 0.09 (best 90.14)",
    "configs/ide_f400_fmnist_lif.yaml": "90.07 +- 0.10 (best 90.25)",
    "configs/ide_f64c5_mnist_if.yaml": "99.49 +- 0.04 (best 99.55)",
    "configs/ide_f64c5_mnist_lif.yaml": "99.53 +- 0.04 (best 99.59)",
    "configs/ide_f64c5_nmnist_if.yaml": "99.30 +- 0.04 (best 99.35)",
    "configs/ide_f64c5_nmnist_lif.yaml": "99.42 +- 0.04 (best 99.47)",
    "configs/ide_alexnet_f_cifar10_t30_lif.yaml": "91.74 +- 0.09 (best 91.92)",
    "configs/tssl_mnist_cnn.yaml": "99.50 +- 0.02 (best 99.53)",
    "configs/tssl_fmnist_mlp.yaml": "89.75 (best 89.92)",
    "configs/tssl_fmnist_cnn.yaml": "92.69 +- 0.09 (best 92.83)",
    "configs/tssl_cifar10_cnn.yaml": "88.98 +- 0.27 (best 89.22)",
    "configs/tssl_cifar10_large.yaml": "91.41",
}


def _val_selected(r: Dict) -> str:
    if r.get("val_selected_test_acc") is None:
        return "-"
    return f"{_pct(r['val_selected_test_acc'])} (epoch {r['val_selected_epoch']})"


def train_table(name: str = "train.jsonl", published: bool = True) -> str:
    rows = [r for r in _rows(name) if not r.get("failed")]
    if not rows:
        return f"_No results in benchmarks/results/{name} yet._\n"
    out = ["| config | data | rule | T | epochs | seed | test acc % (final epoch) | test acc % at best val epoch "
           "| best test epoch % (labelled) | published (best test epoch) | train img/s | train time | peak MiB "
           "| device | commit |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: r["config"]):
        T = r["model"].get("time_steps", "-")
        shown = [o for o in r.get("overrides", []) if not o.startswith("train.out_dir=")]
        ov = f" ({' '.join(shown)})" if shown else ""
        mem = "-" if r.get("peak_memory_mib") is None else f"{r['peak_memory_mib']:.0f}"
        planned = r.get("planned_epochs") or r["epochs"]
        ep = f"{r['epochs']}" + (f" of {planned} (shortened)" if r.get("shortened") else "")
        recipe = r.get("recipe_epochs")
        if recipe and planned < recipe:
            ep += f" (schedule shortened from the recipe's {recipe})"
        acc = _pct(r["test_acc"]) + ("" if r["epochs"] == planned else f" (epoch {r['epochs']})")
        secs = r.get("train_time_total_s") or r.get("wall_s")
        tt = "-" if secs is None else f"{secs / 60:.1f} min"
        data = "CIFAR-10 (JPEG q75 copy)" if r["data"] == "cifar10" else r["data"]  # the only CIFAR-10 here
        out.append(f"| `{r['config']}`{ov} | {data} | {r['rule']['name']} | {T} | {ep} | {r['seed']} "
                   f"| {acc} | {_val_selected(r)} | {_pct(r.get('best_test_acc'))} | {PUBLISHED.get(r['config'], '-') if published else '-'} "
                   f"| {r['train_images_per_s']:,.0f} | {tt} | {mem} | {r['device']} | {r.get('commit') or '-'} |")
    return "\n".join(out) + "\n"


def _newest_commit(rows: List[Dict]) -> List[Dict]:
    """The rows of the newest commit that has any (one run of a benchmark, same code)."""
    if not rows:
        return []
    last = rows[-1].get("commit")
    return [r for r in rows if r.get("commit") == last]


#: per-step overhead bars of the Two Routes issue (x eager BP)
ALIGN_BARS = {"fa": 1.5, "sign_symmetry": 1.5, "kp": 1.5, "sa": 1.5, "wm": 2.5, "ia": 2.5}


_VARIANT_KEYS = {"reg_scale": 1.0, "batch_center": False, "b_optimizer": "model"}


def _variant(rule: dict) -> str:
    """A rule's row label: its name, plus the variant settings that differ from the defaults."""
    extra = [f"{k}={rule[k]}" for k, d in _VARIANT_KEYS.items() if k in rule and rule[k] != d]
    return rule["name"] + (f" ({', '.join(extra)})" if extra else "")


def alignment_table() -> str:
    steps = {r["rule"]: r for r in _newest_commit(_lines("alignment_resnet20_step.jsonl"))}
    runs = _lines("alignment_resnet20.jsonl")
    if not steps and not runs:
        return "_No results in benchmarks/results/alignment_resnet20*.jsonl yet._\n"
    last = runs[-1].get("commit") if runs else None
    by_rule = {_variant(r["rule"]): r for r in runs if r.get("commit") == last}
    out = ["| rule | epochs | test acc % (final epoch) | test error % | step ms | x eager BP | bar | train commit | step commit |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    names = ["bp", "fa", "sign_symmetry", "kp", "wm", "ia", "sa", "aa"]
    for rule in names + sorted(k for k in by_rule if k not in names):  # variants (VARIANTS=1) last
        r, t = by_rule.get(rule), steps.get(rule)
        if r is None and t is None:
            continue
        if r is not None and r.get("test_acc") is not None:
            acc, err = _pct(r["test_acc"]), f"{100 * (1 - r['test_acc']):.2f}"
            ep = str(r["epochs"]) + (" (stopped)" if r["epochs"] < r["planned_epochs"] else "")
        elif r is not None and r.get("failed"):
            acc, err, ep = f"diverged (epoch {r['epochs'] + 1})", "-", str(r["planned_epochs"])
        else:
            acc, err, ep = "diverged (no line)", "-", "-"
        ms = "-" if t is None else f"{t['median_ms']:.2f}"
        ratio = "-" if t is None or t.get("step_ratio_to_bp") is None else f"{t['step_ratio_to_bp']:.2f}"
        bar = f"<= {ALIGN_BARS[rule]}" if rule in ALIGN_BARS else "-"
        out.append(f"| `{rule}` | {ep} | {acc} | {err} | {ms} | {ratio} | {bar} | {r.get('commit') if r else '-'} "
                   f"| {t.get('commit') if t else '-'} |")
    dev = next(iter(steps.values()))["device"] if steps else (runs[-1]["device"] if runs else "-")
    return "\n".join(out) + f"\n\nDevice: {dev}.\n"


def pc_speed_table() -> str:
    rows = _newest_commit(_lines("pc_speed.jsonl"))
    if not rows:
        return "_No results in benchmarks/results/pc_speed.jsonl yet._\n"
    out = ["| variant | ms / step | x eager BP (same run) | reference x BP (H100) | reference ms | faster than reference |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['variant']} | {r['median_ms']:.2f} | {r['ratio_to_bp']:.2f} | {r['reference_ratio_to_bp_h100']} "
                   f"| {r['reference_ms_h100']:.1f} | {r['reference_ms_h100'] / r['median_ms']:.1f}x |")
    r = rows[0]
    return "\n".join(out) + f"\n\nBatch {r['batch']}, Adam step included; {r['device']}, torch {r['torch']}, commit {r['commit']}.\n"


def ide_memory_table() -> str:
    rows = _newest_commit(_lines("ide_memory.jsonl"))
    if not rows:
        return "_No results in benchmarks/results/ide_memory.jsonl yet._\n"
    Ts = sorted({r["T"] for r in rows})
    out = ["| rule | " + " | ".join(f"T={T} img/s | T={T} peak MiB" for T in Ts) + " |",
           "| --- | " + " | ".join("--- | ---" for _ in Ts) + " |"]
    for rule in sorted({r["rule"] for r in rows}, key=lambda n: n != "ide"):
        cells = []
        for T in Ts:
            r = next((r for r in rows if r["rule"] == rule and r["T"] == T), None)
            if r is None or r.get("out_of_memory"):
                cells += ["out of memory" if r else "-", "-"]
            else:
                mem = "-" if r.get("peak_memory_mib") is None else f"{r['peak_memory_mib']:,.0f}"
                cells += [f"{r['train_images_per_s']:,.0f}", mem]
        out.append(f"| `{rule}` | " + " | ".join(cells) + " |")
    r = rows[0]
    return ("\n".join(out) + f"\n\n{r['model']}, batch {r['batch']}, LIF, random CIFAR-sized input, one step = rule.step + SGD; "
            f"{r['device']}, torch {r['torch']}, commit {r['commit']}.\n")


def tssl_speed_table() -> str:
    rows = _newest_commit(_lines("tssl_speed.jsonl"))
    if not rows:
        return ("_No results in benchmarks/results/tssl_speed.jsonl yet (GPU figures not measured; "
                "`benchmarks/run_tssl_gpu.sh` measures them)._\n")
    variants = [v for v in ("bptt", "tssl", "tssl+graph") if any(r.get("variant", r["rule"]) == v for r in rows)]
    out = ["| model | " + " | ".join(f"`{v}` img/s | `{v}` peak MiB" for v in variants) + " | best tssl / bptt |",
           "| --- | " + " | ".join("--- | ---" for _ in variants) + " | --- |"]
    for model in dict.fromkeys(r["model"] for r in rows):
        cells, ratio = [], None
        for v in variants:
            r = next((r for r in rows if r["model"] == model and r.get("variant", r["rule"]) == v), None)
            if r is None or r.get("out_of_memory"):
                cells += ["out of memory" if r else "-", "-"]
                continue
            mem = "-" if r.get("peak_memory_mib") is None else f"{r['peak_memory_mib']:,.0f}"
            cells += [f"{r['train_images_per_s']:,.0f}" + (" (capture failed)" if r.get("graph_failed") else ""), mem]
            if r.get("speedup_vs_bptt"):
                ratio = max(ratio or 0.0, r["speedup_vs_bptt"])
        out.append(f"| `{model}` | " + " | ".join(cells) + f" | {'-' if ratio is None else f'{ratio:.2f}x'} |")
    r = rows[0]
    return ("\n".join(out) + f"\n\nT={r['T']}, batch {r['batch']}, one step = rule.step + grad-norm clip + AdamW + "
            f"weight clamp; {r['device']}, torch {r['torch']}, commit {r['commit']}.\n")


#: the original IDE code on one H100 (issue #8): train img/s, peak MiB; and the bar for the fast path
IDE_ORIGINAL = {("f400", 5): (5121, 101, 51000), ("f64c5", 30): (722, 592, 7200), ("alexnet_f", 30): (421, 1444, 4200),
                ("cifarnet_f", 30): (305, 2424, 1800), ("alexnet_f", 100): (400, 1446, 2400)}


def ide_speed_table() -> str:
    rows = [r for r in _newest_commit(_lines("ide_speed.jsonl")) if not r.get("smoke")]
    if not rows:
        return ("_No results in benchmarks/results/ide_speed.jsonl yet (GPU figures not measured; "
                "`python benchmarks/ide_speed.py` on a GPU measures them)._\n")
    out = ["| model | T | original code img/s (MiB) | bar img/s | reference path img/s (MiB) | fast path img/s (MiB), "
           "best variant | x reference path | x original | eval img/s ref / fast | solver iters |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for cfg in dict.fromkeys(r["config"] for r in rows):
        rs = [r for r in rows if r["config"] == cfg and "train_images_per_s" in r]
        ref = next((r for r in rs if r["variant"] == "reference"), None)
        fast = [r for r in rs if r["variant"] != "reference" and not r.get("graph_failed")]
        if ref is None or not fast:
            continue
        best = max(fast, key=lambda r: r["train_images_per_s"])
        orig = IDE_ORIGINAL.get((ref["model"], ref["T"]))
        mem = lambda r: "-" if r.get("peak_memory_mib") is None else f"{r['peak_memory_mib']:,.0f}"  # noqa: E731
        o = "-" if orig is None else f"{orig[0]:,} ({orig[1]:,})"
        bar = "-" if orig is None else f"{orig[2]:,}"
        xo = "-" if orig is None else f"{best['train_images_per_s'] / orig[0]:.1f}x"
        out.append(f"| {ref['model']} ({ref['neuron']}) | {ref['T']} | {o} | {bar} | {ref['train_images_per_s']:,.0f} ({mem(ref)}) "
                   f"| {best['train_images_per_s']:,.0f} ({mem(best)}), `{best['variant']}` "
                   f"| {best['train_images_per_s'] / ref['train_images_per_s']:.2f}x | {xo} "
                   f"| {ref['eval_images_per_s']:,.0f} / {best['eval_images_per_s']:,.0f} "
                   f"| {ref.get('solver_iters_mean') or 0:.0f} / {best.get('solver_iters_mean') or 0:.0f} |")
    r = rows[0]
    variants = ", ".join(f"`{v}`" for v in dict.fromkeys(r["variant"] for r in rows))
    return ("\n".join(out) + f"\n\nBatch {r['batch']}, random input at initialisation, one step = rule.step + SGD; "
            f"variants measured: {variants}; {r['device']}, torch {r['torch']}, commit {r['commit']}.\n")


def feedback_ablation_table(name: str = "ablation_f64c5_gain.jsonl") -> str:
    """Per-epoch train loss, test accuracy and measured feedback strength of F64C5 runs that differ
    only in the feedback's normalisation and bound (``feedback_by_epoch`` from feedback_norm.py)."""
    rows = [r for r in _rows(name) if not r.get("failed")]
    if not rows:
        return f"_No results in benchmarks/results/{name} yet._\n"
    out = ["| normalisation | bound (g init) | seed | train loss by epoch | test acc % by evaluated epoch | true norm of W "
           "by epoch (x Vth) | solver iters (last epoch) | train img/s | device | commit |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    finals: Dict[tuple, List[float]] = {}
    for r in sorted(rows, key=lambda r: (_arm(r), r["seed"])):
        m = r["model"]
        norm, bound = _arm(r)
        finals.setdefault((norm, bound), []).append(r["test_acc"])
        curve = r["curve"]
        loss = " / ".join(f"{c['train_loss']:.4f}" for c in curve)
        acc = " / ".join(f"{_pct(c['test_acc'])} (e{c['epoch']})" for c in curve if "test_acc" in c)
        vth = m.get("threshold", 2.0)
        fb = " / ".join(f"{f['operator_norm']:.2f} ({f['operator_norm'] / vth:.2f}, e{f['epoch']})"
                        for f in r.get("feedback_by_epoch", []))
        its = curve[-1].get("train/solver/iters")
        out.append(f"| {norm} | {bound} | {r['seed']} | {loss} | {acc} | {fb or '-'} | {'-' if its is None else f'{its:.1f}'} "
                   f"| {r['train_images_per_s']:,.0f} | {r['device']} | {r.get('commit') or '-'} |")
    out += ["", "| normalisation | bound (g init) | final test acc % by seed | mean |", "| --- | --- | --- | --- |"]
    for (norm, bound), accs in finals.items():
        out.append(f"| {norm} | {bound} | {' / '.join(_pct(a) for a in accs)} | {_pct(sum(accs) / len(accs))} |")
    return "\n".join(out) + "\n"


def _arm(r: Dict) -> tuple:
    """A feedback ablation row's arm: its normalisation and its bound (g init)."""
    m = r["model"]
    sig = m.get("sigma_of", "operator")
    norm = {"kernel": "kernel (reference)", "fourier": "Fourier bound"}.get(sig, "operator (power iteration)")
    return norm, f"{m.get('fb_norm_range', 1.0):g} ({m.get('fb_gain_init', 0.9):g})"


def meta_plasticity_table(name: str = "meta_plasticity.jsonl") -> str:
    """Held-out-class query accuracy of FA, the learned rules and BP (newest line per arm and seed)."""
    rows = _lines(name)
    newest: Dict[tuple, Dict] = {}
    for r in rows:
        newest[(r["arm"], r["seed"])] = r
    if not newest:
        return f"_No results in benchmarks/results/{name} yet._\n"

    def ms(xs):
        m = sum(xs) / len(xs)
        s = (sum((x - m) ** 2 for x in xs) / max(1, len(xs) - 1)) ** 0.5
        return f"{100 * m:.1f} +- {100 * s:.1f}"

    out = ["| arm | feedback | terms | meta-train episodes | seeds | held-out classes: query acc % (final theta) "
           "| meta-train classes: query acc % | best held-out eval during meta-training % (5 episodes each, per-seed best: selected on the held-out classes, optimistic) "
           "| final theta (mean over seeds) | skipped (non-finite) episodes |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for arm in ("fa", "bp", "pool", "full"):
        rs = [r for (a, _), r in sorted(newest.items()) if a == arm]
        if not rs:
            continue
        theta = {k: sum(r["theta"][k] for r in rs) / len(rs) for k in rs[0]["theta"]}
        best = [max(a for e, a in r["curve"] if e > 0) for r in rs if any(e > 0 for e, _ in r["curve"])]
        out.append(f"| {rs[0]['label']} | {rs[0]['feedback']} | {'+'.join(rs[0]['terms'])} | "
                   f"{'/'.join(str(r['episodes']) for r in rs)} | {','.join(str(r['seed']) for r in rs)} | "
                   f"{ms([r['heldout_acc'] for r in rs])} | {ms([r['train_classes_acc'] for r in rs])} | "
                   f"{ms(best) if best else '-'} | "
                   f"{', '.join(f'{k} {v:.4f}' for k, v in theta.items())} | "
                   f"{'/'.join(str(r.get('skipped_episodes', 0)) for r in rs)} |")
    return "\n".join(out) + "\n"


def meta_memory_table(name: str = "meta_memory.jsonl") -> str:
    rows = _lines(name)
    if not rows:
        return f"_No results in benchmarks/results/{name} yet._\n"
    out = ["| inner steps | gradient checkpoint every | peak memory above start (MiB) |", "| --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['inner_steps']} | {r['inner_checkpoint'] or 'off'} | {r['peak_mib_above_start']:.0f} |")
    return "\n".join(out) + "\n"


def results_markdown() -> str:
    return ("**Training runs** (`benchmarks/results/train.jsonl`, from `benchmarks/train_bench.py`)\n\n"
            + train_table() + "\n**Ablation: spectral norm of the F64C5 feedback convolution** "
            "(`benchmarks/results/ablation_f64c5_sigma.jsonl`; 10-epoch schedule, x0.1 at 5 and 8, both runs "
            "sharing one GPU; `sigma_of=kernel` is the reference's normalisation)\n\n"
            + train_table("ablation_f64c5_sigma.jsonl", published=False)
            + "\n**CPU proxy: the F64C5 feedback's normalisation and bound** "
            "(`benchmarks/results/ablation_f64c5_gain.jsonl`; configs/ide_f64c5_mnist_lif.yaml shortened to the first "
            "20,000 MNIST training images, 4 epochs, x0.1 at 3, full 10,000-image test set; runs "
            "sharing two CPU cores, so img/s compares nothing; true norms measured on the kept checkpoints by `benchmarks/feedback_norm.py`)\n\n"
            + feedback_ablation_table()
            + "\n**Ablation: inner BatchNorm statistics of AlexNet-F in the IDE map** "
            "(`benchmarks/results/ablation_alexnet_bn.jsonl`; CIFAR-10 (JPEG q75 copy), T=30, LIF, 12-epoch shortened "
            "schedule (x0.1 at 6 and 9), both runs sharing one GPU, stopped by the time limit)\n\n"
            + train_table("ablation_alexnet_bn.jsonl", published=False)
            + "\n**IDE vs BPTT on AlexNet-F: training images/s and peak memory against T** "
            "(`benchmarks/results/ide_memory.jsonl`, from `benchmarks/ide_memory.py`)\n\n" + ide_memory_table()
            + "\n**Two Routes rules on ResNet-20 / CIFAR-10 (JPEG q75 copy)** (`benchmarks/results/alignment_resnet20*.jsonl`, "
            "from `benchmarks/run_methods_gpu.sh`: step times measured one rule after the other on an idle GPU, "
            "the training runs concurrently, one schedule for all: SGD 0.1, momentum 0.9, wd 5e-4, cosine, "
            "batch 128, the epochs shown)\n\n" + alignment_table()
            + "\n**IDE speed: the fast path against the reference path and the original code** "
            "(`benchmarks/results/ide_speed.jsonl`, from `benchmarks/ide_speed.py`)\n\n" + ide_speed_table()
            + "\n**TSSL-BP against BPTT on the same networks: training images/s** (`benchmarks/results/tssl_speed.jsonl`, "
            "from `benchmarks/tssl_speed.py`)\n\n" + tssl_speed_table()
            + "\n**Meta-learned plasticity: query accuracy on held-out classes** (`benchmarks/results/meta_plasticity.jsonl`, "
            "from `benchmarks/meta_plasticity.py`; MNIST + Fashion-MNIST pool, digits 7-9 and Fashion 7-9 held out, "
            "5 classes x 50 images online, query 10 a class, 30 meta-test episodes a seed; shortened meta-training "
            "(100 of the release's 600 episodes), Adam 1e-3, CPU; figure `benchmarks/results/meta_plasticity.png`)\n\n"
            + meta_plasticity_table()
            + "\nSame, learned F0+F2+F9 with a smaller meta learning rate (Adam 3e-4, 60 episodes, non-finite episodes "
            "skipped; `benchmarks/results/meta_plasticity_lr3e-4.jsonl`)\n\n"
            + meta_plasticity_table("meta_plasticity_lr3e-4.jsonl")
            + "\n**Meta-learned plasticity: memory of the meta-gradient** (`benchmarks/results/meta_memory.jsonl`, from "
            "`benchmarks/meta_memory.py`; peak RSS of a fresh CPU process above its start, 784-170-130-100-70-20, float32)\n\n"
            + meta_memory_table()
            + "\n**Predictive coding: time per training step on the 5-block MNIST CNN** (`benchmarks/results/pc_speed.jsonl`, "
            "from `benchmarks/pc_speed.py`)\n\n" + pc_speed_table())


if __name__ == "__main__":
    print(results_markdown())
