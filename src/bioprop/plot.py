"""Plot a run's per-epoch metrics (``metrics.jsonl``) as one PNG: ``bioprop plot RUN_DIR``.

    bioprop plot RUN_DIR [RUN_DIR ...] [--out FIG.png] [--prefix train/align/] [--title TEXT]

Panels, each drawn only when some run logged it (one colour per run; one line style per split or
layer):

==========================  ===================================================================
loss                        ``train_loss``, ``val_loss``, ``test_loss``
accuracy                    ``train_acc``, ``val_acc``, ``test_acc``
firing rate                 ``train/rate/<population>`` (spiking models: mean rate per step)
solver iterations           ``train/solver/iters`` (IDE's fixed-point / adjoint solver)
feedback                    ``train/feedback/gain``, ``train/feedback/norm`` (feedback SNNs)
B-W angle, update angle     ``train/align/B_W_angle/<layer>``, ``train/align/update_angle/<layer>``
                            (Two Routes rules with ``rule.angle_every`` / ``rule.compare_every``)
PC angle                    ``train/pc/angle/<block>`` (predictive coding against BP)
==========================  ===================================================================

``--prefix P`` instead draws every column whose name starts with ``P``, one panel per next name
part. A RUN_DIR may also be a folder of runs: every ``metrics.jsonl`` below it is one run. Needs
matplotlib (the ``plot`` extra: ``pip install "bioprop[plot]"``); this module imports it only when
drawing, so the rest of bioprop never needs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["find_runs", "load_metrics", "panels", "plot_runs", "MissingMatplotlib"]

#: (panel title, column prefix or exact name, how a column's line is labelled)
PANELS: List[Tuple[str, Tuple[str, ...]]] = [
    ("loss", ("train_loss", "val_loss", "test_loss")),
    ("accuracy", ("train_acc", "val_acc", "test_acc")),
    ("firing rate", ("train/rate/",)),
    ("solver iterations", ("train/solver/iters",)),
    ("feedback", ("train/feedback/",)),
    ("B-W angle (deg)", ("train/align/B_W_angle/",)),
    ("update vs BP angle (deg)", ("train/align/update_angle/",)),
    ("PC update vs BP angle (deg)", ("train/pc/angle/",)),
]


class MissingMatplotlib(ImportError):
    """matplotlib is not installed (the ``plot`` extra)."""


def find_runs(paths: Sequence[str]) -> List[Path]:
    """The run directories named by ``paths``: a folder holding ``metrics.jsonl``, or every such
    folder below one (sorted). Raises ``FileNotFoundError`` naming a path that holds none."""
    runs: List[Path] = []
    for p in map(Path, paths):
        if (p / "metrics.jsonl").is_file():
            runs.append(p)
            continue
        found = sorted(f.parent for f in p.rglob("metrics.jsonl")) if p.is_dir() else []
        if not found:
            raise FileNotFoundError(f"{p}: no metrics.jsonl in it or below it (give a run directory, "
                                    "e.g. runs/default, written by bioprop train)")
        runs.extend(found)
    return runs


def load_metrics(run: Path) -> List[Dict]:
    """The per-epoch rows of ``run/metrics.jsonl``."""
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{run}/metrics.jsonl is empty: the run has not finished an epoch yet")
    return rows


def panels(histories: Dict[str, List[Dict]], prefix: Optional[str] = None) -> Dict[str, List[Tuple[str, str, list, list]]]:
    """``{panel: [(run, line label, epochs, values)]}`` for the columns present in ``histories``
    (run name -> rows); panels without data are left out."""
    out: Dict[str, List[Tuple[str, str, list, list]]] = {}
    for run, rows in histories.items():
        keys = list(dict.fromkeys(k for r in rows for k in r))
        if prefix is not None:
            groups = {}
            for k in keys:
                if k.startswith(prefix):
                    kind, _, rest = k[len(prefix):].partition("/")
                    groups.setdefault(kind, []).append((k, rest or kind))
        else:
            groups = {}
            for title, pats in PANELS:
                for k in keys:
                    for pat in pats:
                        if k == pat or (pat.endswith("/") and k.startswith(pat)):
                            label = k[len(pat):] if pat.endswith("/") else k.split("_")[0] if "_" in k else k
                            groups.setdefault(title, []).append((k, label or k))
        for title, cols in groups.items():
            for k, label in cols:
                pts = [(r["epoch"], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and "epoch" in r]
                if pts:
                    out.setdefault(title, []).append((run, label, [e for e, _ in pts], [v for _, v in pts]))
    order = [t for t, _ in PANELS]
    return dict(sorted(out.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MissingMatplotlib('bioprop plot needs matplotlib: pip install "bioprop[plot]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_runs(paths: Sequence[str], out: str = "metrics.png", prefix: Optional[str] = None,
              title: Optional[str] = None) -> Path:
    """Draw the runs under ``paths`` into the PNG ``out``; returns its path."""
    runs = find_runs(paths)
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same leaf names (seeds, arms): keep the parent in the label
        names = [f"{r.parent.name}/{r.name}" for r in runs]
    histories = {n: load_metrics(r) for n, r in zip(names, runs)}
    data = panels(histories, prefix)
    if not data:
        what = f"no column starting with {prefix!r}" if prefix else "no per-epoch metric to plot"
        raise ValueError(f"{what} in {', '.join(map(str, runs))}")
    plt = _pyplot()
    ncols = min(3, len(data))
    nrows = -(-len(data) // ncols)
    wide = any(len(lines) > 8 for lines in data.values())
    fig, axes = plt.subplots(nrows, ncols, figsize=((7.2 if wide else 5.2) * ncols + 1.5, 3.6 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    run_colour = {n: colours[i % len(colours)] for i, n in enumerate(histories)}
    for ax, (kind, lines) in zip(axes.flat, data.items()):
        style_of: Dict[str, str] = {}
        for run, label, x, y in lines:
            style = styles[len(style_of) % len(styles)] if label not in style_of else style_of[label]
            style_of.setdefault(label, style)
            ax.plot(x, y, color=run_colour[run], linestyle=style, marker="." if len(x) < 30 else None,
                    label=f"{run} {label}" if len(histories) > 1 else label)
        ax.set_title(kind, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(lines) > 8:  # many runs x layers: the legend beside the panel, not over the lines
            ax.legend(fontsize=5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        else:
            ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[len(data):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
