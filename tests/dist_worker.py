"""Run under ``torchrun --nproc_per_node=2`` by tests/test_distributed.py (not a test module).

    python -m torch.distributed.run --nproc_per_node=2 tests/dist_worker.py OUT_DIR

First each rank solves its rows of :func:`solver_problem` with the residuals all-reduced; then it
trains each configuration of :func:`configs` for a few steps with the real Trainer (rank 0
writes the checkpoints), then the resume scenario: one run of 2 epochs, and one of 1 epoch
resumed to 2 by a new Trainer from its checkpoint; last the meta-learner's runs (:func:`meta_runs`).
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
        # dropout on (input and feedback currents): each rank keeps its rows of the global batch's masks
        "ide": base(out, "ide", {"name": "f400", "hidden": 24, "time_steps": 5, "dropout": 0.2}, {"name": "ide"}),
        "ide_uneven": base(out, "ide_uneven", {"name": "f400", "hidden": 24, "time_steps": 5, "dropout": 0.2},
                           {"name": "ide"}, batch=33),
        # five populations: inner BatchNorms with batch statistics in the map, its Jacobian and the solve
        "ide_multi": base(out, "ide_multi", {"name": "alexnet_f", "in_shape": [1, 28, 28], "channels": [4, 4, 4, 4, 4],
                                             "time_steps": 4, "dropout": 0.0}, {"name": "ide"}),
    }


def resume_configs(out, epochs):
    mlp = {"name": "mlp", "hidden": [24, 16], "dropout": 0.3}  # dropout: per-rank generators restored
    # a schedule that depends on the step only (not on the configured number of epochs)
    sched = {"name": "step", "step_size": 1, "gamma": 0.5, "warmup_steps": 2}
    return (base(out, "full", mlp, {"name": "bp"}, steps=3, epochs=2, schedule=sched),
            base(out, "part", mlp, {"name": "bp"}, steps=3, epochs=epochs, schedule=sched))


def solver_problem(dtype=torch.float64):
    """A batch of 8 independent fixed points ``x = c_i tanh(Q x) + b_i`` (5-dim), whose contraction
    ``c_i`` is 0.1 for the first four samples and 0.9 for the last four: rank 0's shard alone
    converges in far fewer iterations than the whole batch."""
    g = torch.Generator().manual_seed(11)
    Q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=dtype))
    b = torch.randn(8, 5, generator=g, dtype=dtype)
    c = torch.tensor([0.1] * 4 + [0.9] * 4, dtype=dtype)[:, None]
    return lambda x, rows=slice(None): c[rows] * torch.tanh(x @ Q.T) + b[rows], b


def solver_check(out):
    """Each rank solves its rows with the residuals all-reduced (``reduce``); saves its result."""
    from bioprop import distributed as D
    from bioprop.equilibrium import solve

    D.init_from_env("cpu")
    h, b = solver_problem()
    a, z = D.shard_range(b.shape[0])
    res = {}
    for name in ("fixed_point", "anderson", "broyden"):
        r = solve(lambda x: h(x, slice(a, z)), torch.zeros_like(b[a:z]), solver=name, max_iter=200, tol=1e-10,
                  warn=False, reduce=D.all_reduce)
        res[name] = {"x": r.x, "iters": r.iters, "residual": r.residual, "max_residual": r.max_residual}
    torch.save(res, Path(out) / f"solver_rank{D.rank()}.pt")


def meta_pool():
    """Six random 'classes' of twelve 10-pixel images (two held out)."""
    from bioprop.meta import ClassPool

    g = torch.Generator().manual_seed(0)
    imgs = [torch.randint(0, 256, (12, 10), generator=g, dtype=torch.uint8) for _ in range(6)]
    return ClassPool(imgs, [f"c{i}" for i in range(6)], [4, 5])


def meta_config(run_dir, episodes=8, meta_batch=4):
    """Meta-steps of 4 episodes (2 a rank), float64; evaluation of 3 held-out episodes every 4."""
    from bioprop.meta import load_meta_config

    m = {"M": 2, "K": 3, "Q": 2, "episodes": episodes, "meta_batch": meta_batch, "eval_every": 4,
         "eval_episodes": 3, "test_episodes": 3, "save_every": 4, "dtype": "float64", "theta0": 0.05, "lr": 0.01}
    over = [f"meta.{k}={v}" for k, v in m.items()]
    over += ["plasticity.hidden=[5,4]", "plasticity.terms=[pseudo_grad,error_hebb,oja]", "progress=false"]
    if run_dir is not None:
        over.append(f"run_dir={run_dir}")
    return load_meta_config(None, over)


def meta_runs(out):
    """The meta-learner under torchrun: one run of 2 meta-steps; a run of 3 meta-steps, and one of 2
    resumed to 3 by a new learner from its checkpoint."""
    from bioprop.meta import MetaLearner

    MetaLearner(meta_config(out / "meta"), pool=meta_pool()).fit()
    MetaLearner(meta_config(out / "meta_full", episodes=12), pool=meta_pool()).fit()
    MetaLearner(meta_config(out / "meta_part", episodes=8), pool=meta_pool()).fit()
    MetaLearner(meta_config(out / "meta_part", episodes=12), pool=meta_pool(), resume=True).fit()


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    quiet = lambda *a, **k: None  # noqa: E731
    solver_check(out)  # joins the process group the trainers then use
    for cfg in configs(out).values():
        Trainer(cfg, log=quiet).fit()
    full, part = resume_configs(out, 1)
    Trainer(full, log=quiet).fit()
    Trainer(part, log=quiet).fit()
    _, part2 = resume_configs(out, 2)
    Trainer(part2, resume=True, log=quiet).fit()
    meta_runs(out)


if __name__ == "__main__":
    main(sys.argv[1])
