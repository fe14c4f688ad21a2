"""Trainer, checkpoints, resume and the CLI on a small slice of the embedded data."""

import json

import pytest
import torch

import bioprop.train.trainer as trainer_mod
from bioprop.cli import main
from bioprop.train import CheckpointError, RunConfig, Trainer, load_checkpoint, load_weights, save_checkpoint


def _config(tmp_path, **train):
    return RunConfig.from_dict({
        "model": {"name": "mlp", "hidden": [32, 16], "dropout": 0.2},
        "rule": {"name": "bp"},
        "data": {"name": "mnist_embedded", "train_limit": 384, "batch_size": 64, "val_fraction": 0.25},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_steps": 3},
        "train": {"epochs": 3, "seed": 7, "device": "cpu", "out_dir": str(tmp_path), "progress": False,
                  "grad_clip": 5.0, **train},
    })


def _quiet(*a, **k):
    pass


def test_resume_after_kill_is_bit_identical(tmp_path, monkeypatch):
    full = Trainer(_config(tmp_path / "a", name="full"), log=_quiet)
    full.fit()

    real_save = trainer_mod.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save_then_die)
    killed = Trainer(_config(tmp_path / "b", name="run"), log=_quiet)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    monkeypatch.setattr(trainer_mod, "save_checkpoint", real_save)
    assert killed.epoch == 1

    resumed = Trainer(_config(tmp_path / "b", name="run"), resume=True, log=_quiet)
    assert resumed.epoch == 1 and resumed.run_dir == killed.run_dir
    resumed.fit()
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k
    strip = lambda h: [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in h]  # noqa: E731
    assert strip(full.history) == strip(resumed.history)
    lines = (resumed.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3]


def test_checkpoint_loads_back_bit_identical(tmp_path):
    t = Trainer(_config(tmp_path, epochs=1), log=_quiet)
    t.fit()
    ckpt = save_checkpoint(tmp_path / "ck", 5, t.model, t._state())
    assert (tmp_path / "ck" / "latest").read_text().strip() == "epoch_0005"
    fresh = Trainer(_config(tmp_path, epochs=1), log=_quiet)
    state = load_checkpoint(ckpt, fresh.model)
    for (k, a), (_, b) in zip(t.model.state_dict().items(), fresh.model.state_dict().items()):
        assert torch.equal(a, b) and a.dtype == b.dtype, k
    assert state["epoch"] == 1 and state["config"] == t.config.to_dict()
    # no temporary files are left behind
    assert not [p for p in (tmp_path / "ck").iterdir() if "tmp" in p.name]


def test_corrupt_checkpoint_is_reported(tmp_path):
    t = Trainer(_config(tmp_path, epochs=1), log=_quiet)
    ckpt = save_checkpoint(tmp_path / "ck", 1, t.model, t._state())
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_weights(t.model, ckpt)


def test_resume_without_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(_config(tmp_path, name="nothing"), resume=True, log=_quiet)


def test_cli_train_eval_list(tmp_path, capsys):
    rc = main(["train", "--device", "cpu", f"train.out_dir={tmp_path}", "train.name=cli", "train.epochs=1",
               "data.train_limit=256", "model=mlp", "model.hidden=[32]", "rule=bp", "optim.name=adam",
               "optim.lr=1e-3"])
    assert rc == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["epoch"] == 1 and 0.0 <= summary["test_acc"] <= 1.0
    assert main(["eval", str(tmp_path / "cli"), "--device", "cpu"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(ev["acc"] - summary["test_acc"]) < 1e-12
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    for name in ("mlp", "spiking_convnet", "bp", "bptt", "mnist_embedded", "cifar10"):
        assert name in listing


def test_cli_rejects_unknown_key(capsys):
    assert main(["train", "train.epoch=1"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


def test_bf16_autocast_and_validation_split(tmp_path):
    t = Trainer(_config(tmp_path, epochs=1, amp="bf16"), log=_quiet)
    row = t.fit()
    assert 0 <= row["test_acc"] <= 1 and "val_acc" in row
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # parameters stay fp32
