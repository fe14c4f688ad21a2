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
    p.add_argument("--title", default=None, help="figure title (say the data, device and schedule)")
    a = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = defaultdict(list)  # metric kind -> [(label, epochs, values, colour, style)]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for i, run in enumerate(a.runs):
        rows = [json.loads(l) for l in (Path(run) / "metrics.jsonl").read_text().splitlines() if l.strip()]
        keys = sorted({k for r in rows for k in r if k.startswith(a.prefix)})
        layers: dict = {}  # one colour per run, one line style per layer
        for k in keys:
            kind, _, layer = k[len(a.prefix):].partition("/")
            pts = [(r["epoch"], r[k]) for r in rows if k in r]
            style = styles[layers.setdefault(layer, len(layers)) % len(styles)]
            panels[kind].append((f"{Path(run).name} {layer}", [e for e, _ in pts], [v for _, v in pts],
                                 colours[i % len(colours)], style))
    if not panels:
        raise SystemExit(f"no column starting with {a.prefix!r} in {a.runs}")
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 2, 4), squeeze=False)
    for ax, (kind, lines) in zip(axes[0], sorted(panels.items())):
        for label, x, y, colour, style in lines:
            ax.plot(x, y, label=label, color=colour, linestyle=style)
        ax.set_title(kind)
        ax.set_xlabel("epoch")
    axes[0][-1].legend(*axes[0][-1].get_legend_handles_labels(), fontsize=6, loc="upper left",
                       bbox_to_anchor=(1.01, 1.0))
    if a.title:
        fig.suptitle(a.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(a.out)


if __name__ == "__main__":
    main()
