"""Feedback strength of trained feedback SNNs, read from their checkpoints.

    python benchmarks/feedback_norm.py RUN_DIR [RUN_DIR ...] [--iters 300] [--annotate FILE.jsonl]

For every epoch checkpoint of each run (``RUN_DIR/checkpoints/epoch_NNNN``): the raw gain ``g``,
the clamped gain that the weight uses, and the true operator norm ``||W||`` of the feedback
operator, by power iteration on the operator itself (convolution and its adjoint; ``--iters``
steps from a fixed start), whatever the run's normalisation (``sigma_of=kernel``, the
reference's, does not bound it). ``||W|| / Vth`` >= 1 means that the equilibrium map may not be
contractive; ``norm_over_gain`` > 1 under ``sigma_of=operator`` means that the normalisation's own
(persistent, one step per training step) power iteration underestimated sigma, so the bound
``|clamp(g)|`` did not hold. Prints one JSON line per run; ``--annotate`` adds the list as
``feedback_by_epoch`` to the lines of FILE whose overrides name the run (``train.name=RUN``).
Only the checkpoints a run kept (``train.keep_checkpoints``, default the last 2) are read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from bioprop import create_model  # noqa: E402
from bioprop.models.spectral import power_norm  # noqa: E402
from bioprop.train import RunConfig, load_checkpoint, load_weights  # noqa: E402


def true_operator_norm(op, weight: torch.Tensor, iters: int) -> float:
    """``||x -> op(x, weight)||_2`` by ``iters`` power-iteration steps from a seeded start."""
    v = torch.randn((1,) + op.in_shape, generator=torch.Generator().manual_seed(0))
    return float(power_norm(op, weight, v, iters)[0])


def run_feedback(run_dir: Path, iters: int) -> dict:
    ckpts = sorted((run_dir / "checkpoints").glob("epoch_*"))
    if not ckpts:
        raise FileNotFoundError(f"{run_dir}: no checkpoints/epoch_NNNN directories")
    cfg = RunConfig.from_dict(load_checkpoint(ckpts[-1])["config"])
    kw = dict(cfg.model)
    model = create_model(kw.pop("name"), **kw)
    if not hasattr(model, "feedback"):
        raise TypeError(f"{run_dir}: model {cfg.model['name']} has no feedback operator")
    rows = []
    for c in ckpts:
        load_weights(model, c)
        op = model.feedback
        w = op.weight().detach()  # the weight the run's last step used (its own normalisation)
        norm, gain = true_operator_norm(op, w, iters), float(op.gain())
        rows.append({"epoch": int(c.name.split("_")[-1]), "g": float(op.g.detach()), "gain": gain,
                     "operator_norm": norm, "norm_over_vth": norm / model.threshold,
                     "norm_over_gain": norm / max(abs(gain), 1e-12)})
    return {"run": run_dir.name, "sigma_of": model.feedback.sigma_of,
            "fb_norm_range": model.feedback.norm_range, "power_iters": iters, "feedback_by_epoch": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--annotate", help="JSON-lines file whose rows get feedback_by_epoch")
    a = p.parse_args()
    found = {}
    for r in a.runs:
        res = run_feedback(Path(r), a.iters)
        found[res["run"]] = res
        print(json.dumps(res))
    if a.annotate:
        f = Path(a.annotate)
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        for row in rows:
            names = [o.split("=", 1)[1] for o in row.get("overrides", []) if o.startswith("train.name=")]
            if names and names[-1] in found:
                row["feedback_by_epoch"] = found[names[-1]]["feedback_by_epoch"]
                row["feedback_power_iters"] = a.iters
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
