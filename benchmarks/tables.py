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


def _emstdp_net(r: Dict) -> str:
    m = r["model"]
    if m.get("name") == "emstdp_mlp":
        hidden = "-".join(str(h) for h in m.get("hidden", [100]))
        if m.get("frontend") == "conv":
            chans = "-".join(str(c) for c in m.get("conv_channels", [16, 32]))
            return f"conv {chans} (frozen) + IF {hidden}-10"
        return f"784-{hidden}-10 IF"
    return "784-" + "-".join(str(h) for h in m.get("hidden", [])) + "-10 ReLU"


def _images_per_epoch(r: Dict) -> str:
    """Training images per epoch of a run: ``max_steps_per_epoch x batch_size`` from its config file."""
    import yaml

    try:
        c = yaml.safe_load((RESULTS.parent.parent / r["config"]).read_text())
        steps, bs = c["train"].get("max_steps_per_epoch"), c["data"]["batch_size"]
    except Exception:  # noqa: BLE001 - the config has moved: say so rather than guess
        return "?"
    for o in r.get("overrides", []):
        k, _, v = o.partition("=")
        steps = int(v) if k == "train.max_steps_per_epoch" else steps
        bs = int(v) if k == "data.batch_size" else bs
    return "all" if not steps else f"{steps * bs:,}"


def _optim(r: Dict) -> str:
    """A run's optimizer and learning rate, from its config file."""
    import yaml

    try:
        o = yaml.safe_load((RESULTS.parent.parent / r["config"]).read_text())["optim"]
    except Exception:  # noqa: BLE001
        return "?"
    betas = f" betas {tuple(o['betas'])}" if "betas" in o and o["name"] != "sgd" else ""
    return f"{o['name']}{betas} lr {o['lr']:g}"


def emstdp_table() -> str:
    """EMSTDP training runs (``emstdp.jsonl``), its fidelity against the reference code
    (``emstdp_fidelity.jsonl``) and its speed against the reference (``emstdp_speed.jsonl``)."""
    rows = [r for r in _rows("emstdp.jsonl") if not r.get("failed")]
    out = []
    if rows:
        out += ["| data | network | rule (feedback) | optimizer | epochs x images | seed | test acc % (final epoch) | img/s | commit |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        order = {"symmetric": 0, "fa": 1, "dfa": 2}
        rows.sort(key=lambda r: (r["data"], _emstdp_net(r), r["rule"]["name"] != "emstdp",
                                 order.get(r["rule"].get("feedback", "symmetric"), 3), r.get("bench", "")))
        for r in rows:
            rule = r["rule"]["name"] + (f" ({r['rule'].get('feedback', 'symmetric')})" if r["rule"]["name"] == "emstdp" else "")
            imgs = f"{r['epochs']} x {_images_per_epoch(r)}"
            opt = "EMSTDPRMSprop (reference's)" if r.get("bench") == "emstdp_refopt" else _optim(r)
            out.append(f"| {r['data']} | {_emstdp_net(r)} | {rule} | {opt} | {imgs} | {r['seed']} | {_pct(r.get('test_acc'))} "
                       f"| {r['train_images_per_s']:.0f} | {r.get('commit', '-')} |")
        fe = _lines("emstdp_frontend.jsonl")
        if fe:
            f = fe[-1]
            out.append(f"\nConv front end: conv5 {f['channels']} with pooling, trained by `benchmarks/emstdp_frontend.py` "
                       f"({f['epochs']} epoch of BP, {f['data']}; its test accuracy with a linear readout "
                       f"{_pct(f['bp_test_acc'])}%), then frozen.")
        out.append(f"\nShortened schedules (the reference trains up to 1000 such epochs), batch 10, CPU shared by "
                   f"several jobs ({rows[0].get('device', '-')}; img/s compares nothing). Published: 94.7% on MNIST on "
                   f"Loihi with a conv front end + EMSTDP 100-10.\n")
    else:
        out.append("_No results in benchmarks/results/emstdp.jsonl yet._\n")
    fid = _lines("emstdp_fidelity.jsonl")
    if fid:
        fid = [r for r in fid if r.get("commit") == fid[-1].get("commit")]  # the newest run
        out += ["| network | feedback | batches | spike / error-spike mismatches | thresholds equal | max update rel. error |",
                "| --- | --- | --- | --- | --- | --- |"]
        groups: Dict[tuple, List[Dict]] = {}
        for r in fid:
            groups.setdefault((tuple(r["sizes"]), r["feedback"]), []).append(r)
        for (sizes, fb), rs in groups.items():
            out.append(f"| {'-'.join(map(str, sizes))} | {fb} | {len(rs)} | {sum(r['spike_mismatches'] for r in rs)} / "
                       f"{sum(r['error_spike_mismatches'] for r in rs)} | {all(r['thresholds_equal'] for r in rs)} | "
                       f"{max(max(r['update_rel_err_per_layer']) for r in rs):.1e} |")
        out.append(f"\nAgainst zmeidd/EMSTDP `EMSTDP_algo.Network.Train`, float64, same weights, feedback matrices and input "
                   f"spike trains ({fid[0]['data']}, batch {fid[0]['batch']}), each side then training on its own; commit "
                   f"{fid[0].get('commit', '-')}.\n")
    sp = _lines("emstdp_speed.jsonl")
    if sp:
        r = sp[-1]
        ips = r["train_images_per_s"]
        out += ["| implementation | training img/s | x reference |", "| --- | --- | --- |"]
        for k, v in ips.items():
            x = 1.0 if k.startswith("reference") else r["speedup_vs_reference"][k]
            out.append(f"| {k} | {v:.0f} | {x:.2f} |")
        out.append(f"\n{'-'.join(map(str, r['sizes']))}, T = {r['time_steps']}, batch {r['batch']}, {r['threads']} thread(s), "
                   f"interleaved in one run, median of {r['repeat']}; {r['device']}, torch {r['torch']}, commit "
                   f"{r.get('commit', '-')} (shared machine: the ratio is the figure).\n")
    return "\n".join(out) + ("\n" if not out[-1].endswith("\n") else "")


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
            + "\n**Predictive coding: time per training step on the 5-block MNIST CNN** (`benchmarks/results/pc_speed.jsonl`, "
            "from `benchmarks/pc_speed.py`)\n\n" + pc_speed_table()
            + "\n**EMSTDP: training runs, fidelity to the reference code, speed** (`benchmarks/results/emstdp*.jsonl`, from "
            "`benchmarks/train_bench.py` with `configs/emstdp_*.yaml`, `benchmarks/emstdp_fidelity.py`, "
            "`benchmarks/emstdp_speed.py`)\n\n" + emstdp_table())


if __name__ == "__main__":
    print(results_markdown())
