"""The benchmark runner (benchmarks/runner.py): the toy gpu suite end to end on tiny data files,
resumability (done entries skipped, a stopped training run continued from its checkpoint, also
after the run folder travelled as OUT/bench_SUITE_partial.tgz), the budget and the suite file's
checks. Entries run in-process (--in-process: no interpreter start-up per entry)."""

import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bioprop.data.formats import write_idx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import runner  # noqa: E402

IDX = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _data(d: Path) -> Path:
    """Tiny MNIST, Fashion-MNIST (IDX) and CIFAR-10 (python batches) files: 48 / 12 images."""
    rng = np.random.default_rng(0)
    for sub in ("mnist", "fashion-mnist"):
        (d / sub).mkdir(parents=True)
        arrays = [rng.integers(0, 256, (48, 28, 28)), rng.integers(0, 10, 48),
                  rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12)]
        for name, a in zip(IDX, arrays):
            write_idx(d / sub / f"{name}.gz", a.astype(np.uint8))
    c = d / "cifar-10-batches-py"
    c.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (8, 3072)).astype(np.uint8), "labels": rng.integers(0, 10, 8).tolist()}
        with open(c / name, "wb") as f:
            pickle.dump(batch, f)
    return d


def _rows(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _status(out: Path, suite: str):
    return [r["status"] for r in _rows(out / f"bench_{suite}_status.jsonl")]


def test_toy_gpu_suite_end_to_end_and_resumable(tmp_path):
    data, out, runs = _data(tmp_path / "data"), tmp_path / "out", tmp_path / "runs"
    args = ["gpu", "--toy", "--in-process", "--data-dir", str(data), "--out", str(out), "--runs", str(runs)]
    suite = runner.load_suites()["gpu"]
    ids = [e["id"] for e in suite["entries"]]
    assert ids[:2] == ["ide_speed", "tssl_speed"] and {"f64c5_fourier18", "f64c5_kernel", "sa_x10"} <= set(ids)
    # the suite's declared budgets fit the 12 minutes; every entry names a table of benchmarks/tables.py
    assert sum(e["budget_s"] for e in suite["entries"]) <= suite["budget_s"] == 720
    tables = (ROOT / "benchmarks" / "tables.py").read_text()
    assert all(f"def {e['table']}(" in tables for e in suite["entries"])

    # 1. a budget nothing fits: every entry skipped, and recorded as such
    assert runner.main(args + ["--budget", "1"]) == 0
    assert _status(out, "gpu") == ["skipped: budget"] * len(ids)
    # 2. the first two entries only (as a first call cut by its budget would leave it)
    assert runner.main(args + ["--only", "ide_speed,tssl_speed"]) == 0
    assert _status(out, "gpu")[-2:] == ["ran", "ran"]
    # 3. the whole suite: the two done entries skipped, the rest run
    assert runner.main(args) == 0, (out / "bench_gpu.log").read_text()[-3000:]
    assert _status(out, "gpu")[-len(ids):] == ["already done"] * 2 + ["ran"] * (len(ids) - 2)
    # 4. nothing left
    assert runner.main(args) == 0
    assert _status(out, "gpu")[-len(ids):] == ["already done"] * len(ids)

    # results where the tables find them (the same file names as benchmarks/results/), each row
    # tagged with its key, the command that reproduces it and the toy mark; nothing written twice
    for name in ("ide_speed.jsonl", "tssl_speed.jsonl", "ide_memory.jsonl", "train.jsonl", "alignment_resnet20.jsonl"):
        rows = _rows(out / name)
        assert rows and all(r["toy"] and r["bench_key"].startswith("gpu:") and r["command"].startswith("python ")
                            for r in rows), name
        assert all(r["device"] and r["torch"] == torch.__version__ and "date" in r and "commit" in r for r in rows)
    train = _rows(out / "train.jsonl")
    assert sorted(r["entry"] for r in train) == ["f64c5_fourier18", "f64c5_kernel", "tssl_mnist_cnn_10ep"]
    f64 = next(r for r in train if r["entry"] == "f64c5_fourier18")
    assert f64["model"]["sigma_of"] == "fourier" and f64["model"]["fb_norm_range"] == 1.8 and f64["shortened"]
    assert "model.sigma_of=fourier" in f64["command"] and f"--out {out / 'train.jsonl'}" in f64["command"]
    assert f64["suite_command"].startswith("python -m benchmarks gpu --only f64c5_fourier18")
    sa = _rows(out / "alignment_resnet20.jsonl")
    assert len(sa) == 1 and sa[0]["rule"]["name"] == "sa" and sa[0]["rule"]["reg_scale"] == 10
    assert len({r["bench_key"] for r in _rows(out / "ide_speed.jsonl")}) == 1
    assert not (ROOT / "benchmarks" / "results" / "tssl_speed.jsonl").exists() or all(
        not r.get("toy") for r in _rows(ROOT / "benchmarks" / "results" / "tssl_speed.jsonl"))


def _suite_file(tmp_path, extra_entry=""):
    f = tmp_path / "suites.yaml"
    f.write_text(f"""
suites:
  s:
    budget_s: 100
    entries:
      - id: mlp
        config: configs/mnist_mlp_bp.yaml
        overrides: [data.name=mnist_embedded, data.train_limit=64, train.max_steps_per_epoch=2, train.epochs=2, schedule.name=none,
                    "model.hidden=[8]", data.eval_batch_size=1000]
        seeds: [3]
        results: train.jsonl
        budget_s: 10
{extra_entry}""")
    return f


def test_a_stopped_training_run_continues_from_its_checkpoint(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    suites = runner.load_suites(_suite_file(tmp_path))
    r = runner.Runner("s", suites["s"], out, None, runs, None, False, None, in_process=True)
    (job,) = r.jobs
    assert job["key"].startswith("s:mlp:s3:") and "train.seed=3" in job["overrides"]
    # the first epoch of the same run, then stopped (as the budget or a kill would leave it)
    cmd = runner._command(dict(job, overrides=job["overrides"] + ["train.epochs=1"]), str(tmp_path / "x.jsonl"), None)
    with open(tmp_path / "first.log", "w") as log:
        assert runner._run_in_process(cmd + [f"train.out_dir={r.run_dir(job)}"], log) == 0
    assert [p["state"] for p in r.plan()] == ["partial"]
    # the run folder travels as OUT/bench_s_partial.tgz to a machine that lacks it
    r._pack_partial(r.jobs)
    assert (out / "bench_s_partial.tgz").is_file()
    shutil.rmtree(runs)
    r2 = runner.Runner("s", suites["s"], out, None, runs, None, False, None, in_process=True)
    r2._unpack_partial()
    assert [p["state"] for p in r2.plan()] == ["partial"]
    assert r2.run() == 0, (out / "bench_s.log").read_text()[-3000:]
    (row,) = _rows(out / "train.jsonl")
    assert row["resumed"] and row["epochs"] == 2 and [c["epoch"] for c in row["curve"]] == [1, 2]
    assert row["seed"] == 3 and row["bench_key"] == job["key"]
    assert "resumed from" in (out / "bench_s.log").read_text()
    assert not (out / "bench_s_partial.tgz").exists()  # nothing left to continue
    assert [p["state"] for p in r2.plan()] == ["done"]


def test_entries_that_need_cuda_are_skipped_cleanly(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the entry would run")
    f = _suite_file(tmp_path, """      - {id: gpu_only, script: benchmarks/ide_memory.py, args: [], requires_cuda: true,
         results: ide_memory.jsonl, budget_s: 10}""")
    out = tmp_path / "out"
    assert runner.main(["s", "--suites", str(f), "--out", str(out), "--only", "gpu_only", "--in-process"]) == 0
    assert _status(out, "s") == ["skipped: needs CUDA"]


@pytest.mark.parametrize("body, message", [
    ("suites: {s: {entries: [{id: a, results: x.jsonl}]}}", "exactly one of 'script', 'module' or 'config'"),
    ("suites: {s: {entries: [{id: a, script: x.py}]}}", "name the results file"),
    ("suites: {s: {entries: [{id: a, script: x.py, results: x.jsonl, budget: 3}]}}", "unknown keys \\['budget'\\]"),
    ("suites: {s: {entries: [{id: a, script: x.py, results: x.jsonl}, {id: a, script: y.py, results: x.jsonl}]}}",
     "duplicate id"),
])
def test_suite_file_errors_name_the_problem(tmp_path, body, message):
    f = tmp_path / "suites.yaml"
    f.write_text(body)
    with pytest.raises(runner.SuiteError, match=message):
        runner.load_suites(f)


def test_toy_rows_never_go_to_benchmarks_results(capsys):
    assert runner.main(["gpu", "--toy"]) == 2
    assert "--toy writes toy rows: pass --out DIR" in capsys.readouterr().err


def test_merge_appends_new_real_rows_once(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    (src / "train.jsonl").write_text(json.dumps({"a": 1}) + "\n" + json.dumps({"a": 2, "toy": True}) + "\n")
    (src / "bench_gpu_status.jsonl").write_text(json.dumps({"status": "ran"}) + "\n")
    assert runner.merge(src, dest) == {"train.jsonl": 1}
    assert runner.merge(src, dest) == {"train.jsonl": 0}
    assert _rows(dest / "train.jsonl") == [{"a": 1}] and not (dest / "bench_gpu_status.jsonl").exists()


def test_the_benchmark_guide_lists_every_suite_as_declared():
    assert runner.write_docs(check=True), "docs/guides/benchmarks.md is out of date: run python -m benchmarks --write-docs"
    text = (ROOT / "docs" / "guides" / "benchmarks.md").read_text()
    for name, suite in runner.load_suites().items():
        assert f"#### `{name}`" in text
        assert all(f"| `{e['id']}` |" in text for e in suite["entries"])


def test_bioprop_bench_runs_the_checkouts_runner(capfd, monkeypatch):
    from bioprop.cli import main

    monkeypatch.chdir(ROOT / "docs")  # found from a subfolder of the checkout too
    assert main(["bench", "gpu", "--dry-run"]) == 0
    out = capfd.readouterr().out
    assert "$ python benchmarks/ide_speed.py --out benchmarks/results/ide_speed.jsonl" in out
    assert "f64c5_kernel" in out
    assert main(["bench", "no_such_suite"]) == 2
    assert "no suite 'no_such_suite'" in capfd.readouterr().err
