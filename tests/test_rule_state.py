"""Every rule's own state survives a kill and a resume bit-identically (CPU), and diagnostics
(``compare_every``) leave the training trajectory untouched.

The resume test goes through the public :class:`~bioprop.train.Trainer` API only: train, be killed
right after the first epoch's checkpoint, resume, and end with the weights (and history) of an
uninterrupted run. Each case is chosen so that the rule's own state matters: its generator draws
(IDE dropout masks, WM/IA noise, noisy updates for KP/SA/AA) or its step counter (PC's comparison
schedule); with ``rule.load_state_dict`` dropped on resume these cases fail (planted and seen).
``tssl`` and ``bptt`` hold only a generator they do not draw from today: their cases pin the
bit-identical resume of their models (PSP / surrogate path) and will catch state added later.
"""

import pytest
import torch

import bioprop.train.trainer as trainer_mod
from bioprop.train import RunConfig, Trainer

MLP = {"name": "mlp", "in_shape": [1, 28, 28], "hidden": [24, 16], "dropout": 0.2}
SNN = {"name": "spiking_mlp", "hidden": [24], "time_steps": 3, "dropout": 0.2}

CASES = {
    "ide_dropout": ({"name": "f400", "hidden": 24, "time_steps": 3, "dropout": 0.2}, {"name": "ide", "max_iter": 8}),
    "wm_noise": (MLP, {"name": "wm"}),
    "ia_noise": (MLP, {"name": "ia"}),
    "kp": (MLP, {"name": "kp", "noisy_updates": 1e-3}),
    "sa": (MLP, {"name": "sa", "noisy_updates": 1e-3}),
    "aa": (MLP, {"name": "aa", "noisy_updates": 1e-3}),
    "pc": (dict(MLP, dropout=0.0), {"name": "pc", "variant": "fixed_pred", "eta": 0.5, "n": 4, "compare_every": 2}),
    "tssl": ({"name": "tssl_fmnist_mlp", "arch": "24", "time_steps": 5}, {"name": "tssl"}),
    "bptt": (SNN, {"name": "bptt"}),
}


def _config(tmp_path, model, rule, name, epochs=2, limit=96):
    return RunConfig.from_dict({
        "model": model,
        "rule": rule,
        "data": {"name": "mnist_embedded", "train_limit": limit, "batch_size": 32},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "schedule": {"name": "none"},
        "train": {"epochs": epochs, "seed": 3, "device": "cpu", "out_dir": str(tmp_path), "progress": False,
                  "name": name},
    })


def _quiet(*a, **k):
    pass


def _strip(history):
    return [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in history]


@pytest.mark.parametrize("case", list(CASES))
def test_kill_and_resume_is_bit_identical(case, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    model, rule = CASES[case]
    full = Trainer(_config(tmp_path / "a", model, rule, "full"), log=_quiet)
    full.fit()

    real_save = trainer_mod.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save_then_die)
    killed = Trainer(_config(tmp_path / "b", model, rule, "run"), log=_quiet)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    monkeypatch.setattr(trainer_mod, "save_checkpoint", real_save)
    assert killed.epoch == 1

    resumed = Trainer(_config(tmp_path / "b", model, rule, "run"), resume=True, log=_quiet)
    resumed.fit()
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), f"{case}: {k} differs after resume"
    assert _strip(full.history) == _strip(resumed.history)


@pytest.mark.parametrize("rule", [
    {"name": "fa", "compare_every": 1},
    {"name": "pc", "variant": "fixed_pred", "eta": 0.5, "n": 3, "compare_every": 1, "fast": False},
])
def test_compare_every_leaves_training_untouched(rule, tmp_path):
    """A run that compares with BP at every step ends with the weights and BatchNorm statistics of a
    run that never does (the comparison's forward in training mode must neither update BN nor
    consume dropout draws)."""
    torch.set_num_threads(1)
    model = {"name": "mlp", "hidden": [24, 16], "dropout": 0.3, "batch_norm": True}
    plain = Trainer(_config(tmp_path / "a", model, dict(rule, compare_every=0), "plain", epochs=1), log=_quiet)
    plain.fit()
    diag = Trainer(_config(tmp_path / "b", model, rule, "diag", epochs=1), log=_quiet)
    row = diag.fit()
    assert any("angle" in k for k in row), "the comparison did not run"
    for (k, a), (_, b) in zip(plain.model.state_dict().items(), diag.model.state_dict().items()):
        assert torch.equal(a, b), f"{rule['name']}: {k} changed by compare_every"
