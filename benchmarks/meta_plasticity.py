"""Meta-learned plasticity on held-out classes: FA, the learned rule(s) and BP, several seeds.

For each seed and arm (``fa``, ``bp``, ``pool`` = F0+F2+F9, ``full`` = all ten terms; the configs
``configs/meta_plasticity_<arm>.yaml``) it meta-trains (the learned arms; ``--episodes`` shortens
the schedule, and the row says so), then meta-tests on ``--test-episodes`` episodes of the
held-out classes and of the meta-train classes, the same episodes and initial weights for every
arm of a seed. One JSON line per (arm, seed) goes to ``benchmarks/results/meta_plasticity.jsonl``
with the held-out accuracy curve and theta over episodes, from which ``--figure`` draws
``benchmarks/results/meta_plasticity.png`` and ``benchmarks/tables.py`` the table.

    OMP_NUM_THREADS=1 python benchmarks/meta_plasticity.py --seeds 0 --arms fa,bp,pool,full \
        --episodes 150 --data-dir /work/data
    python benchmarks/meta_plasticity.py --figure

Runs resume from their run directories (``runs/meta_bench/<arm>_s<seed>``) when killed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List

import torch

from common import ROOT, environment, write_lines

from bioprop.meta import ClassPool, MetaLearner, load_meta_config
from bioprop.meta.plot import read_metrics

OUT = ROOT / "benchmarks" / "results" / "meta_plasticity.jsonl"
FIG = ROOT / "benchmarks" / "results" / "meta_plasticity.png"
LEARNED = ("fa", "bp", "pool", "full")
LABELS = {"fa": "FA (fixed B, theta_0 only, meta-trained)", "bp": "BP (B = W, theta_0 only, meta-trained)",
          "pool": "learned F0+F2+F9 (fixed B)", "full": "learned full pool F0-F9 (fixed B)"}


def run_arm(arm: str, seed: int, args, pool: ClassPool) -> Dict:
    cfg_path = f"configs/meta_plasticity_{arm}.yaml"
    overrides = [f"meta.seed={seed}", f"run_dir={args.run_root}/{arm}_s{seed}", "progress=false",
                 f"meta.test_episodes={args.test_episodes}"]
    if arm in LEARNED:
        if args.meta_lr is not None:
            overrides.append(f"meta.lr={args.meta_lr}")
        overrides += [f"meta.skip_nonfinite={str(args.skip_nonfinite).lower()}", f"meta.episodes={args.episodes}", f"meta.eval_every={args.eval_every}",
                      f"meta.eval_episodes={args.eval_episodes}", f"meta.term_lr={args.term_lr}",
                      f"meta.clip_grad={args.clip_grad}"]
    cfg = load_meta_config(ROOT / cfg_path, overrides)
    learner = MetaLearner(cfg, pool=pool, run_dir=ROOT / cfg.run_dir, resume=True)
    t0 = time.perf_counter()
    result = learner.fit()
    rows = read_metrics(learner.run_dir) if learner.run_dir and (learner.run_dir / "metrics.jsonl").is_file() else []
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    full_schedule = 600
    row = {
        **environment(torch.device("cpu")), "benchmark": "meta_plasticity", "config": cfg_path,
        "overrides": overrides[:1] + overrides[3:], "arm": arm, "label": LABELS[arm], "seed": seed,
        "feedback": cfg.plasticity.feedback, "terms": result["terms"], "episodes": result["episodes"],
        "schedule": (f"shortened meta-training: {result['episodes']} of the release's {full_schedule} episodes"
                     if arm in LEARNED else "not meta-trained (starting rule)"),
        "pool": {"datasets": cfg.pool.datasets, "split": cfg.pool.split, "heldout": cfg.pool.heldout},
        "M": cfg.meta.M, "K": cfg.meta.K, "Q": cfg.meta.Q, "lr": cfg.meta.lr, "lamb": cfg.meta.lamb,
        "term_lr": cfg.meta.term_lr, "clip_grad": cfg.meta.clip_grad, "term_lr_scale": result.get("term_lr_scale"),
        "theta0_start": cfg.meta.theta0, "eval_every": cfg.meta.eval_every, "eval_episodes": cfg.meta.eval_episodes,
        "test_episodes": cfg.meta.test_episodes,
        "heldout_acc": result["heldout"]["acc"], "heldout_acc_std_over_episodes": result["heldout"]["acc_std_over_episodes"],
        "heldout_ce": result["heldout"]["ce"], "train_classes_acc": result["train_classes"]["acc"],
        "heldout_angles": {k: v for k, v in result["heldout"].items() if k.startswith("angle_l")},
        "theta": result["theta"], "skipped_episodes": sum(1 for r in train if r.get("skipped")),
        "curve": [[r["episode"], r["acc"]] for r in evals],
        "theta_curve": [[r["episode"], r["theta"]] for r in train if r["episode"] % 5 == 0 or r["episode"] == 1],
        "wall_s_this_process": time.perf_counter() - t0,
        "note": "CPU shared by several agents (2 cores, OMP_NUM_THREADS=1): wall times compare nothing",
    }
    write_lines(args.out, [row])
    return row


def newest(path: Path = OUT) -> Dict[tuple, Dict]:
    """The newest row per (arm, seed) among the rows of the longest schedule in ``path``."""
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.is_file() else []
    if not rows:
        return {}
    longest = max(r["episodes"] for r in rows)
    out: Dict[tuple, Dict] = {}
    for r in rows:
        if r["episodes"] == longest:
            out[(r["arm"], r["seed"])] = r
    return out


def figure(path: Path = OUT, fig_path: Path = FIG) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = newest(path)
    fig, ax = plt.subplots(1, 4, figsize=(20, 4.2))
    colors = {"fa": "tab:red", "bp": "tab:green", "pool": "tab:blue", "full": "tab:purple"}

    def stats(xs: List[float]):
        m = sum(xs) / len(xs)
        s = (sum((x - m) ** 2 for x in xs) / max(1, len(xs) - 1)) ** 0.5
        return m, s

    def theta_series(r):
        pts = [(e, th) for e, th in r["theta_curve"]]
        if pts[-1][0] != r["episodes"]:
            pts.append((r["episodes"], r["theta"]))       # theta after the last Adam step
        return pts

    xmax = max([r["episodes"] for r in rows.values()] + [1])
    for arm in LEARNED:
        rs = [r for (a, _), r in sorted(rows.items()) if a == arm]
        if not rs:
            continue
        eps = sorted({e for r in rs for e, _ in r["curve"]})
        ms = [stats([acc for r in rs for ee, acc in r["curve"] if ee == e]) for e in eps]
        ax[0].plot(eps, [m for m, _ in ms], "o-", color=colors[arm], label=f"{LABELS[arm]} (n={len(rs)} seeds)")
        ax[0].fill_between(eps, [m - s for m, s in ms], [m + s for m, s in ms], color=colors[arm], alpha=0.15)
        fin = stats([r["heldout_acc"] for r in rs])
        ax[0].errorbar([xmax + 0.8 + 0.4 * LEARNED.index(arm)], [fin[0]], yerr=[fin[1]], fmt="D", color=colors[arm], ms=5)
        ep_th = [e for e, _ in theta_series(rs[0])]
        th0 = [stats([dict(theta_series(r))[e]["pseudo_grad"] for r in rs])[0] for e in ep_th]
        ax[3].plot(ep_th, th0, "-", color=colors[arm], label=LABELS[arm])
        if arm in ("pool", "full"):
            k = 1 if arm == "pool" else 2
            for name in rs[0]["theta"]:
                vals = [stats([dict(theta_series(r))[e][name] for r in rs])[0] for e in ep_th]
                ax[k].plot(ep_th, vals, label=name, ls="-" if name in ("pseudo_grad", "error_hebb", "oja") else "--")
    ax[0].set(xlabel="meta-training episode (diamonds: final meta-test, 10 episodes a seed)",
              ylabel="held-out-class query accuracy", xlim=(-1, xmax + 3), ylim=(0, 1),
              title="held-out classes (mean +- std over seeds; 3 episodes a point)")
    ax[1].set(xlabel="meta-training episode", title="theta, learned F0+F2+F9 (mean over seeds)")
    ax[2].set(xlabel="meta-training episode", title="theta, learned full pool F0-F9 (mean over seeds)")
    ax[3].set(xlabel="meta-training episode", title="theta_0 (pseudo-gradient) of every arm (mean over seeds)")
    for a in ax:
        a.legend(fontsize=7)
    r0 = next(iter(rows.values()), None)
    sched = (f"{r0['episodes']} meta-training episodes (of the release's 600), Adam {r0['lr']:g}, "
             f"term_lr={r0.get('term_lr', 'same')}" if r0 else "")
    fig.suptitle("Meta-learned plasticity, MNIST + Fashion-MNIST pool (held out: 7-9 of each), 5-way x 50 online images; "
                 f"{sched}; CPU, shortened schedule", fontsize=9)
    fig.tight_layout()
    fig.savefig(fig_path, dpi=100)
    plt.close(fig)
    return fig_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default="fa,bp,pool,full")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--episodes", type=int, default=600, help="meta-training episodes of the learned arms")
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--test-episodes", type=int, default=50)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--meta-lr", type=float, default=None, help="Adam lr on theta (default: the config's)")
    p.add_argument("--skip-nonfinite", action="store_true", help="skip (not stop at) an episode whose meta-loss is NaN/Inf")
    p.add_argument("--term-lr", default="same", choices=["same", "auto"], help="meta.term_lr of the learned arms")
    p.add_argument("--clip-grad", type=float, default=0.0, help="meta.clip_grad of the learned arms (0 = off)")
    p.add_argument("--run-root", default="runs/meta_bench")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--figure", action="store_true", help="only redraw the figure from the results file")
    args = p.parse_args()
    if args.figure:
        print(figure(args.out))
        return
    torch.set_num_threads(1)
    base = load_meta_config(ROOT / "configs/meta_plasticity_pool.yaml",
                            [f"pool.data_dir={args.data_dir}"] if args.data_dir else [])
    pool = ClassPool.from_datasets(base.pool.datasets, base.pool.split, base.pool.heldout, base.pool.data_dir)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm in args.arms.split(","):
            row = run_arm(arm, seed, args, pool)
            print(json.dumps({k: row[k] for k in ("arm", "seed", "episodes", "heldout_acc", "train_classes_acc",
                                                  "theta")}), flush=True)


if __name__ == "__main__":
    main()
