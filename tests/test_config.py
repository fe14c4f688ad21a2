import pytest

from bioprop.config import ConfigError
from bioprop.train import RunConfig, apply_overrides, load_config
from bioprop.train.config import ScheduleConfig
from bioprop.train.trainer import lr_factor


def test_unknown_train_key_names_valid_keys():
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"train": {"epoch": 3}})
    msg = str(e.value)
    assert "'epoch'" in msg and "did you mean 'epochs'" in msg and "seed" in msg


def test_unknown_model_key_names_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key model\[mlp\]\.'hiden'.*valid keys: .*hidden"):
        RunConfig.from_dict({"model": {"name": "mlp", "hiden": [10]}})


def test_unknown_names():
    with pytest.raises(ConfigError, match="unknown rule 'bpp'.*did you mean 'bp'"):
        RunConfig.from_dict({"rule": {"name": "bpp"}})
    with pytest.raises(ConfigError, match="needs a 'name'"):
        RunConfig.from_dict({"model": {"hidden": [3]}})


def test_wrong_type_is_reported():
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        RunConfig.from_dict({"train": {"epochs": "many"}})


def test_overrides():
    raw = {"rule": {"name": "bptt", "time_steps": 3}, "train": {"epochs": 5}}
    out = apply_overrides(raw, ["rule=bp", "train.epochs=2", "optim.lr=1e-3", "model.hidden=[7, 8]"])
    assert out["rule"] == {"name": "bp"}
    assert out["train"]["epochs"] == 2 and out["optim"]["lr"] == 1e-3 and out["model"]["hidden"] == [7, 8]
    assert raw["train"]["epochs"] == 5  # input untouched
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(raw, ["epochs"])


def test_load_config_file(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("model: {name: mlp, hidden: [16]}\nrule: {name: bp}\ntrain: {epochs: 1}\n")
    cfg = load_config(p, ["train.seed=3"])
    assert cfg.model["hidden"] == [16] and cfg.train.seed == 3 and cfg.train.name == "exp"
    p.write_text("train: {epochs: 1, lr: 0.1}\n")
    with pytest.raises(ConfigError, match="'lr'"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_packaged_default_loads():
    cfg = load_config(None)
    assert cfg.data["name"] == "mnist_embedded"


def test_schedules():
    ms = ScheduleConfig(name="multistep", milestones=[2, 4], gamma=0.1)
    assert lr_factor(ms, 0, 10, 6, 0.1) == 1.0
    assert lr_factor(ms, 19, 10, 6, 0.1) == 1.0
    assert abs(lr_factor(ms, 20, 10, 6, 0.1) - 0.1) < 1e-12
    assert abs(lr_factor(ms, 45, 10, 6, 0.1) - 0.01) < 1e-12
    warm = ScheduleConfig(name="none", warmup_steps=4)
    assert [lr_factor(warm, s, 10, 1, 0.1) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cos = ScheduleConfig(name="cosine", min_lr=0.01)
    assert lr_factor(cos, 0, 10, 2, 0.1) == 1.0
    assert abs(lr_factor(cos, 20, 10, 2, 0.1) - 0.1) < 1e-12
    assert abs(lr_factor(cos, 10, 10, 2, 0.1) - 0.55) < 1e-12
