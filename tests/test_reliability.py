"""Reliability of a run (issue 18): NaN/Inf caught, run directories claimed atomically, one-line
errors with exit codes, honest resume, safe checkpoint loading, the package's metadata."""

import json
import math
import multiprocessing as mp
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import bioprop
import bioprop.train.trainer as trainer_mod
from bioprop.cli import EXIT_CODES, main
from bioprop.config import ConfigError
from bioprop.data import DataError, create_dataset, read_idx, write_idx
from bioprop.equilibrium import SolverError, solve
from bioprop.nonfinite import FiniteMonitor, NonFiniteError
from bioprop.train import CheckpointError, RunConfig, Trainer, load_checkpoint, load_config, save_checkpoint
from bioprop.train.trainer import CLAIM_FILE, claim_run_dir

ROOT = Path(__file__).resolve().parent.parent


def _raw(tmp_path, name="run", **train):
    return {
        "model": {"name": "mlp", "hidden": [16]},
        "rule": {"name": "bp"},
        "data": {"name": "mnist_embedded", "train_limit": 128, "batch_size": 32},
        "optim": {"name": "sgd", "lr": 0.05},
        "schedule": {"name": "none"},
        "train": {"epochs": 2, "seed": 3, "device": "cpu", "out_dir": str(tmp_path), "name": name,
                  "progress": False, **train},
    }


def _cfg(tmp_path, name="run", **train):
    return RunConfig.from_dict(_raw(tmp_path, name, **train))


def _quiet(*a, **k):
    pass


def _cli(tmp_path, name="cli", *extra):
    return ["train", "--device", "cpu", f"train.out_dir={tmp_path}", f"train.name={name}", "model=mlp",
            "model.hidden=[16]", "rule=bp", "data.train_limit=128", "data.batch_size=32", "schedule.name=none",
            "train.progress=false", *extra]


# -- 1. non-finite values ------------------------------------------------------------------------

def _poison_loader(trainer, at_step, value=float("nan")):
    real = trainer.dataset.loader

    def loader(split, *a, **k):
        it = real(split, *a, **k)
        if split != "train":
            return it

        class L:
            def __len__(self):
                return len(it)

            def __iter__(self):
                for i, (x, y) in enumerate(it):
                    if i + 1 == at_step:
                        x = x.clone()
                        x[0, 0, 0, 0] = value
                    yield x, y
        return L()

    trainer.dataset.loader = loader


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_input_stops_the_run_naming_step_and_tensor(tmp_path, value):
    t = Trainer(_cfg(tmp_path, check_every=50), log=_quiet)
    _poison_loader(t, at_step=3, value=value)
    with pytest.raises(NonFiniteError, match=r"the input batch at epoch 1, step 3 \(global step 3\)"):
        t.fit()
    assert not (t.run_dir / "checkpoints").exists()  # no checkpoint of a broken run
    assert t.history == []


def test_float_images_with_nan_are_caught_and_uint8_images_skip_the_input_flag(tmp_path, monkeypatch):
    """Integer images with a finite normalisation are finite by construction (no per-step input
    flag); float images, e.g. a custom dataset built through the Python API, are flagged."""
    t = Trainer(_cfg(tmp_path, check_every=50), log=_quiet)
    assert t.dataset.loader("train").finite_inputs
    x = t.dataset.train_x.float()
    x[7, 0, 3, 3] = float("nan")
    t.dataset.train_x = x
    t.dataset._cache.clear()
    assert not t.dataset.loader("train").finite_inputs
    with pytest.raises(NonFiniteError, match=r"the input batch at epoch 1, step \d \(global step"):
        t.fit()
    assert not (t.run_dir / "checkpoints").exists()
    # a normalisation with std 0 makes every batch Inf: not finite by construction either
    t2 = Trainer(_cfg(tmp_path, name="std0"), log=_quiet)
    t2.dataset.std = (0.0,)
    assert not t2.dataset.loader("train").finite_inputs


def test_nan_input_to_a_spiking_net_stops_the_run_though_its_loss_stays_finite(tmp_path):
    raw = _raw(tmp_path, "snn", epochs=1)
    raw["model"] = {"name": "spiking_convnet", "channels": [2, 3], "hidden": [8], "time_steps": 2}
    raw["rule"] = {"name": "bptt"}
    t = Trainer(RunConfig.from_dict(raw), log=_quiet)
    _poison_loader(t, at_step=2)
    losses = []
    real = t.rule.step

    def step(*a, **k):
        out = real(*a, **k)
        losses.append(float(out.loss))
        return out

    t.rule.step = step
    with pytest.raises(NonFiniteError, match=r"the input batch at epoch 1, step 2 "):
        t.fit()
    assert all(math.isfinite(v) for v in losses)  # NaN membranes never spike: the old loss check was blind
    assert not (t.run_dir / "checkpoints").exists()


def _nan_gradient_at(t, monkeypatch, at_step, param="layers.1.0.weight"):
    """Make the rule's step ``at_step`` leave a NaN in one gradient entry; returns the step log."""
    real_step, calls = t.rule.step, []

    def step(model, x, y, loss_fn, scaler=None):
        out = real_step(model, x, y, loss_fn, scaler)
        calls.append(1)
        if len(calls) == at_step:
            dict(model.named_parameters())[param].grad[0, 0] = float("nan")
        return out

    monkeypatch.setattr(t.rule, "step", step)
    assert param in dict(t.model.named_parameters())
    return calls


@pytest.mark.parametrize("mode", ["step", "check", "auto"])
def test_nonfinite_gradient_names_the_layer_and_step(tmp_path, monkeypatch, mode):
    """``train.check_gradients=step`` names the exact step of a NaN gradient; ``check`` (and
    ``auto`` on the CPU) catches it through the weight it made non-finite, at the next check."""
    raw = _raw(tmp_path, f"g{mode}", check_every=3)
    raw["train"]["check_gradients"] = mode
    t = Trainer(RunConfig.from_dict(raw), log=_quiet)
    calls = _nan_gradient_at(t, monkeypatch, at_step=2)
    # check/auto: the NaN weight makes step 3's loss NaN (flagged every step); the error names the
    # weights that are non-finite by then
    expected = (r"gradient of 'layers.1.0.weight' at epoch 1, step 2 " if mode == "step" else
                r"the loss at epoch 1, step 3 .*non-finite weights now: .*'layers.1.0.weight'")
    with pytest.raises(NonFiniteError, match=expected):
        t.fit()
    assert len(calls) == 3  # stopped at the check after step 3 (check_every=3), before any checkpoint
    assert not (t.run_dir / "checkpoints").exists()


def test_nonfinite_gradient_in_check_mode_is_caught_through_the_weight(tmp_path, monkeypatch):
    """A NaN gradient at the last step before a check leaves every flag of the steps finite; the
    check's scan of the weights catches it and says how to get the exact step."""
    t = Trainer(_cfg(tmp_path, check_every=3, check_gradients="check"), log=_quiet)
    calls = _nan_gradient_at(t, monkeypatch, at_step=3)
    with pytest.raises(NonFiniteError, match=r"weight 'layers.1.0.weight' at the check after epoch 1, "
                                             r"step 3 .*train.check_gradients=step names the exact step"):
        t.fit()
    assert len(calls) == 3 and not (t.run_dir / "checkpoints").exists()


def test_check_gradients_auto_flags_every_step_on_cuda_only(tmp_path):
    t = Trainer(_cfg(tmp_path), log=_quiet)
    assert t.config.train.check_gradients == "auto" and not t._grads_every_step()
    t.device = torch.device("cuda")  # the choice only: nothing runs on it
    assert t._grads_every_step()
    t.config.train.check_gradients = "check"
    assert not t._grads_every_step()


def test_nonfinite_weight_from_a_rule_update_is_caught_before_any_checkpoint(tmp_path, monkeypatch):
    t = Trainer(_cfg(tmp_path, check_every=1), log=_quiet)

    def after_step(model):  # a rule that updates weights itself (no gradient involved)
        with torch.no_grad():
            dict(model.named_parameters())["layers.0.1.bias"][1] = float("inf")

    monkeypatch.setattr(t.rule, "after_step", after_step)
    with pytest.raises(NonFiniteError, match=r"weight 'layers.0.1.bias' at the check after epoch 1, step 1 "):
        t.fit()
    assert not (t.run_dir / "checkpoints").exists()


def test_save_checkpoint_refuses_nonfinite_weights(tmp_path):
    t = Trainer(_cfg(tmp_path), log=_quiet)
    with torch.no_grad():
        next(t.model.parameters())[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="refusing to write checkpoint"):
        save_checkpoint(tmp_path / "ck", 1, t.model, t._state())
    assert not list((tmp_path / "ck").glob("epoch_*"))


def test_flags_are_read_back_only_every_check_every_steps(tmp_path, monkeypatch):
    reads = []
    real = FiniteMonitor.first_bad

    def counting(self):
        reads.append(len(self))
        return real(self)

    monkeypatch.setattr(FiniteMonitor, "first_bad", counting)
    t = Trainer(_cfg(tmp_path, epochs=1, check_every=3), log=_quiet)
    assert t.steps_per_epoch == 4
    t.fit()
    # a read after step 3 and one at the epoch's end: never one per step
    assert len(reads) == 2
    reads.clear()
    Trainer(_cfg(tmp_path, name="off", epochs=1, check_every=0), log=_quiet).fit()
    assert reads == []


def test_ide_flags_nonfinite_membrane_drive_that_never_spikes():
    """NaN membranes never spike: the loss stays finite and the solve 'converges'; the rule's
    own flags (bioprop.nonfinite.watch) name the membranes' drive."""
    torch.manual_seed(0)
    rule = bioprop.create_rule("ide")
    model = rule.prepare(bioprop.create_model("f400", time_steps=3))
    x = torch.rand(4, 1, 28, 28)
    x[0, 0, 5, 5] = float("nan")
    mon = FiniteMonitor()
    mon.where = "epoch 1, step 1"
    with mon.active():
        out = rule.step(model, x, torch.arange(4), F.cross_entropy)
    assert torch.isfinite(out.loss)  # why the loss check alone never fired
    with pytest.raises(NonFiniteError, match=r"ide: the membrane drive .* at epoch 1, step 1"):
        mon.check()
    # outside a trainer (no active monitor) watch() is a no-op
    rule.step(model, x, torch.arange(4), F.cross_entropy)


@pytest.mark.parametrize("solver", ["broyden", "anderson", "fixed_point"])
def test_solver_never_reports_a_nonfinite_system_converged(solver):
    x0 = torch.ones(3, 4)
    # an Inf scale made every relative residual 0: "converged"
    r = solve(lambda x: x, x0, solver=solver, scale=torch.full((3, 4), float("inf")), warn=False)
    assert not r.converged and math.isnan(r.residual)
    r = solve(lambda x: x * float("nan"), x0, solver=solver, warn=False)
    assert not r.converged and math.isnan(r.residual)
    with pytest.raises(SolverError, match="NaN/Inf"):
        solve(lambda x: x * float("nan"), x0, solver=solver, strict=True)


# -- 2. run directories ----------------------------------------------------------------------------

def _claim_worker(base, barrier, queue):
    barrier.wait()
    queue.put([str(claim_run_dir(Path(base))) for _ in range(5)])


def test_two_processes_started_together_never_share_a_run_dir(tmp_path):
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_claim_worker, args=(str(tmp_path / "same"), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    dirs = got[0] + got[1]
    assert len(set(dirs)) == 10, dirs
    assert sorted(Path(d).name for d in dirs) == sorted(["same"] + [f"same-{i}" for i in range(1, 10)])
    assert all((Path(d) / CLAIM_FILE).is_file() for d in dirs)


def test_trainer_claims_its_run_dir_when_built(tmp_path):
    a = Trainer(_cfg(tmp_path, name="same"), log=_quiet)
    b = Trainer(_cfg(tmp_path, name="same"), log=_quiet)  # built before a wrote anything else
    assert a.run_dir != b.run_dir and b.run_dir.name == "same-1"


# -- 3. one-line errors with exit codes ------------------------------------------------------------

def _one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def trained(tmp_path):
    t = Trainer(_cfg(tmp_path, name="done"), log=_quiet)
    t.fit()
    return t.run_dir


def test_corrupt_or_missing_checkpoint_is_one_line_exit_4(trained, capsys):
    ck = trained / "checkpoints"
    data = (ck / "epoch_0002" / "state.pt").read_bytes()
    (ck / "epoch_0002" / "state.pt").write_bytes(data[: len(data) // 3])
    assert main(["eval", str(trained), "--device", "cpu"]) == EXIT_CODES["checkpoint"] == 4
    line = _one_line(capsys)
    assert "epoch_0002/state.pt" in line and "corrupt or truncated" in line
    assert "epoch_0001" in line and "--resume" in line  # the earlier good checkpoint is named
    # --debug shows the traceback (the exception propagates)
    with pytest.raises(CheckpointError):
        main(["--debug", "eval", str(trained), "--device", "cpu"])
    import shutil

    shutil.rmtree(ck / "epoch_0002")  # 'latest' now points at a missing epoch
    assert main(["eval", str(trained), "--device", "cpu"]) == 4
    line = _one_line(capsys)
    assert "missing or incomplete" in line and "epoch_0001" in line


def test_model_mismatch_on_eval_is_one_line_exit_4(trained, capsys):
    assert main(["eval", str(trained), "--device", "cpu", "model.hidden=[8]"]) == 4
    assert "does not match the model" in _one_line(capsys)


def test_nan_run_and_strict_solver_and_rule_mismatch_exit_codes(tmp_path, capsys):
    assert main(_cli(tmp_path, "blowup", "optim.lr=1e38", "train.epochs=1")) == EXIT_CODES["nonfinite"] == 5
    line = _one_line(capsys)
    assert "non-finite values" in line and "epoch 1, step" in line
    assert not (tmp_path / "blowup" / "checkpoints").exists()
    argv = ["train", "--device", "cpu", f"train.out_dir={tmp_path}", "train.name=strict", "model=f400",
            "model.time_steps=2", "rule=ide", "rule.strict=true", "rule.max_iter=1", "rule.tol=1e-12",
            "data.train_limit=32", "data.batch_size=16", "train.epochs=1", "train.progress=false"]
    assert main(argv) == EXIT_CODES["solver"] == 6
    line = _one_line(capsys)
    assert "did not converge" in line and "best iterate is used" not in line
    assert main(_cli(tmp_path, "mismatch", "rule=bptt")) == EXIT_CODES["protocol"] == 7
    assert "needs a" in _one_line(capsys)


def test_ctrl_c_says_where_the_checkpoint_is_and_how_to_resume(tmp_path, capsys, monkeypatch):
    real = Trainer.train_epoch

    def interrupted(self):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    assert main(_cli(tmp_path, "ctrlc")) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "interrupted" in err and "epoch_0001" in err and f"--resume {tmp_path / 'ctrlc'}" in err


# -- 4, 5. resume ----------------------------------------------------------------------------------

def test_resume_refuses_changed_keys_and_keeps_the_record(tmp_path, capsys):
    assert main(_cli(tmp_path, "r", "train.epochs=1")) == 0
    capsys.readouterr()
    run = tmp_path / "r"
    before = (run / "config.yaml").read_text()
    assert main(["train", "--resume", str(run), "optim.lr=0.5"]) == 2
    line = _one_line(capsys)
    assert "optim.lr (0.05 -> 0.5)" in line
    assert (run / "config.yaml").read_text() == before
    # an allowed change (train.epochs under a constant schedule) is applied and recorded
    assert main(["train", "--resume", str(run), "train.epochs=2", "--device", "cpu"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    rec = [json.loads(l) for l in (run / "resumes.jsonl").read_text().splitlines()]
    assert rec[-1]["changed"] == {"train.epochs": [1, 2]} and rec[-1]["epoch"] == 1
    assert [json.loads(l)["epoch"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_resume_refuses_epochs_change_under_cosine(tmp_path):
    t = Trainer(_cfg(tmp_path, name="cos", epochs=1), log=_quiet)
    t.config.schedule.name = "cosine"
    t.fit()
    raw = _raw(tmp_path, "cos", epochs=3)
    raw["schedule"] = {"name": "cosine"}
    with pytest.raises(ConfigError, match="train.epochs .*cosine"):
        Trainer(RunConfig.from_dict(raw), resume=True, log=_quiet)


def test_resume_without_value_takes_the_newest_run_and_overrides_parse(tmp_path, capsys):
    assert main(_cli(tmp_path, "n", "train.epochs=1")) == 0
    assert main(_cli(tmp_path, "n", "train.epochs=1", "train.seed=5")) == 0  # -> n-1
    assert (tmp_path / "n-1" / "checkpoints" / "latest").is_file()
    capsys.readouterr()
    # '--resume train.epochs=2' is '--resume' plus an override; overrides may follow option flags
    rc = main(["train", "--resume", "train.epochs=2", "--device", "cpu", f"train.out_dir={tmp_path}",
               "train.name=n"])
    assert rc == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert f"resuming {tmp_path / 'n-1'}" in err
    assert (tmp_path / "n-1" / "resumes.jsonl").is_file() and not (tmp_path / "n" / "resumes.jsonl").exists()
    assert yaml.safe_load((tmp_path / "n-1" / "config.yaml").read_text())["train"]["seed"] == 5


# -- 6. epochs, leftovers, corrupt latest -----------------------------------------------------------

@pytest.mark.parametrize("override,key", [("train.epochs=0", "train.epochs"), ("train.epochs=-2", "train.epochs"),
                                          ("optim.lr=-0.1", "optim.lr"), ("data.batch_size=0", "data.batch_size"),
                                          ("train.check_every=-1", "train.check_every")])
def test_out_of_range_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, [override])


def _dead_pid():
    pid = 999_999
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            pass
        pid -= 1


def test_leftover_tmp_folders_are_removed_on_resume(tmp_path):
    t = Trainer(_cfg(tmp_path, name="tmp", epochs=1), log=_quiet)
    t.fit()
    ck = t.run_dir / "checkpoints"
    pid = _dead_pid()
    (ck / f"epoch_0002.tmp-{pid}").mkdir()
    (ck / f"epoch_0002.tmp-{pid}" / "model.safetensors").write_bytes(b"partial")
    (ck / f"latest.tmp-{pid}").write_text("epoch_0002\n")
    Trainer(_cfg(tmp_path, name="tmp", epochs=2), resume=t.run_dir, log=_quiet)
    assert not list(ck.glob("*.tmp-*"))


def test_corrupt_latest_names_the_earlier_good_checkpoint(trained):
    f = trained / "checkpoints" / "epoch_0002" / "state.pt"
    f.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"newest intact checkpoint is .*epoch_0001: resume from it"):
        Trainer(_cfg(trained.parent, name="done", epochs=3), resume=trained, log=_quiet)
    # and resuming from the named one works
    Trainer(_cfg(trained.parent, name="done", epochs=3), resume=trained / "checkpoints" / "epoch_0001", log=_quiet)


# -- 7. messages -------------------------------------------------------------------------------------

def _float_idx(path, x):
    x = np.asarray(x, dtype=">f4")
    path.write_bytes(bytes([0, 0, 0x0D, x.ndim]) + np.asarray(x.shape, dtype=">u4").tobytes() + x.tobytes())


def test_float_idx_is_called_float_not_truncated(tmp_path):
    d = tmp_path / "MNIST" / "raw"
    d.mkdir(parents=True)
    _float_idx(d / "train-images-idx3-ubyte", np.random.rand(4, 28, 28))
    write_idx(d / "train-labels-idx1-ubyte", np.arange(4))
    write_idx(d / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)))
    write_idx(d / "t10k-labels-idx1-ubyte", np.arange(2))
    with pytest.raises(DataError, match="float32") as e:
        create_dataset("mnist", data_dir=str(tmp_path))
    assert "truncated" not in str(e.value)
    _float_idx(tmp_path / "f.gz", np.random.rand(2, 3))  # an uncompressed float IDX named .gz
    assert read_idx(tmp_path / "f.gz").dtype == np.float32


def test_strict_solver_error_does_not_say_the_best_iterate_is_used():
    A = torch.randn(5, 5)
    A = 1.5 * A / torch.linalg.matrix_norm(A, 2)  # not a contraction
    with pytest.raises(SolverError) as e:
        solve(lambda x: x @ A.T + 1, torch.zeros(2, 5), solver="fixed_point", max_iter=3, strict=True)
    assert "best iterate" not in str(e.value)


def test_ide_reports_the_epochs_count_of_unconverged_solves():
    torch.manual_seed(0)
    rule = bioprop.create_rule("ide", max_iter=1, tol=1e-12)
    model = rule.prepare(bioprop.create_model("f400", time_steps=2))
    x = torch.rand(4, 1, 28, 28)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(3):
            rule.step(model, x, torch.arange(4), F.cross_entropy)
    assert len(w) == 1 and "warned again every rule.warn_every" in str(w[0].message)
    assert rule.epoch_summary().startswith("ide: 3 of 3 adjoint solves this epoch")
    assert rule.epoch_summary() is None  # reset for the next epoch


def test_missing_data_dir_is_reported(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(_cli(tmp_path, "dd", "--data-dir", str(missing))) == EXIT_CODES["data"] == 3
    assert f"--data-dir {missing}: no such directory" in _one_line(capsys)
    with pytest.raises(DataError, match="does not exist"):
        create_dataset("mnist", data_dir=str(missing))


# -- 8. checkpoints are plain data ------------------------------------------------------------------

class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["BIOPROP_TEST_MARK"]),))


def test_checkpoint_with_a_pickled_object_is_refused(trained, monkeypatch):
    mark = trained / "ran-code"
    monkeypatch.setenv("BIOPROP_TEST_MARK", str(mark))
    f = trained / "checkpoints" / "epoch_0002" / "state.pt"
    state = torch.load(f, weights_only=True)  # what bioprop writes loads as plain data
    state["rule"]["extra"] = _Payload()
    torch.save(state, f)
    with pytest.raises(CheckpointError, match="refused: it holds pickled Python objects"):
        load_checkpoint(f.parent)
    assert not mark.exists()


def test_checkpoint_of_earlier_versions_with_numpy_rng_still_loads(trained):
    f = trained / "checkpoints" / "epoch_0002" / "state.pt"
    state = torch.load(f, weights_only=True)
    state["rng"]["numpy"] = np.random.get_state()  # as bioprop <= 0.1.0 stored it
    torch.save(state, f)
    if not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        pytest.skip("needs torch >= 2.5")
    assert load_checkpoint(f.parent)["epoch"] == 2


def test_cifar_batch_naming_a_foreign_global_is_refused_without_running_it(tmp_path, monkeypatch):
    import pickle

    from bioprop.data import read_cifar

    mark = tmp_path / "ran-code"
    monkeypatch.setenv("BIOPROP_TEST_MARK", str(mark))
    f = tmp_path / "data_batch_1"
    f.write_bytes(pickle.dumps({"data": _Payload(), "labels": [0]}))
    with pytest.raises(DataError, match="refused global"):
        read_cifar(f)
    assert not mark.exists()
    f.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2))
    assert read_cifar(f)[0].shape == (2, 3, 32, 32)


# -- 9. the README's front page works on a fresh machine -------------------------------------------

def test_readme_front_page_commands_need_no_dataset_files_unless_they_say_so():
    readme = (ROOT / "README.md").read_text()
    front = readme[: readme.index("## Methods")]
    lines = [l for l in front.splitlines() if re.search(r"\bbioprop train\b|Trainer\(", l)]
    assert lines
    for line in lines:
        if "--data-dir" in line or "needs" in line or "--resume" in line:
            continue
        if "load_config(" in line:
            m = re.search(r'load_config\("([^"]+)"', line)
            over = re.findall(r'"([a-z_.]+=[^"]+)"', line)
        else:
            args = line.split("bioprop train", 1)[1].split("#")[0].strip(" `").split()
            m = re.search(r"--config (\S+)", " ".join(args))
            over = [a for a in args if "=" in a and not a.startswith("-")]
        cfg = load_config(ROOT / m.group(1) if m else None, over)
        assert cfg.data["name"] == "mnist_embedded", f"needs dataset files: {line.strip()}"


# -- 10. property-based: every input is a valid result or one of our named errors ------------------

hyp = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_settings = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_keys = st.sampled_from(["train.epochs", "train.seed", "optim.lr", "optim.betas", "data.batch_size", "train",
                         "model", "rule", "data.train_limit", "train.amp", "schedule.milestones", "x.y.z",
                         "model.hidden", "optim", "train.grad_clip", "rule.solver"])
_values = st.one_of(st.text(max_size=12), st.integers(-5, 5).map(str), st.floats(allow_nan=True).map(str),
                    st.sampled_from(["[1, 2]", "{a: 1}", "null", "true", "[", "1e-3", "-1", "bp", "ide", "mlp",
                                     "nan", "inf", "'x'", ": :", "[0.9, 2]"]))


@_settings
@given(st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", _keys, _values), st.text(max_size=20)), max_size=4))
def test_property_overrides_give_a_config_or_a_config_error(overrides):
    try:
        cfg = load_config(None, overrides)
    except ConfigError:
        return
    assert cfg.train.epochs >= 1 and cfg.optim.lr >= 0 and cfg.data.get("batch_size", 1) >= 1


@_settings
@given(st.dictionaries(st.sampled_from(["epochs", "seed", "device", "amp", "grad_clip", "max_steps_per_epoch",
                                        "label_smoothing", "check_every", "bogus"]),
                       st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True),
                                 st.text(max_size=5), st.lists(st.integers(), max_size=2)), max_size=4))
def test_property_typed_configs_give_a_config_or_a_config_error(d):
    from bioprop.config import from_dict
    from bioprop.train import TrainConfig

    try:
        from_dict(TrainConfig, d)
    except ConfigError:
        pass


def _idx_bytes(dtype_byte, shape, payload):
    return bytes([0, 0, dtype_byte, len(shape)]) + np.asarray(shape, dtype=">u4").tobytes() + payload


@_settings
@given(st.one_of(
    st.binary(max_size=64),
    st.builds(_idx_bytes, st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]),
              st.lists(st.integers(0, 6), min_size=0, max_size=3), st.binary(max_size=80))),
    st.integers(0, 200), st.booleans(), st.booleans())
def test_property_idx_reader_gives_an_array_or_a_data_error(tmp_path_factory, data, cut, gz, want_uint8):
    import gzip

    d = tmp_path_factory.mktemp("idx")
    raw = gzip.compress(data, mtime=0)[:cut] if gz else data
    f = d / ("x.gz" if gz else "x")
    f.write_bytes(raw)
    try:
        a = read_idx(f, expect_uint8=want_uint8)
    except DataError as e:
        assert str(e).startswith(str(f))
        return
    assert isinstance(a, np.ndarray)


@_settings
@given(st.binary(max_size=200), st.integers(0, 300))
def test_property_cifar_reader_gives_arrays_or_a_data_error(tmp_path_factory, data, cut):
    import pickle

    from bioprop.data import read_cifar

    d = tmp_path_factory.mktemp("cifar")
    good = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})
    f = d / "batch"
    f.write_bytes(good[:cut] + data if data[:1] == b"\x80" else good[:cut])
    try:
        x, y = read_cifar(f)
    except DataError:
        return
    assert x.shape[1:] == (3, 32, 32) and len(x) == len(y)


# -- 11. metadata --------------------------------------------------------------------------------------

def test_minimum_torch_and_one_version_source():
    import importlib.metadata

    text = (ROOT / "pyproject.toml").read_text()
    assert '"torch>=2.3"' in text  # torch.amp.GradScaler(device), used by train.amp=fp16
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^version\s*=', project, re.M) is None and 'dynamic = ["version"]' in project
    assert 'attr = "bioprop._version.__version__"' in text
    assert importlib.metadata.version("bioprop") == bioprop.__version__
    readme = (ROOT / "README.md").read_text()
    assert "torch >= 2.1" not in readme and "torch >= 2.3" in readme


def test_monitor_reads_a_cpu_scalar_when_watched_not_when_checked():
    """A CPU scalar (the loss) is flagged by its value at watch time: a buffer reused and
    overwritten later neither hides nor invents a NaN; flags keep their order with tensor flags."""
    m = FiniteMonitor()
    buf = torch.tensor(float("nan"))
    m.where = "step 1"
    m.watch("the loss", buf)
    buf.fill_(1.0)  # the rule reuses its buffer
    m.where = "step 2"
    m.watch("the loss", buf)
    m.watch_tensors("the gradient of", [("w", torch.ones(3))])
    with pytest.raises(NonFiniteError, match="the loss at step 1"):
        m.check()
    m.where = "step 3"
    m.watch_tensors("the gradient of", [("w", torch.tensor([1.0, float("inf")]))])
    m.watch("the loss", torch.tensor(float("inf")))
    with pytest.raises(NonFiniteError, match="gradient of 'w' at step 3"):
        m.check()
    m.watch("the loss", buf)
    m.check()  # finite: no error, flags cleared
    assert len(m) == 0
