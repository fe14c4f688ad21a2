"""Multi-process training (torchrun, gloo on CPU, 2 processes): after k steps the weights equal one
process trained on the concatenated batches (bp, fa, kp, pc, bptt, tssl, and ide, whose feedback SNNs
take their BatchNorm statistics over all ranks' shards: F400 with even and uneven shards, and a
five-population AlexNet-F whose map, Jacobian and adjoint solve use batch statistics); the fixed-point
solvers stop where one process solving the whole batch stops; a 2-process checkpoint resumes under 2
processes bit-identically, and not under another number."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from bioprop.distributed import all_reduce_grads, shard_range
from bioprop.config import ConfigError
from bioprop.train import Trainer, load_weights
from bioprop.train.checkpoint import latest_checkpoint

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import dist_worker  # noqa: E402

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def _quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent / "src")}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                        str(HERE / "dist_worker.py"), str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def _weights(run_dir):
    ck = latest_checkpoint(run_dir)
    state = {}
    from safetensors.torch import load_file

    state.update(load_file(str(Path(ck) / "model.safetensors")))
    return state


@pytest.mark.parametrize("rule", ["bp", "bp_uneven", "fa", "kp", "pc", "bptt", "tssl", "ide", "ide_uneven",
                                  "ide_multi"])
def test_two_processes_equal_one_process_on_the_concatenated_batch(two_process_runs, tmp_path, rule):
    """Every parameter and buffer (for ide also the BatchNorms' running statistics, updated from the
    global batch's statistics) after 3 steps."""
    cfg = dist_worker.configs(tmp_path)[rule]
    single = Trainer(cfg, log=_quiet)
    init = {k: v.clone() for k, v in single.model.state_dict().items()}
    single.fit()
    two = _weights(two_process_runs / rule)
    moved = 0
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(two[k], v, rtol=1e-5, atol=1e-6, msg=lambda m: f"{rule} {k}: {m}")
        moved += int(not torch.equal(v, init[k]))
    assert moved > 0


@pytest.mark.parametrize("solver", ["fixed_point", "anderson", "broyden"])
def test_solvers_split_over_two_processes_stop_where_the_whole_batch_stops(two_process_runs, solver):
    """Rank 0's rows contract fast, rank 1's slowly: with the residuals all-reduced, each rank runs
    as many iterations as one process on the whole batch and returns its rows of that solution
    (alone, rank 0 would stop far earlier)."""
    from bioprop.equilibrium import solve

    h, b = dist_worker.solver_problem()
    one = solve(h, torch.zeros_like(b), solver=solver, max_iter=200, tol=1e-10, warn=False)
    alone = solve(lambda x: h(x, slice(0, 4)), torch.zeros_like(b[:4]), solver=solver, max_iter=200, tol=1e-10,
                  warn=False)
    assert alone.iters < one.iters  # the problem does separate the shards
    ranks = [torch.load(two_process_runs / f"solver_rank{r}.pt")[solver] for r in range(2)]
    for r, rows in zip(ranks, (slice(0, 4), slice(4, 8))):
        assert r["iters"] == one.iters
        assert r["residual"] == pytest.approx(one.residual, rel=1e-9)
        assert r["max_residual"] == pytest.approx(one.max_residual, rel=1e-9)
        torch.testing.assert_close(r["x"], one.x[rows], rtol=1e-12, atol=1e-13)


def test_two_process_checkpoint_resumes_bit_identically(two_process_runs):
    full, part = _weights(two_process_runs / "full"), _weights(two_process_runs / "part")
    assert full.keys() == part.keys()
    for k in full:
        assert torch.equal(full[k], part[k]), k
    lines = (two_process_runs / "part" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # rank 0 alone wrote, each epoch once


def test_resume_under_another_process_count_is_refused(two_process_runs, tmp_path):
    _, part = dist_worker.resume_configs(two_process_runs, 2)
    with pytest.raises(ConfigError, match="same number"):
        Trainer(part, resume=True, log=_quiet)


def test_shard_range_partitions_the_batch():
    for n in (1, 7, 32, 33):
        for world in (1, 2, 3, 5):
            rows = [i for r in range(world) for i in range(*shard_range(n, r, world))]
            assert rows == list(range(n))


def test_all_reduce_grads_is_a_noop_without_a_process_group():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    all_reduce_grads([p], weight=0.25)
    assert torch.equal(p.grad, torch.full((3,), 2.0))
