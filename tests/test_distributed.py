"""Multi-process training (torchrun, gloo on CPU, 2 processes): after k steps the weights equal one
process trained on the concatenated batches (bp, fa, kp, pc, bptt, tssl, and ide, whose feedback SNNs
take their BatchNorm statistics over all ranks' shards: F400 with even and uneven shards, and a
five-population AlexNet-F whose map, Jacobian and adjoint solve use batch statistics); the fixed-point
solvers stop where one process solving the whole batch stops; a 2-process checkpoint resumes under 2
processes bit-identically, and not under another number. The meta-plasticity learner shares each
meta-step's episodes between the processes: theta equals one process with the same meta-batch, and a
2-process meta checkpoint resumes bit-identically."""

import json
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


# ---- the meta-plasticity learner: episodes in parallel ------------------------------------------
def _meta_state(run_dir):
    import json

    w = _weights(Path(run_dir) / "checkpoints")
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return w["theta"], rows, json.loads((Path(run_dir) / "result.json").read_text())


def test_meta_two_processes_equal_one_process_with_the_same_meta_batch(two_process_runs, tmp_path):
    from bioprop.meta import MetaLearner

    single = MetaLearner(dist_worker.meta_config(tmp_path / "one"), pool=dist_worker.meta_pool())
    theta0 = single.theta.detach().clone()
    res1 = single.fit()
    theta2, rows2, res2 = _meta_state(two_process_runs / "meta")
    assert not torch.equal(single.theta.detach(), theta0)
    torch.testing.assert_close(theta2, single.theta.detach(), rtol=1e-10, atol=1e-13)
    rows1 = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    # rank 0 alone wrote: one line a meta-step (episodes 4 and 8) and one a held-out evaluation
    assert [(r["kind"], r["episode"]) for r in rows2] == [(r["kind"], r["episode"]) for r in rows1] == [
        ("eval", 0), ("train", 4), ("eval", 4), ("train", 8), ("eval", 8)]
    for r1, r2 in zip(rows1, rows2):
        for k in ("meta_loss", "query_ce", "query_acc", "acc", "ce", "angle_l1", "angle_l2"):
            if k in r1:
                assert r2[k] == pytest.approx(r1[k], rel=1e-9, abs=1e-12), (r1["kind"], r1["episode"], k)
        for term, g in r1.get("theta_grad", {}).items():
            assert r2["theta_grad"][term] == pytest.approx(g, rel=1e-9, abs=1e-15)
    for phase in ("heldout", "train_classes"):
        assert res2[phase]["episodes"] == res1[phase]["episodes"] == 3
        assert res2[phase]["acc"] == pytest.approx(res1[phase]["acc"], rel=1e-12)


def test_meta_two_process_checkpoint_resumes_bit_identically(two_process_runs):
    full, rows_full, _ = _meta_state(two_process_runs / "meta_full")
    part, rows_part, _ = _meta_state(two_process_runs / "meta_part")
    assert torch.equal(full, part)
    assert rows_full == rows_part and [r["episode"] for r in rows_full if r["kind"] == "train"] == [4, 8, 12]


def test_meta_batch_is_the_mean_of_its_episodes_meta_gradients(tmp_path):
    """One process, meta_batch 2: the first step's meta-gradient is the mean of episodes 0 and 1's."""
    from bioprop.meta import MetaLearner

    learner = MetaLearner(dist_worker.meta_config(None, episodes=2, meta_batch=2), pool=dist_worker.meta_pool())
    th = learner.theta.detach().clone().requires_grad_(True)
    grads = [torch.autograd.grad(learner.meta_loss(th, "train", i)[0], th)[0] for i in (0, 1)]
    line = learner.train_episode()
    assert line["episode"] == 2 and learner.episode == 2
    got = torch.tensor(list(line["theta_grad"].values()), dtype=torch.float64)
    torch.testing.assert_close(got, (grads[0] + grads[1]) / 2, rtol=1e-12, atol=1e-15)
    assert not torch.allclose(grads[0], grads[1])


def test_meta_batch_errors_are_one_line():
    from bioprop.meta import MetaLearner

    with pytest.raises(ValueError, match="meta_batch must be >= 1 and divide meta.episodes"):
        MetaLearner(dist_worker.meta_config(None, episodes=6, meta_batch=4), pool=dist_worker.meta_pool())


# ---- backend choice (NCCL itself is not tested here: no GPU) -------------------------------------
@pytest.mark.parametrize("device,cuda,backend,expect", [
    ("cpu", True, "gloo", "cpu"), ("auto", False, "gloo", "cpu"),
    ("cuda", True, "nccl", "cuda:1"), ("auto", True, "nccl", "cuda:1"), ("cuda:0", True, "nccl", "cuda:0")])
def test_init_from_env_picks_nccl_on_cuda_and_gloo_on_cpu(monkeypatch, device, cuda, backend, expect):
    """Under torchrun's variables (WORLD_SIZE 2, LOCAL_RANK 1) the process group's backend follows the
    run's device; a CUDA rank sits on cuda:LOCAL_RANK unless a device index is given."""
    from bioprop import distributed as D

    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: calls.update(backend=backend))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.update(device=str(d)))
    dev = D.init_from_env(device)
    assert calls["backend"] == backend and str(dev) == expect
    assert calls.get("device", "cpu") == expect


# ---- the global BatchNorm's arithmetic, in a world of one ----------------------------------------
def test_global_batch_norm_arithmetic_equals_f_batch_norm(monkeypatch):
    """The all-rank path of ``distributed.batch_norm`` (two-pass moments, running statistics with the
    unbiased variance, the weighted backward) run with a one-rank 'all-reduce' equals
    ``F.batch_norm`` in float64: output, running statistics and gradients. Without a process group
    ``batch_norm`` is ``F.batch_norm`` itself, bitwise."""
    import torch.nn.functional as F

    from bioprop import distributed as D

    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64) * 3 + 1
    w, b = torch.rand(3, generator=g, dtype=torch.float64) + 0.5, torch.randn(3, generator=g, dtype=torch.float64)
    probe = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)

    def run(fn):
        zz, ww, bb = (t.clone().requires_grad_(True) for t in (z, w, b))
        rm, rv = torch.full((3,), 0.5, dtype=torch.float64), torch.full((3,), 2.0, dtype=torch.float64)
        out = fn(zz, rm, rv, ww, bb, True, 0.1, 1e-5)
        (out * probe).sum().backward()
        return out.detach(), rm, rv, zz.grad, ww.grad, bb.grad

    ref = run(F.batch_norm)
    for got, want in zip(run(D.batch_norm), ref):  # no process group: F.batch_norm itself
        assert torch.equal(got, want)
    monkeypatch.setattr(D, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")
    monkeypatch.setattr(dist, "all_reduce", lambda t, op=None: None)  # one rank: the sum is the tensor
    for name, got, want in zip(("out", "running_mean", "running_var", "dz", "dw", "db"), run(D.batch_norm), ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
