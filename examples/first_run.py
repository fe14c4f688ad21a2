"""First run: train the IDE F400 feedback SNN on the embedded MNIST subset, then evaluate it.

    python examples/first_run.py            # about 30 s on a 2-core CPU
    python examples/first_run.py --quick    # a few seconds (what the tests run)

Prints the final test accuracy and the run directory (config, metrics.jsonl, checkpoints)."""

import argparse
import json
import tempfile

import bioprop

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--quick", action="store_true")
args = p.parse_args()

config = bioprop.load_config(None, [  # the packaged default config, shortened
    "train.epochs=1" if args.quick else "train.epochs=2",
    "data.train_limit=256" if args.quick else "data.train_limit=8000",
    f"train.out_dir={tempfile.mkdtemp()}", "train.progress=false",
])
result = bioprop.Trainer(config).fit()
print(json.dumps({"test_acc": result["test_acc"], "run_dir": str(result["run_dir"])}))
