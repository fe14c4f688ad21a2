"""Plot a meta-learning run: query accuracy and theta per term over episodes (matplotlib: the
``plot`` extra)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Union

__all__ = ["read_metrics", "plot_run", "moving_average"]


def read_metrics(run_dir: Union[str, Path]) -> List[Dict]:
    f = Path(run_dir) / "metrics.jsonl"
    if not f.is_file():
        raise FileNotFoundError(f"{f} not found: not a meta-learning run directory")
    return [json.loads(l) for l in f.read_text().splitlines() if l.strip()]


def moving_average(xs: List[float], window: int) -> List[float]:
    """Trailing mean over up to ``window`` values."""
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= window:
            acc -= xs[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_run(run_dir: Union[str, Path], out: Optional[Union[str, Path]] = None, window: int = 10) -> Path:
    """Write ``run_dir/meta.png`` (or ``out``): meta-train query accuracy (moving average over
    ``window`` episodes) and held-out evaluations; theta per term; per-layer error angle vs BP."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'bioprop[plot]'") from None
    rows = read_metrics(run_dir)
    train = [r for r in rows if r.get("kind") == "train" and not r.get("skipped")]
    evals = [r for r in rows if r.get("kind") == "eval"]
    fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
    if train:
        ep = [r["episode"] for r in train]
        ax[0].plot(ep, moving_average([r["query_acc"] for r in train], window), label=f"meta-train query (avg {window})")
        for name in train[0]["theta"]:
            ax[1].plot(ep, [r["theta"][name] for r in train], label=name)
        layers = sorted(k for k in train[0] if k.startswith("angle_l"))
        for k in layers:
            ax[2].plot(ep, moving_average([r[k] for r in train], window), label=k.replace("angle_", ""))
    if evals:
        ax[0].plot([r["episode"] for r in evals], [r["acc"] for r in evals], "o-", label="held-out classes")
    ax[0].set(xlabel="episode", ylabel="query accuracy", ylim=(0, 1), title="accuracy")
    ax[1].set(xlabel="episode", title="theta")
    ax[2].set(xlabel="episode", ylabel="degrees", ylim=(0, 120), title="error angle vs BP")
    ax[2].axhline(90, color="gray", ls="--", lw=0.8)
    for a in ax:
        a.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out) if out is not None else Path(run_dir) / "meta.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
