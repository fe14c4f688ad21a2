"""Export a trained feedback SNN to NIR (the exchange format of neuromorphic hardware and simulators),
read it back, and check that the file computes what the model computes.

    pip install nir                        # the `nir` extra
    python examples/export_nir.py          # a few seconds
    python examples/export_nir.py --quick

Trains F400 (one feedback population; its feedback becomes a cycle with one step of delay) for a few
steps with `ide`, writes `f400.nir`, runs the graph step by step (`run_nir`) on a spike train and
rebuilds the bioprop model from the file (`from_nir`)."""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import bioprop

try:
    from bioprop.export import from_nir, run_nir, save_nir
    import nir  # noqa: F401
except ImportError:
    sys.exit("this example needs the nir package: pip install 'bioprop[nir]'")

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--quick", action="store_true")
args = p.parse_args()

torch.manual_seed(0)
model = bioprop.create_model("f400", hidden=64, time_steps=5)
rule = bioprop.create_rule("ide")
model = rule.prepare(model)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
data = bioprop.create_dataset("mnist_embedded", batch_size=64, train_limit=64 * (5 if args.quick else 50))
for x, y in data.loader("train"):
    opt.zero_grad()
    rule.step(model, x, y, F.cross_entropy)
    opt.step()
model.eval()

path = save_nir(model, Path(tempfile.mkdtemp()) / "f400.nir")
x, _ = next(iter(data.loader("test", batch_size=8)))
spikes = (torch.rand((5,) + tuple(x.shape), generator=torch.Generator().manual_seed(0)) < x.sigmoid()).float()
with torch.no_grad():
    ours = model(spikes)
    graph_out = run_nir(str(path), spikes)
    rebuilt = from_nir(str(path))(spikes)
result = {"file": str(path), "bytes": path.stat().st_size,
          "max_diff_graph_vs_model": float((graph_out - ours).abs().max()),
          "max_diff_rebuilt_vs_model": float((rebuilt - ours).abs().max())}
print(f"wrote {path} ({result['bytes']:,} bytes); NIR graph vs model: {result['max_diff_graph_vs_model']:.1e}, "
      f"rebuilt model vs model: {result['max_diff_rebuilt_vs_model']:.1e}")
print(json.dumps(result))
