"""Plot per-epoch metrics of one or more runs (e.g. the alignment angles over training).

    python benchmarks/plot_metrics.py RUN_DIR [RUN_DIR ...] [--prefix train/align/] [--out FIG.png]

Reads each run's ``metrics.jsonl`` and draws every column whose name starts with ``--prefix``
(default ``train/align/``: B-W angle and update-vs-BP angle per layer) against the epoch, one
panel per metric kind, one line per run and layer. Needs matplotlib (``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--prefix", default="train/align/")
    p.add_argument("--out", default="metrics.png")
    a = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = defaultdict(list)  # metric kind -> [(label, epochs, values)]
    for run in a.runs:
        rows = [json.loads(l) for l in (Path(run) / "metrics.jsonl").read_text().splitlines() if l.strip()]
        keys = sorted({k for r in rows for k in r if k.startswith(a.prefix)})
        for k in keys:
            kind, _, layer = k[len(a.prefix):].partition("/")
            pts = [(r["epoch"], r[k]) for r in rows if k in r]
            panels[kind].append((f"{Path(run).name} {layer}", [e for e, _ in pts], [v for _, v in pts]))
    if not panels:
        raise SystemExit(f"no column starting with {a.prefix!r} in {a.runs}")
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (kind, lines) in zip(axes[0], sorted(panels.items())):
        for label, x, y in lines:
            ax.plot(x, y, label=label)
        ax.set_title(kind)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(a.out)


if __name__ == "__main__":
    main()
