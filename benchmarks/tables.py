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


#: figures from other runs (published accuracies, the reference codes' timings, issue targets), with
#: their sources: benchmarks/published.json
PUBLISHED_FILE = Path(__file__).resolve().parent / "published.json"


def published() -> Dict:
    return json.loads(PUBLISHED_FILE.read_text())


def _published_accuracy(config: str) -> str:
    entry = published()["accuracy"].get(config)
    return "-" if entry is None else entry["figure"]


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
                   f"| {acc} | {_val_selected(r)} | {_pct(r.get('best_test_acc'))} | {_published_accuracy(r['config']) if published else '-'} "
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
    by_rule = {_variant(r["rule"]): r for r in runs}  # the newest row of each rule and variant
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
    ref = published()["pc_reference_speed"]
    out = ["| variant | ms / step | ratio to eager BP (same run) | reference's own ratio to BP (its run) "
           "| reference ms (its run) | reference ms / ours (cross-run, not a ratio) |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        key = r["variant"].replace(" eager", "")
        rr = ref["ratio_to_bp"].get(key)
        rms = None if rr is None else rr * ref["bp_ms"]
        cells = ["-", "-", "-"] if rr is None else [f"{rr}", f"{rms:.1f}", f"{rms / r['median_ms']:.1f}"]
        out.append(f"| {r['variant']} | {r['median_ms']:.2f} | {r['ratio_to_bp']:.2f} | " + " | ".join(cells) + " |")
    r = rows[0]
    return ("\n".join(out) + f"\n\nBatch {r['batch']}, Adam step included; {r['device']}, torch {r['torch']}, commit {r['commit']}. "
            f"Reference figures: {ref['device']}, batch {ref['batch']} (benchmarks/published.json); the last column "
            "divides figures from two runs on different machines.\n")


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
                "the `gpu` suite measures them: `python -m benchmarks gpu`)._\n")
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


def _ide_original(model: str, T: int):
    """``(img/s, peak MiB, bar img/s)`` of the original IDE code (published.json), or ``None``."""
    for r in published()["ide_original_speed"]["rows"]:
        if (r["model"], r["T"]) == (model, T):
            return r["train_images_per_s"], r["peak_memory_mib"], r["bar_images_per_s"]
    return None


def ide_speed_table() -> str:
    """One table per device (the newest commit's rows on each): the fast path against the reference
    path of the same run, and, on a GPU, beside the original code's H100 figures (another run)."""
    lines = [r for r in _lines("ide_speed.jsonl") if not r.get("smoke")]
    if not lines:
        return ("_No results in benchmarks/results/ide_speed.jsonl yet (GPU figures not measured; "
                "the `gpu` suite measures them: `python -m benchmarks gpu`)._\n")
    parts = []
    for device in dict.fromkeys(r["device"] for r in lines):
        rows = _newest_commit([r for r in lines if r["device"] == device])
        gpu = not str(device).lower().startswith("cpu")
        out = ["| model | T | original code img/s (MiB), H100, its run | bar img/s | reference path img/s (MiB) "
               "| fast path img/s (MiB), best variant | ratio to reference path (same run) "
               "| ours / original img/s (cross-run, not a ratio) | eval img/s ref / fast | solver iters |",
               "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for cfg in dict.fromkeys(r["config"] for r in rows):
            rs = [r for r in rows if r["config"] == cfg and "train_images_per_s" in r]
            ref = next((r for r in rs if r["variant"] == "reference"), None)
            fast = [r for r in rs if r["variant"] != "reference" and not r.get("graph_failed")]
            if ref is None or not fast:
                continue
            best = max(fast, key=lambda r: r["train_images_per_s"])
            orig = _ide_original(ref["model"], ref["T"]) if gpu else None
            mem = lambda r: "-" if r.get("peak_memory_mib") is None else f"{r['peak_memory_mib']:,.0f}"  # noqa: E731
            o = "-" if orig is None else f"{orig[0]:,} ({orig[1]:,})"
            bar = "-" if orig is None else f"{orig[2]:,}"
            xo = "-" if orig is None else f"{best['train_images_per_s'] / orig[0]:.1f}"
            ratio = best.get("train_speedup_vs_reference") or best["train_images_per_s"] / ref["train_images_per_s"]
            out.append(f"| {ref['model']} ({ref['neuron']}) | {ref['T']} | {o} | {bar} | {ref['train_images_per_s']:,.0f} ({mem(ref)}) "
                       f"| {best['train_images_per_s']:,.0f} ({mem(best)}), `{best['variant']}` "
                       f"| {ratio:.2f}x | {xo} "
                       f"| {ref['eval_images_per_s']:,.0f} / {best['eval_images_per_s']:,.0f} "
                       f"| {ref.get('solver_iters_mean') or 0:.0f} / {best.get('solver_iters_mean') or 0:.0f} |")
        r = rows[0]
        variants = ", ".join(f"`{v}`" for v in dict.fromkeys(r["variant"] for r in rows))
        how = ("variants timed interleaved, step by step" if r.get("interleaved") else "variants timed one after the other")
        note = (" CPU timings on a machine shared with other jobs: only the same-run ratio means anything."
                if not gpu else "")
        parts.append("\n".join(out) + f"\n\nBatch {r['batch']}, random input at initialisation, one step = rule.step + SGD; "
                     f"variants measured: {variants} ({how}); {r['device']}, torch {r['torch']}, commit {r['commit']}.{note}\n")
    return "\n".join(parts)


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


def distributed_table() -> str:
    rows = _newest_commit(_lines("distributed.jsonl"))
    if not rows:
        return "_No results in benchmarks/results/distributed.jsonl yet._\n"
    out = ["| config | processes | images/s (median of rounds) | rounds | x 1 process |", "| --- | --- | --- | --- | --- |"]
    import statistics

    med = lambda r: statistics.median(r["images_per_s"])  # noqa: E731
    one = {r["config"]: med(r) for r in rows if r["nproc"] == 1}
    for r in rows:
        base = one.get(r["config"])
        ratio = f"{med(r) / base:.2f}" if base else "-"
        out.append(f"| {r['config']} | {r['nproc']} | {med(r):.0f} | "
                   f"{', '.join(f'{v:.0f}' for v in r['images_per_s'])} | {ratio} |")
    r = rows[0]
    return ("\n".join(out) + f"\n\nGlobal batch {r['global_batch']}, {r['steps_per_epoch']} steps an epoch (shortened), "
            f"last of 2 epochs, {r['threads_per_process']} thread per process, {r['data']}; {r['device']}, "
            f"torch {r['torch']}, commit {r['commit']}. {r.get('note', '')}\n")


PEER_LABELS = {"bioprop": "bioprop `bptt` (fused)", "bioprop-reference": "bioprop (reference loop)",
               "bioprop-compiled": "bioprop (compiled steps)", "bioprop-graph": "bioprop (CUDA graph)",
               "snntorch": "snnTorch", "spikingjelly": "SpikingJelly", "norse": "Norse"}


def peers_bptt_table(name: str = "peers_bptt.jsonl") -> str:
    """Step time and peak memory of one BPTT training step, bioprop against snnTorch, SpikingJelly
    and Norse (newest run per device), with the same-function check."""
    rows = _lines(name)
    if not rows:
        return "_No results in benchmarks/results/peers_bptt.jsonl yet (`benchmarks/peers_bptt.py` measures them)._\n"
    out = []
    for device in dict.fromkeys(r["device"] for r in rows):
        dev_rows = _newest_commit([r for r in rows if r["device"] == device])
        timing = [r for r in dev_rows if r["kind"] == "timing"]
        checks = [r for r in dev_rows if r["kind"] == "check"]
        libs = list(dict.fromkeys(r["lib"] for r in dev_rows))
        v = dev_rows[0]["versions"]
        ver = {"bioprop": f"commit {dev_rows[0]['commit']}", "snntorch": v.get("snntorch"),
               "spikingjelly": v.get("spikingjelly"), "norse": v.get("norse")}
        head = [f"{PEER_LABELS.get(l, l)}" + (f" {ver[l]}" if l in ver and l != "bioprop" and ver[l] else "")
                for l in libs]
        if timing:
            out += [f"| T | " + " | ".join(head) + " |", "| --- | " + " | ".join("---" for _ in libs) + " |"]
            for T in sorted(dict.fromkeys(r["T"] for r in timing)):
                base = next((r for r in timing if r["T"] == T and r["lib"] == "bioprop"), None)
                cells = []
                for l in libs:
                    r = next((r for r in timing if r["T"] == T and r["lib"] == l), None)
                    if r is None:
                        cells.append("-")
                        continue
                    ratio = "" if base is None or l == "bioprop" else f" ({r['median_ms'] / base['median_ms']:.2f}x)"
                    cells.append(f"{r['median_ms']:,.0f} ms{ratio}, {r['peak_mib']:,.0f} MiB")
                out.append(f"| {T} | " + " | ".join(cells) + " |")
            r = timing[0]
            out.append(f"\nOne training step (forward, cross-entropy, backward, Adam), batch {r['batch']}, fp32, "
                       f"`spiking_convnet` channels {r['channels']}, embedded MNIST batch; median of {r['repeat']} "
                       f"rounds (fewer at T >= 64, see `repeat` in the JSON lines), libraries interleaved in one "
                       f"process; (x) = time / bioprop's. Peak MiB: growth of peak RSS during the step (CPU) or "
                       f"of `max_memory_allocated` (CUDA). {device}, {r['threads']} thread(s), torch {r['torch']}, "
                       f"commit {r['commit']}, 1-min load average {r['load_avg_1min']:.1f} at the end"
                       + (" (a shared, loaded machine: re-measure before relying on the ratios)" if "cpu" in device else "")
                       + ".\n")
        if checks:
            out += ["", "| T | " + " | ".join(f"{PEER_LABELS.get(l, l)}: max abs logit diff / max rel grad diff" for l in libs) + " |",
                    "| --- | " + " | ".join("---" for _ in libs) + " |"]
            for T in sorted(dict.fromkeys(r["T"] for r in checks)):
                cells = []
                for l in libs:
                    r = next((r for r in checks if r["T"] == T and r["lib"] == l), None)
                    cells.append("-" if r is None else f"{r['max_abs_logit_diff']:.1e} / {r['max_rel_grad_diff']:.1e}")
                out.append(f"| {T} | " + " | ".join(cells) + " |")
            out.append("\nSame weights, one batch of 16 in float64, differences to bioprop `bptt`. SpikingJelly computes "
                       "the same function; Norse the same forward but its closest surrogate (SuperSpike) in place of "
                       "atan; snnTorch cannot express the leak acting after the reset (see docs/methods/bptt.md).\n")
    return "\n".join(out) + "\n"


_FIDELITY_NOTES = {
    "mlp": "Fashion-MNIST, dense 784-64-32-10 tanh",
    "cnn_pool": "CIFAR-10 (JPEG q75 copy), conv 8-P-16-P, FC 32, 10",
    "cnn_release": "the release's conv-conv layout (8-8-P-8-16-P); differs where expected: the release's filter "
                   "update of a conv after a conv reads tanh(h) while its forward pass fed h",
}


_EKDAA_DEFAULTS = {"beta": 0.9, "gamma": 0.1, "pool_target": "upsample", "reduction": "mean", "conv_normalize": False,
                   "conv_kernel": "adjoint", "target_activation": None}


def _rows_release() -> List[Dict]:
    """The newest row per (arm, schedule, seed) of ``ekdaa_release.jsonl``."""
    newest: Dict[tuple, Dict] = {}
    for r in _lines("ekdaa_release.jsonl"):
        newest[(r["arm"], r["epochs"], r["train_n"], r["test_n"], r["seed"])] = r
    return list(newest.values())


def _ekdaa_lr(r: Dict) -> float:
    """A run's learning rate: its ``optim.lr=`` override, else its config file's."""
    import yaml

    for o in r.get("overrides", []):
        if o.startswith("optim.lr="):
            return float(o.partition("=")[2])
    try:
        return float(yaml.safe_load((RESULTS.parent.parent / r["config"]).read_text())["optim"]["lr"])
    except Exception:  # noqa: BLE001 - the config has moved: say so rather than guess
        return float("nan")


def _mean_sd(xs: List[float]):
    import statistics

    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def ekdaa_table() -> str:
    """EKDAA against BP and FA on the same network and schedule (``ekdaa.jsonl``): final-epoch test
    accuracy as mean +- sample standard deviation over seeds (n and the seeds named), the gap of the
    means to BP of the same data, network, activation, schedule and learning rate, and whether that
    gap is within noise; then the release-against-ours training runs (``ekdaa_release.jsonl``), the
    step-time ratio, the angles to BP at init and the fidelity check."""
    rows = [r for r in _rows("ekdaa.jsonl") if not r.get("failed") and r.get("test_acc") is not None]
    out = []
    if rows:
        out += ["| data | network | phi | rule | E init | pool target | schedule | lr | n (seeds) "
                "| test acc % (final epoch), mean +- sd | min - max | vs BP (points) | near BP? | commits |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

        def setting(r):  # what BP must share for a comparison: data, network, activation, schedule, lr
            return (r["data"], r["model"]["name"], r["model"].get("activation", "tanh"), r["epochs"],
                    r.get("train_size") or 0, _ekdaa_lr(r))

        groups: Dict[tuple, List[Dict]] = {}
        for r in rows:
            opts = tuple(sorted((k, str(v)) for k, v in r["rule"].items() if k != "name"))
            groups.setdefault(setting(r) + (r["rule"]["name"], opts), []).append(r)
        stats = {k: _mean_sd([100 * r["test_acc"] for r in g]) + (len(g),) for k, g in groups.items()}
        bp = {k[:6]: v for k, v in stats.items() if k[6] == "bp"}
        order = {"bp": 0, "fa": 1, "ekdaa": 2}

        def sort_key(k):
            ropts = dict(k[7])
            return (k[0], k[1], k[2], -k[4], -k[3], -k[5], order.get(k[6], 3), ropts.get("pool_target", ""),
                    ropts.get("e_init", ""), str(k[7]))

        for k in sorted(groups, key=sort_key):
            g = sorted(groups[k], key=lambda r: r["seed"])
            r0 = g[0]
            rname, ropts = k[6], dict(k[7])
            data = "CIFAR-10 (JPEG q75 copy)" if r0["data"] == "cifar10" else r0["data"]
            n = r0.get("train_size")
            sched = f"{r0['epochs']} ep" + (f" of {n:,} train images" if n else "")
            full = {"cifar10": 50000, "fashion_mnist": 60000}.get(r0["data"])
            if (r0.get("recipe_epochs") and r0["planned_epochs"] < r0["recipe_epochs"]) or (n and full and n < full):
                sched += f" (shortened; recipe {r0.get('recipe_epochs', '?')} ep" + (f" of {full:,}" if full else "") + ")"
            rule = rname
            if rname == "ekdaa":  # the options that differ from the rule's defaults (E init and pool target have columns)
                extra = [f"{o}={ropts[o]}" for o, d in _EKDAA_DEFAULTS.items()
                         if o in ropts and o != "pool_target" and ropts[o] != str(d)]
                rule += f" ({', '.join(extra)})" if extra else ""
            e_init = ropts.get("e_init", "transpose") if rname == "ekdaa" else "-"
            pool = ropts.get("pool_target", "upsample") if rname == "ekdaa" and r0["model"]["name"] == "ekdaa_cnn" else "-"
            mean, sd, cnt = stats[k]
            accs = [100 * r["test_acc"] for r in g]
            ref = bp.get(k[:6])
            if ref is None or rname == "bp":
                gap, near = "-", "-"
            else:
                d = mean - ref[0]
                # noise: the standard error of the difference of the means (sd unknown with one seed: 1 point)
                se = ((sd if sd is not None else 1.0) ** 2 / cnt + (ref[1] if ref[1] is not None else 1.0) ** 2 / ref[2]) ** 0.5
                gap = f"{d:+.2f}"
                near = "yes" if abs(d) <= max(1.0, 2 * se) else ("below" if d < 0 else "above")
                near += "" if cnt > 1 and ref[2] > 1 else " (1 seed)"
            sdtxt = f" +- {sd:.2f}" if sd is not None else ""
            commits = ", ".join(sorted({r.get("commit") or "-" for r in g}))
            out.append(f"| {data} | `{r0['model']['name']}` | {r0['model'].get('activation', 'tanh')} | {rule} | {e_init} "
                       f"| {pool} | {sched} | {k[5]:g} | {cnt} ({', '.join(str(r['seed']) for r in g)}) "
                       f"| {mean:.2f}{sdtxt} | {min(accs):.2f} - {max(accs):.2f} | {gap} | {near} | {commits} |")
        out.append("\nBatch 50, SGD momentum 0.85, updates as batch means (the release's lr 1e-3 on sums is lr 0.05 here), "
                   f"device {rows[0].get('device', '-')}, one thread. *near BP?*: `yes` when the difference of the means is "
                   "within max(1 point, 2 standard errors of the difference; an unknown sd counts as 1 point).")
    else:
        out.append("_No results in benchmarks/results/ekdaa.jsonl yet._")
    rel = _rows_release()
    if rel:
        out += ["", "| the release's CIFAR-10 recipe, same weights and batches | implementation | pool target | schedule "
                "| seed | test acc % per epoch (final last) | train loss, last epoch | commit |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rel:
            pool = r.get("rule_options", {}).get("pool_target", "upsample" if r["arm"] == "release" else "-")
            if r["arm"] == "release_bp":
                pool = "upsample (its BP)"
            out.append(f"| {r['arm']} | {r['implementation']} | {pool} | {r['epochs']} ep of the first {r['train_n']:,} "
                       f"train images, test on the first {r['test_n']:,} (shortened) | {r['seed']} "
                       f"| {' / '.join(_pct(c['test_acc']) for c in r['curve'])} | {r['curve'][-1]['train_loss']:.3f} "
                       f"| {r.get('commit') or '-'} |")
        out.append("\n`benchmarks/ekdaa_release_train.py`: tzee/EKDAA-Release (TensorFlow, CPU) and our rule from the "
                   "release's Glorot draw, on the same batches; its network (conv layers linear in the forward pass), "
                   "x / 255 - 0.5, batch 50, SGD lr 1e-3 momentum 0.85 on batch sums. Chance is 10%.")
    speed = _newest_commit(_lines("ekdaa_speed.jsonl"))
    if speed:
        out += ["", "| network | batch | ekdaa ms / step | bp ms / step | ekdaa / bp (interleaved) | device | threads | commit |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in speed:
            out.append(f"| `{r['model']}` | {r['batch']} | {r['ekdaa_median_ms']:.1f} | {r['bp_median_ms']:.1f} "
                       f"| {r['ratio_ekdaa_to_bp']:.2f} | {r['device']} | {r.get('threads', '-')} | {r.get('commit') or '-'} |")
    ang = _newest_commit(_lines("ekdaa_angles.jsonl"))
    if ang:
        out += ["", "| angle to BP at init (degrees, layer 1 .. L) | E init | pool target | beta | dtype | angles | commit |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in ang:
            data = "CIFAR-10 (JPEG q75 copy)" if r["data"] == "cifar10" else r["data"]
            pool = r["pool_target"] if r["model"] == "ekdaa_cnn" else "-"
            out.append(f"| {data}, `{r['model']}` | {r['e_init']} | {pool} | {r['beta']:g} | {r.get('dtype', 'float32')} "
                       f"| {' / '.join(f'{a:.1f}' for a in r['angle_deg'])} | {r.get('commit') or '-'} |")
    fid = _newest_commit(_lines("ekdaa_fidelity.jsonl"))
    if fid:
        out += ["", "| fidelity case (vs tzee/EKDAA-Release, TF) | steps | max rel. error over targets, errors, "
                "projections, dW, dE, W, E | largest | commit |", "| --- | --- | --- | --- | --- |"]
        cases: Dict[str, List[Dict]] = {}
        for r in fid:
            cases.setdefault(r["case"], []).append(r)
        for case, rs in cases.items():
            worst = max(((v, k) for r in rs for k, v in r["rel_err"].items() if v is not None))
            out.append(f"| {case}: {_FIDELITY_NOTES.get(case, '')} | {len(rs)} | {max(r['max_rel_err'] for r in rs):.1e} "
                       f"| {worst[1]} | {rs[-1].get('commit') or '-'} |")
    return "\n".join(out) + "\n"


def _emstdp_net(r: Dict) -> str:
    m = r["model"]
    if m.get("name") == "emstdp_mlp":
        hidden = "-".join(str(h) for h in m.get("hidden", [100]))
        if m.get("frontend") == "conv":
            chans = "-".join(str(c) for c in m.get("conv_channels", [16, 32]))
            return f"conv {chans} (frozen) + IF {hidden}-10"
        return f"784-{hidden}-10 IF"
    hidden = "-".join(str(h) for h in m.get("hidden", []))
    if m.get("frontend") == "conv":  # benchmarks/emstdp_conv_bp.py: BP head on the same frozen front end
        chans = "-".join(str(c) for c in m.get("conv_channels", [16, 32]))
        return f"conv {chans} (frozen) + ReLU {hidden}-10"
    return f"784-{hidden}-10 ReLU"


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


def _emstdp_trajectory() -> List[str]:
    """Learning curves of the reference code against ours (``emstdp_trajectory.jsonl``), newest
    row per arm, feedback, network and seed."""
    rows = _lines("emstdp_trajectory.jsonl")
    if not rows:
        return []
    newest: Dict[tuple, Dict] = {}
    for r in rows:
        newest[(r["feedback"], r["sizes"][1], r["seed"], r["arm"])] = r
    arm_order = {"reference": 0, "ours": 1, "ours_readout_only": 2, "reference_lockstep": 3, "ours_lockstep": 4}
    fb_order = {"symmetric": 0, "fa": 1, "dfa": 2}
    keys = sorted(newest, key=lambda k: (k[1], fb_order.get(k[0], 3), k[2], arm_order.get(k[3], 3)))
    first = newest[keys[0]]
    pts = " / ".join(f"{c['images'] // 1000}k" for c in first["curve"])
    out = [f"| network | feedback | seed | code | test acc % after {pts} training images | hidden error spikes "
           f"per neuron per phase-2 step (last interval) | hidden spikes per sample, phase 1 | angle to BP, hidden / output "
           f"(deg, last interval) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    names = {"reference": "reference (NumPy)", "ours": "ours", "ours_readout_only": "ours, output layer only "
             "(hidden layer frozen at its init)", "reference_lockstep": "reference, lockstep with ours",
             "ours_lockstep": "ours, lockstep with the reference"}
    for k in keys:
        r = newest[k]
        last = r["curve"][-1]
        name = names.get(k[3], k[3])
        if "weights_max_abs_diff" in last:
            name += f" (max weight difference {max(c['weights_max_abs_diff'] for c in r['curve']):.0e})"
        acc = " / ".join(f"{100 * c['test_acc']:.1f}" for c in r["curve"])

        def g(key, fmt):
            return fmt.format(last[key]) if key in last else "-"

        ang = (f"{last['emstdp/angle/1']:.0f} / {last['emstdp/angle/2']:.0f}" if "emstdp/angle/1" in last else "-")
        out.append(f"| 784-{k[1]}-10 | {k[0]} | {k[2]} | {name} | {acc} | {g('emstdp/err_rate/1', '{:.4f}')} "
                   f"| {g('emstdp/spikes_p1/1', '{:.0f}')} | {ang} |")
    out.append(f"\nEach code with its own initialisation (`benchmarks/emstdp_trajectory.py`): the reference "
               f"`EMSTDP_algo.Network` with its own `np.random` weights, feedback matrices and input stream, ours with "
               f"torch's; both on the reference's recipe: the first {first['train_images']:,} {first['data']} training "
               f"images in file order, batch {first['batch']}, T = {first['time_steps']}, lr {first['lr']:g} with the "
               f"reference's RMSprop-like step and clip; test accuracy on the first {first['test_images']:,} test images. "
               f"Lockstep: both codes from our initial weights and feedback matrices on the same spike trains (float64) "
               f"for the whole run, each training with its own code. "
               f"Diagnostics are ours only (the rule's stats, averaged over the last interval). {first['device']}, "
               f"commit {first.get('commit', '-')}.\n")
    return out


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
        out.append("| mnist | conv front end (trained offline) + EMSTDP 100-10 | emstdp, **published** (Loihi, "
                   "Shrestha et al. DAC 2021) | - | - | - | 94.7 | - | - |")
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
    out += _emstdp_trajectory()
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


def meta_plasticity_table(name: str = "meta_plasticity.jsonl") -> str:
    """Held-out-class query accuracy of FA, the learned rules and BP on one common schedule: newest
    line per (arm, seed, meta-training episodes), one block of rows per episode count."""
    rows = _lines(name)
    newest: Dict[tuple, Dict] = {}
    for r in rows:
        newest[(r["episodes"], r["arm"], r["seed"])] = r
    if not newest:
        return f"_No results in benchmarks/results/{name} yet._\n"

    def mean(xs):
        return sum(xs) / len(xs)

    def ms(xs):
        m = mean(xs)
        s = (sum((x - m) ** 2 for x in xs) / max(1, len(xs) - 1)) ** 0.5
        return f"{100 * m:.1f} +- {100 * s:.1f}"

    out = ["| meta-training episodes | arm | terms | meta-lr (Adam), per-term step | seeds "
           "| held-out classes: query acc % (final theta) | of the FA-to-BP gap closed "
           "| meta-train classes: query acc % | held-out acc % at episode 0 (starting rule) "
           "| final theta (mean over seeds) | skipped (non-finite) episodes |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for eps in sorted({e for e, _, _ in newest}):
        accs = {arm: [r["heldout_acc"] for (e, a, _), r in sorted(newest.items()) if e == eps and a == arm]
                for arm in ("fa", "bp", "pool", "full")}
        for arm in ("fa", "bp", "pool", "full"):
            rs = [r for (e, a, _), r in sorted(newest.items()) if e == eps and a == arm]
            if not rs:
                continue
            theta = {k: mean([r["theta"][k] for r in rs]) for k in rs[0]["theta"]}
            gap = "-"
            if arm in ("pool", "full") and accs["fa"] and accs["bp"]:
                fa, bp = mean(accs["fa"]), mean(accs["bp"])
                gap = f"{100 * (mean(accs[arm]) - fa) / (bp - fa):.0f} %" if bp > fa else "-"
            start = [a for r in rs for e, a in r["curve"] if e == 0]
            labels = {"fa": "FA (fixed B, theta_0 only)", "bp": "BP (B = W, theta_0 only)",
                      "pool": "learned F0+F2+F9 (fixed B)", "full": "learned full pool F0-F9 (fixed B)"}
            out.append(f"| {eps} | {labels[arm]} | {'+'.join(rs[0]['terms'])} | "
                       f"{rs[0]['lr']:g}, {rs[0].get('term_lr', 'same')} | {','.join(str(r['seed']) for r in rs)} | "
                       f"{ms(accs[arm])} | {gap} | {ms([r['train_classes_acc'] for r in rs])} | "
                       f"{ms(start) if start else '-'} | "
                       f"{', '.join(f'{k} {v:.4f}' for k, v in theta.items())} | "
                       f"{'/'.join(str(r.get('skipped_episodes', 0)) for r in rs)} |")
    return "\n".join(out) + "\n"


def meta_terms_fidelity_table(name: str = "meta_terms_fidelity.jsonl") -> str:
    rows = _lines(name)
    if not rows:
        return f"_No results in benchmarks/results/{name} yet._\n"
    out = ["| term | reference function (commit) | reference index / coefficient | max relative difference over layers | agree |",
           "| --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| F{r['index']} `{r['term']}` | `{r['reference']}` | {r['ref_vec'] or '-'} / `{r['ref_coefficient']}` | "
                   f"{max(r['max_rel_diff_per_layer']):.1e} | {'yes' if r['agree'] else '**no**'} |")
    return "\n".join(out) + "\n"


def meta_memory_table(name: str = "meta_memory.jsonl") -> str:
    rows = _lines(name)
    if not rows:
        return f"_No results in benchmarks/results/{name} yet._\n"
    out = ["| inner steps | gradient checkpoint every | peak memory above start (MiB) |", "| --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['inner_steps']} | {r['inner_checkpoint'] or 'off'} | {r['peak_mib_above_start']:.0f} |")
    return "\n".join(out) + "\n"


def nonfinite_overhead_table(name: str = "nonfinite_overhead.jsonl") -> str:
    """Step time with the trainer's NaN/Inf checks off and on (issue 18's bar: at most 2%)."""
    rows = [r for r in _newest_commit(_lines(name)) if "overhead_per_step_median" in r]
    best: Dict[tuple, Dict] = {}  # per (device, case, arm): the run with the most timed steps
    for r in rows:
        k = (r["device"], r["case"], r["arm"])
        if k not in best or r["steps"] * r["rounds"] > best[k]["steps"] * best[k]["rounds"]:
            best[k] = r
    rows = list(best.values())
    if not rows:
        return f"_No results in benchmarks/results/{name} yet._\n"
    arms = {"off": "checks off", "every50": "defaults (`check_every=50`, `check_gradients=auto`)",
            "every50_step": "`check_every=50`, `check_gradients=step`",
            "every1_step": "`check_every=1`, `check_gradients=step` (a read-back every step)"}
    out = ["| device | case (batch) | arm | gradients flagged every step | step ms (median of steps) | overhead "
           "(median of steps) | overhead (paired rounds) | the monitor's own calls (share of a step) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['device']} | {r['model']} / {r['rule']} ({r['batch']}) | {arms.get(r['arm'], r['arm'])} | "
                   f"{'yes' if r.get('gradients_flagged_every_step') else 'no'} | {r['median_per_step_ms']:.2f} | "
                   f"{100 * r['overhead_per_step_median']:+.1f}% | {100 * r['overhead_paired_median']:+.1f}% | "
                   f"{1e3 * r['monitor_ms_per_step']:.0f} us ({100 * r['monitor_ms_per_step'] / r['median_per_step_ms']:.2f}%) |")
    r = rows[0]
    sizes = sorted({(x["case"], x["steps"], x["rounds"]) for x in rows})
    return ("\n".join(out) + "\n\n" + "; ".join(f"{c}: {st} steps a round, {ro} interleaved rounds an arm"
                                                for c, st, ro in sizes) + ". "
            f"{r['threads']} thread, {r['data']}; torch {r['torch']}, commit {r['commit']}. {r.get('note', '')} "
            "The last column sums the wall time of the monitor's calls, timed inline (the per-step watches and the "
            "checks' read-backs; on a CPU every call is synchronous, so this bounds their cost from above, "
            "preemptions during the calls included; on a GPU it is the launch cost only).\n")

_TWO_ROUTES_OPTIONS = {"reference": "the reference's options", "position_mean": "`position_mean: true` (ours)",
                       "reg_bias": "`reg_bias: false` (ours)", "noise_padding": "`noise_padding: zeros` (ours)"}


def two_routes_fidelity_table(name: str = "fidelity_two_routes.jsonl") -> str:
    """The Two Routes rules against the TF reference (``benchmarks/fidelity_two_routes.py``): per
    option set and rule, the largest relative difference of each compared quantity over the cases
    (layers, with / without bias, batch centring on / off) of the newest run."""
    rows = _newest_commit(_lines(name))
    if not rows:
        return f"_No results in benchmarks/results/{name} yet._\n"
    groups: Dict[tuple, List[Dict]] = {}
    for r in rows:
        groups.setdefault((r["case"]["options"], r["case"]["rule"]), []).append(r)

    def worst(rs, key):
        vals = [r["max_rel"][key] for r in rs if key in r["max_rel"]]
        return f"{max(vals):.1e}" if vals else "-"

    out = ["| options | rule | cases | R | dR/dB (step) | dR/dB (autograd) | dR/dW | dW | dx | dB of the op | commit |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (opt, rule), rs in groups.items():
        out.append(f"| {_TWO_ROUTES_OPTIONS.get(opt, opt)} | {rule} | {len(rs)} | {worst(rs, 'loss')} | {worst(rs, 'dRdB')} "
                   f"| {worst(rs, 'dRdB_autograd')} | {worst(rs, 'dRdW')} | {worst(rs, 'dW')} | {worst(rs, 'dx')} "
                   f"| {worst(rs, 'dB_op')} | {rs[-1].get('commit') or '-'} |")
    r0 = rows[0]
    out += ["", f"Reference {r0['reference']}, TensorFlow {r0['tf_version']}, torch {r0['torch']}, {r0['dtype']}, "
            f"device {r0['device']}; max |ours - ref| / max |ref| per tensor, largest over the cases."]
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
            + "\n**Two Routes rules against the original TF code (neuroailab/Neural-Alignment)** "
            "(`benchmarks/results/fidelity_two_routes.jsonl`, from `benchmarks/fidelity_two_routes.py`; one layer, "
            "batch 6, the same weights, inputs, output gradient and noise on both sides; rows other than the "
            "reference's options flip one option back to our default: deliberate differences, docs/methods/alignment.md)\n\n"
            + two_routes_fidelity_table()
            + "\n**Two Routes rules on ResNet-20 / CIFAR-10 (JPEG q75 copy)** (`benchmarks/results/alignment_resnet20*.jsonl`, "
            "from the `methods` suite (rows at commit 1284030: training runs concurrent on one GPU) and the `gpu` suite "
            "(SA x10): step times measured one rule after the other on an idle GPU, one schedule for all: SGD 0.1, momentum 0.9, wd 5e-4, cosine, "
            "batch 128, the epochs shown)\n\n" + alignment_table()
            + "\n**IDE speed: the fast path against the reference path and the original code** "
            "(`benchmarks/results/ide_speed.jsonl`, from `benchmarks/ide_speed.py`)\n\n" + ide_speed_table()
            + "\n**TSSL-BP against BPTT on the same networks: training images/s** (`benchmarks/results/tssl_speed.jsonl`, "
            "from `benchmarks/tssl_speed.py`)\n\n" + tssl_speed_table()
            + "\n**Meta-learned plasticity: query accuracy on held-out classes** (`benchmarks/results/meta_plasticity.jsonl`, "
            "from `benchmarks/meta_plasticity.py`; MNIST + Fashion-MNIST pool, digits 7-9 and Fashion 7-9 held out, "
            "5 classes x 50 images online, query 10 a class; every arm on one shortened schedule (24 or 48 of the "
            "release's 600 meta-training episodes, Adam 1e-3 with `meta.term_lr=auto`, theta_0 from 1e-3, lambda 0), "
            "10 meta-test episodes a seed and phase; CPU shared by several agents; figure `benchmarks/results/meta_plasticity.png`; "
            "rows of earlier, unlike schedules are kept in `meta_plasticity_superseded.jsonl`)\n\n"
            + meta_plasticity_table()
            + "\nSame schedule (48 episodes, `meta.term_lr=auto`, the same seeds and meta-test episodes), every arm at a "
            "smaller meta learning rate, Adam 3e-4 (`benchmarks/results/meta_plasticity_lr3e-4.jsonl`)\n\n"
            + meta_plasticity_table("meta_plasticity_lr3e-4.jsonl")
            + "\nTwice as long: 96 episodes at Adam 3e-4 (`meta.term_lr=auto`, the same seeds and meta-test episodes; "
            "`benchmarks/results/meta_plasticity_96.jsonl`)\n\n"
            + meta_plasticity_table("meta_plasticity_96.jsonl")
            + "\n**Meta-learned plasticity: each term against the reference code** (`benchmarks/results/meta_terms_fidelity.jsonl`, "
            "from `benchmarks/meta_terms_fidelity.py`; the reference's own functions on the same weights, activations "
            "and errors, float64, one coefficient 0.37)\n\n"
            + meta_terms_fidelity_table()
            + "\n**Meta-learned plasticity: memory of the meta-gradient** (`benchmarks/results/meta_memory.jsonl`, from "
            "`benchmarks/meta_memory.py`; peak RSS of a fresh CPU process above its start, 784-170-130-100-70-20, float32)\n\n"
            + meta_memory_table()
            + "\n**Predictive coding: time per training step on the 5-block MNIST CNN** (`benchmarks/results/pc_speed.jsonl`, "
            "from `benchmarks/pc_speed.py`)\n\n" + pc_speed_table()
            + "\n**Data-parallel training under torchrun: images/s for 1 and 2 processes** "
            "(`benchmarks/results/distributed.jsonl`, from `benchmarks/distributed_throughput.py`; CPU, gloo; "
            "no multi-GPU machine has been available yet)\n\n" + distributed_table()
            + "\n**Surrogate-gradient BPTT against snnTorch, SpikingJelly and Norse: time and peak memory of one "
            "training step** (`benchmarks/results/peers_bptt.jsonl`, from `benchmarks/peers_bptt.py`)\n\n"
            + peers_bptt_table()
            + "\n**EKDAA against BP and FA on the same networks** (`benchmarks/results/ekdaa*.jsonl`, from "
            "`benchmarks/train_bench.py` with `configs/ekdaa_*.yaml`, `benchmarks/ekdaa_speed.py` and "
            "`benchmarks/ekdaa_fidelity.py`; CPU runs on a shared machine, one thread; docs/methods/ekdaa.md)\n\n"
            + ekdaa_table()
            + "\n**EMSTDP: training runs, fidelity to the reference code, speed** (`benchmarks/results/emstdp*.jsonl`, from "
            "`benchmarks/train_bench.py` with `configs/emstdp_*.yaml`, `benchmarks/emstdp_fidelity.py`, "
            "`benchmarks/emstdp_speed.py`)\n\n" + emstdp_table()
            + "\n**Overhead of the NaN/Inf checks** (`benchmarks/results/nonfinite_overhead.jsonl`, from "
            "`benchmarks/nonfinite_overhead.py`; issue 18's bar: at most 2% of a step)\n\n" + nonfinite_overhead_table())


if __name__ == "__main__":
    print(results_markdown())
