"""Train the convolutional front end of ``emstdp_mlp`` (``frontend: conv``) with BP, then freeze it:
the Loihi setup of EMSTDP (DAC 2021), where the conv layers are trained offline and only the dense
head learns on chip with EMSTDP.

The front end (``conv_channels`` 5x5 convolutions, ReLU, 2x2 max pooling) gets a linear readout
and is trained with cross-entropy and Adam; its ``state_dict`` (without the readout) is saved to
``--out`` (default ``runs/emstdp_frontend/mnist_conv16_32.pt``, git-ignored), the file that
``configs/emstdp_mnist_conv_symmetric.yaml`` loads as ``frontend_weights``. One JSON line with
its test accuracy goes to ``benchmarks/results/emstdp_frontend.jsonl``.

    OMP_NUM_THREADS=1 python benchmarks/emstdp_frontend.py --data-dir DIR [--epochs 1]
"""

from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import ROOT, environment, write_lines  # noqa: E402

from bioprop.data import create_dataset  # noqa: E402
from bioprop.models import create_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--channels", default="16,32")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "runs" / "emstdp_frontend" / "mnist_conv16_32.pt"))
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "emstdp_frontend.jsonl"))
    args = p.parse_args()
    torch.manual_seed(args.seed)
    chans = [int(c) for c in args.channels.split(",")]
    kw = {"data_dir": args.data_dir} if args.data_dir else {}
    ds = create_dataset(args.data, batch_size=args.batch_size, normalize=False, **kw)
    front = create_model("emstdp_mlp", frontend="conv", conv_channels=chans).frontend
    for q in front.parameters():
        q.requires_grad_(True)
    head = nn.Linear(chans[-1] * 7 * 7, 10)
    net = nn.Sequential(front, nn.Flatten(), head)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    dev = torch.device("cpu")
    for ep in range(args.epochs):
        net.train()
        for x, y in ds.loader("train", dev, seed=args.seed, epoch=ep):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in ds.loader("test", dev):
            correct += int((net(x).argmax(1) == y).sum())
            total += int(y.shape[0])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(front.state_dict(), out)
    row = {"bench": "emstdp_frontend", "data": args.data, "channels": chans, "epochs": args.epochs,
           "batch": args.batch_size, "lr": args.lr, "seed": args.seed, "bp_test_acc": correct / total,
           "saved": str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out),
           **environment(dev), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    print(f"front end + linear readout (BP): test acc {100 * correct / total:.2f}%; saved {out}")
    write_lines(args.results, [row])


if __name__ == "__main__":
    main()
