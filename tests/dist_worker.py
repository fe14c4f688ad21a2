"""Run under ``torchrun --nproc_per_node=2`` by tests/test_distributed.py (not a test module).

    python -m torch.distributed.run --nproc_per_node=2 tests/dist_worker.py OUT_DIR

Trains each configuration of :func:`configs` for a few steps with the real Trainer (rank 0
writes the checkpoints), then the resume scenario: one run of 2 epochs, and one of 1 epoch
resumed to 2 by a new Trainer from its checkpoint.
"""

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from bioprop.train import RunConfig, Trainer  # noqa: E402


def base(out, name, model, rule, steps=3, epochs=1, batch=32, schedule=None):
    return RunConfig.from_dict({
        "model": model,
        "rule": rule,
        "data": {"name": "mnist_embedded", "train_limit": 256, "batch_size": batch, "val_fraction": 0.0},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": schedule or {"name": "none"},
        "train": {"epochs": epochs, "seed": 3, "device": "cpu", "out_dir": str(out), "progress": False,
                  "name": name, "max_steps_per_epoch": steps, "eval_every": 100, "keep_checkpoints": 5},
    })


def configs(out):
    mlp = {"name": "mlp", "hidden": [24, 16]}
    return {
        "bp": base(out, "bp", mlp, {"name": "bp"}),
        "bp_uneven": base(out, "bp_uneven", mlp, {"name": "bp"}, batch=33),  # shards of 17 and 16
        "fa": base(out, "fa", mlp, {"name": "fa"}),
        "pc": base(out, "pc", mlp, {"name": "pc", "variant": "fixed_pred", "eta": 0.5, "n": 5}),
        "bptt": base(out, "bptt", {"name": "spiking_mlp", "hidden": [24], "time_steps": 4}, {"name": "bptt"}),
        "kp": base(out, "kp", mlp, {"name": "kp"}),
        "tssl": base(out, "tssl", {"name": "tssl_fmnist_mlp", "arch": "24"}, {"name": "tssl"}),
        "ide": base(out, "ide", {"name": "f400", "hidden": 24, "time_steps": 5, "dropout": 0.0}, {"name": "ide"}),
    }


def resume_configs(out, epochs):
    mlp = {"name": "mlp", "hidden": [24, 16], "dropout": 0.3}  # dropout: per-rank generators restored
    # a schedule that depends on the step only (not on the configured number of epochs)
    sched = {"name": "step", "step_size": 1, "gamma": 0.5, "warmup_steps": 2}
    return (base(out, "full", mlp, {"name": "bp"}, steps=3, epochs=2, schedule=sched),
            base(out, "part", mlp, {"name": "bp"}, steps=3, epochs=epochs, schedule=sched))


def main(out):
    out = Path(out)
    quiet = lambda *a, **k: None  # noqa: E731
    for cfg in configs(out).values():
        Trainer(cfg, log=quiet).fit()
    full, part = resume_configs(out, 1)
    Trainer(full, log=quiet).fit()
    Trainer(part, log=quiet).fit()
    _, part2 = resume_configs(out, 2)
    Trainer(part2, resume=True, log=quiet).fit()


if __name__ == "__main__":
    main(sys.argv[1])
