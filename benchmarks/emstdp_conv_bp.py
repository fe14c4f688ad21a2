"""BP baseline for the conv front end + EMSTDP head: the same frozen front end as
``configs/emstdp_mnist_conv_symmetric.yaml`` (weights from ``benchmarks/emstdp_frontend.py``), its
features divided by their per-sample maximum (the intensities the EMSTDP head rate-codes), then a
ReLU MLP ``1568-100-10`` trained with exact backprop (cross-entropy) on the recipe of
``configs/emstdp_mnist_bp.yaml`` (batch 10, epochs of 10,000 images, Adam betas (0, 0.9), lr 1e-3).

It runs ``benchmarks/train_bench.py`` with that config and the model swapped at build time (the
registry's ``mlp`` with ``in_shape = (1568,)`` behind the frozen front end); rows go to
``--out`` with ``bench: emstdp`` and the front end named in ``model``.

    OMP_NUM_THREADS=1 python benchmarks/emstdp_conv_bp.py --config configs/emstdp_mnist_bp.yaml \
        --data-dir DIR --out benchmarks/results/emstdp.jsonl --bench emstdp \
        [--frontend-weights runs/emstdp_frontend/mnist_conv16_32.pt] [section.key=value ...]
"""

from __future__ import annotations

import sys

import torch
from torch import nn

import train_bench  # noqa: E402  (puts src/ on the path)

import bioprop.train.trainer as trainer_mod  # noqa: E402
from bioprop.models import create_model  # noqa: E402

WEIGHTS = "runs/emstdp_frontend/mnist_conv16_32.pt"
CHANNELS = [16, 32]


class FrozenFrontendMLP(nn.Module):
    """The frozen conv front end of ``emstdp_mlp`` (``frontend: conv``), its features / per-sample
    max (exactly ``EMSTDPNet.intensities``), then a ReLU MLP trained with BP."""

    def __init__(self, head: nn.Module, weights: str):
        super().__init__()
        front = create_model("emstdp_mlp", frontend="conv", conv_channels=CHANNELS, frontend_weights=weights)
        self.front = front   # only its frozen conv layers are used; its IF layers are excluded from training
        for p in front.parameters():
            p.requires_grad_(False)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.front.intensities(x).to(x.dtype))


def main() -> None:
    weights = WEIGHTS
    if "--frontend-weights" in sys.argv:
        i = sys.argv.index("--frontend-weights")
        weights = sys.argv[i + 1]
        del sys.argv[i:i + 2]

    def build(name, **kw):
        if name != "mlp":
            raise SystemExit(f"emstdp_conv_bp: the config's model must be mlp, got {name}")
        width = CHANNELS[-1] * 7 * 7
        return FrozenFrontendMLP(create_model("mlp", **{**kw, "in_shape": (width,)}), weights)

    def write_row(row, out=None, bench="train"):
        row["model"] = {**row["model"], "frontend": "conv", "conv_channels": CHANNELS, "frontend_weights": weights}
        extra = f" --frontend-weights {weights}" if weights != WEIGHTS else ""
        row["command"] = train_bench.command_line().replace("benchmarks/train_bench.py",
                                                            "benchmarks/emstdp_conv_bp.py" + extra, 1)
        return _write(row, out, bench)

    _write = train_bench.write_row
    trainer_mod.create_model = build
    train_bench.write_row = write_row
    train_bench.main()


if __name__ == "__main__":
    main()
