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
          "pool": "learned F0+F2+F9", "full": "learned, full pool F0-F9"}


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
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.is_file() else []
    out: Dict[tuple, Dict] = {}
    for r in rows:
        out[(r["arm"], r["seed"])] = r
    return out


def figure(path: Path = OUT, fig_path: Path = FIG) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = newest(path)
    arms = sorted({a for a, _ in rows})
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    colors = {"fa": "tab:red", "bp": "tab:green", "pool": "tab:blue", "full": "tab:purple"}

    def stats(xs: List[float]):
        m = sum(xs) / len(xs)
        s = (sum((x - m) ** 2 for x in xs) / max(1, len(xs) - 1)) ** 0.5
        return m, s

    xmax = max([r["episodes"] for r in rows.values()] + [1])
    for arm in arms:
        rs = [r for (a, _), r in rows.items() if a == arm]
        if arm in LEARNED:
            eps = sorted({e for r in rs for e, _ in r["curve"]})
            ms, ss = [], []
            for e in eps:
                m, s = stats([acc for r in rs for ee, acc in r["curve"] if ee == e])
                ms.append(m)
                ss.append(s)
            ax[0].plot(eps, ms, "o-", color=colors[arm], label=f"{LABELS[arm]} (n={len(rs)} seeds)")
            ax[0].fill_between(eps, [m - s for m, s in zip(ms, ss)], [m + s for m, s in zip(ms, ss)],
                               color=colors[arm], alpha=0.15)
            if arm not in ("pool", "full"):
                continue
            for r in rs:
                ax[2].plot([e for e, _ in r["curve"]], [a for _, a in r["curve"]], "o-" if arm == "pool" else "s--",
                           color=colors[arm], alpha=0.4 + 0.2 * r["seed"] % 1, label=f"{arm} seed {r['seed']}")
            if arm != "pool":
                continue
            k = 1
            names = list(rs[0]["theta"])
            for name in names:
                ep = [e for e, _ in rs[0]["theta_curve"]]
                vals = [stats([dict(r["theta_curve"]).get(e, {}).get(name, float("nan")) for r in rs])[0] for e in ep]
                ax[k].plot(ep, vals, label=name)
        else:
            m, s = stats([r["heldout_acc"] for r in rs])
            ax[0].axhline(m, color=colors[arm], ls="--", label=f"{LABELS[arm]} (n={len(rs)} seeds)")
            ax[0].axhspan(m - s, m + s, color=colors[arm], alpha=0.1)
    extra = newest(path.parent / "meta_plasticity_lr3e-4.jsonl")
    if extra:
        rs = list(extra.values())
        eps = sorted({e for r in rs for e, _ in r["curve"]})
        ms = [stats([a for r in rs for ee, a in r["curve"] if ee == e]) for e in eps]
        ax[0].plot(eps, [m for m, _ in ms], "s-", color="tab:cyan",
                   label=f"learned F0+F2+F9, Adam 3e-4 (n={len(rs)} seeds)")
        ax[0].fill_between(eps, [m - s for m, s in ms], [m + s for m, s in ms], color="tab:cyan", alpha=0.15)
    ax[0].set(xlabel="meta-training episode", ylabel="held-out-class query accuracy", xlim=(0, xmax),
              title="meta-test on held-out classes (mean +- std over seeds)")
    ax[1].set(xlabel="meta-training episode", title="theta, F0+F2+F9, Adam 1e-3 (mean over seeds)")
    ax[2].set(xlabel="meta-training episode", ylabel="held-out-class query accuracy", ylim=(0, 1),
              title="learned F0+F2+F9, Adam 1e-3, each seed")
    for a in ax:
        a.legend(fontsize=7)
    fig.suptitle("Meta-learned plasticity, MNIST + Fashion-MNIST pool (held out: 7-9 of each), 5-way x 50 online "
                 "images; CPU, shortened meta-training", fontsize=9)
    fig.tight_layout()
    fig.savefig(fig_path, dpi=110)
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
