"""EMSTDP training speed: our ``emstdp`` rule (step + EMSTDPRMSprop + clip) against the reference
NumPy code's ``Network.Train`` on the same CPU, in the same run, interleaved batch by batch, on the
same input spike trains (MNIST, 784-100-10, T = 100, the reference's settings); writes
``benchmarks/results/emstdp_speed.jsonl``. The reference is obtained and loaded as in
``benchmarks/emstdp_fidelity.py`` (``.ref/EMSTDP``, ``pip install opt_einsum numpy``).

    OMP_NUM_THREADS=1 python benchmarks/emstdp_speed.py [--batch-size 10] [--repeat 30] [--device cpu]

Figures from a shared machine are only meaningful as the ratio measured here, interleaved.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import time
from pathlib import Path

import torch

from common import ROOT, environment, write_lines  # noqa: E402
from emstdp_fidelity import MODES, load_reference, reference_network, sync_reference  # noqa: E402

from bioprop.data import create_dataset  # noqa: E402
from bioprop.models import create_model  # noqa: E402
from bioprop.rules import create_rule  # noqa: E402
from bioprop.rules.emstdp import EMSTDPRMSprop  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", default=str(ROOT / ".ref" / "EMSTDP"))
    p.add_argument("--data", default="mnist_embedded")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--feedback", default="symmetric", choices=list(MODES))
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "emstdp_speed.jsonl"))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    algo = load_reference(Path(args.ref))
    kw = {"data_dir": args.data_dir} if args.data_dir else {}
    ds = create_dataset(args.data, batch_size=args.batch_size, normalize=False, **kw)
    x, y = next(iter(ds.loader("train", torch.device("cpu"), seed=0, epoch=0)))
    sizes = [784, args.hidden, 10]
    arms = {}
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        model = create_model("emstdp_mlp", hidden=[args.hidden]).to(dev, dtype)
        rule = create_rule("emstdp", feedback=args.feedback, compare_every=0)
        model = rule.prepare(model)
        arms[str(dtype).replace("torch.", "")] = (model, rule, EMSTDPRMSprop(model.parameters(), lr=1e-4),
                                                  x.to(dev, dtype), y.to(dev))
    ref = reference_network(algo, sizes, args.feedback, 1e-4)
    model64, rule64 = arms["float64"][0], arms["float64"][1]
    sync_reference(ref, model64.cpu(), rule64)
    model64.to(dev)
    spikes_np = model64.encode(x.double().to(dev), torch.Generator(device=dev).manual_seed(1)).cpu().numpy()
    labels = y.numpy().astype(int)

    def ours(arm):
        model, rule, opt, xx, yy = arm
        opt.zero_grad(set_to_none=True)
        rule.step(model, xx, yy, None)
        opt.step()
        rule.after_step(model)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times = {"reference_numpy_float64": []}
    times.update({f"ours_{k}": [] for k in arms})
    for r in range(args.repeat + 3):
        t0 = time.perf_counter()
        ref.Train(spikes_np, labels, args.batch_size)
        dt = time.perf_counter() - t0
        if r >= 3:
            times["reference_numpy_float64"].append(dt)
        for k, arm in arms.items():
            sync()
            t0 = time.perf_counter()
            ours(arm)
            sync()
            if r >= 3:
                times[f"ours_{k}"].append(time.perf_counter() - t0)
    env = {**environment(dev), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    ips = {k: args.batch_size / statistics.median(v) for k, v in times.items()}
    row = {"bench": "emstdp_speed", "sizes": sizes, "feedback": args.feedback, "batch": args.batch_size,
           "time_steps": 100, "repeat": args.repeat, "threads": args.threads,
           "train_images_per_s": ips,
           "speedup_vs_reference": {k: v / ips["reference_numpy_float64"] for k, v in ips.items()
                                    if k != "reference_numpy_float64"},
           "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
           "note": "interleaved in one run on a shared machine; ours = rule.step + EMSTDPRMSprop + clip",
           **env}
    print({k: round(v, 1) for k, v in ips.items()}, {k: round(v, 2) for k, v in row["speedup_vs_reference"].items()})
    if not args.no_write:
        write_lines(args.out, [row])


if __name__ == "__main__":
    main()
