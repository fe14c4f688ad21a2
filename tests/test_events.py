"""N-MNIST event files: round trip, binning, dataset of time-first spike trains, errors."""

import numpy as np
import pytest
import torch

from bioprop import create_dataset, create_model, create_rule
from bioprop.data import DataError
from bioprop.data.events import bin_events, read_nmnist_events, write_nmnist_events


def _events(rng, n=200, t_max=40_000):
    return np.stack([rng.integers(0, 34, n), rng.integers(0, 34, n), rng.integers(0, 2, n),
                     np.sort(rng.integers(0, t_max, n))], axis=1)


def test_event_file_round_trip_and_bit_layout(tmp_path):
    rng = np.random.default_rng(0)
    ev = _events(rng)
    ev[0] = [33, 5, 1, 8_000_000]  # a timestamp using all 23 bits
    write_nmnist_events(tmp_path / "a.bin", ev)
    raw = (tmp_path / "a.bin").read_bytes()
    # event 0 by hand: x, y, then polarity in bit 7 of byte 2 and the 23-bit timestamp
    assert raw[0] == 33 and raw[1] == 5 and raw[2] >> 7 == 1
    assert ((raw[2] & 0x7F) << 16 | raw[3] << 8 | raw[4]) == 8_000_000
    assert np.array_equal(read_nmnist_events(tmp_path / "a.bin"), ev)
    (tmp_path / "b.bin").write_bytes(raw[:-2])
    with pytest.raises(DataError, match="b.bin: truncated"):
        read_nmnist_events(tmp_path / "b.bin")


def test_binning():
    ev = np.array([[1, 2, 0, 0], [1, 2, 0, 999], [3, 4, 1, 1000], [5, 6, 1, 2500], [7, 8, 0, 9000]])
    f = bin_events(ev, time_steps=3, bin_us=1000)
    assert f.shape == (3, 2, 34, 34) and f.dtype == np.uint8
    assert f[0, 0, 2, 1] == 1 and f[1, 1, 4, 3] == 1 and f[2, 1, 6, 5] == 1
    assert f.sum() == 3  # two events in one bin give one spike; the event at 9 ms is past T
    g = bin_events(ev, time_steps=2, bin_us=1000, start_us=1000)
    assert g[0, 1, 4, 3] == 1 and g[1, 1, 6, 5] == 1 and g.sum() == 2


def _write_dataset(root, per_class=2):
    rng = np.random.default_rng(1)
    for split in ("Train", "Test"):
        for d in range(10):
            (root / split / str(d)).mkdir(parents=True)
            for i in range(per_class):
                write_nmnist_events(root / split / str(d) / f"{i:05d}.bin", _events(rng, 50, 10_000))


def test_nmnist_dataset_gives_time_first_spike_batches(tmp_path):
    _write_dataset(tmp_path / "N-MNIST")
    ds = create_dataset("nmnist", data_dir=str(tmp_path), time_steps=6, bin_us=1000, batch_size=4)
    assert ds.in_shape == (2, 34, 34) and len(ds.train_y) == 20 and ds.train_x.shape[1] == 6
    x, y = next(iter(ds.loader("test", "cpu")))
    assert x.shape == (6, 20, 2, 34, 34) and set(x.unique().tolist()) <= {0.0, 1.0}
    # the batch equals the frames of the files, in order
    ev = read_nmnist_events(tmp_path / "N-MNIST" / "Test" / "0" / "00000.bin")
    assert torch.equal(x[:, 0], torch.from_numpy(bin_events(ev, 6)).float())
    # a feedback SNN takes the spike input directly (T from the input)
    m = create_model("f64c5", in_shape=[2, 34, 34], channels=4, time_steps=6)
    rule = create_rule("ide")
    m = rule.prepare(m)
    out = rule.step(m, x, y, torch.nn.functional.cross_entropy)
    assert torch.isfinite(out.loss)


def test_nmnist_missing(tmp_path):
    with pytest.raises(DataError, match="no Train/ and Test/"):
        create_dataset("nmnist", data_dir=str(tmp_path))


def test_nmnist_config_runs_one_short_epoch(tmp_path, capsys):
    from pathlib import Path

    from bioprop.cli import main

    _write_dataset(tmp_path / "data")
    cfg = Path(__file__).resolve().parent.parent / "configs" / "ide_f64c5_nmnist_lif.yaml"
    rc = main(["train", "--config", str(cfg), "--device", "cpu", "--data-dir", str(tmp_path / "data"),
               "data.time_steps=5", "model.time_steps=5", "train.epochs=1", f"train.out_dir={tmp_path}"])
    assert rc == 0 and '"test_acc"' in capsys.readouterr().out


def test_overflow_events_are_dropped_and_shift_later_timestamps(tmp_path):
    """The official reader's convention: a y = 240 event is a timestamp-overflow marker, dropped, and
    every event from it on gets 2^13 us added (per marker). The file is written here, byte by byte."""
    from bioprop.data.events import OVERFLOW_US

    raw = np.array([[3, 4, 1, 100],      # ordinary events (x, y, p, t)
                    [5, 6, 0, 8000],
                    [0, 240, 0, 0],      # overflow marker
                    [7, 8, 1, 50],       # -> 50 + 8192
                    [0, 240, 0, 0],      # second marker
                    [9, 10, 0, 60]])     # -> 60 + 2 * 8192
    f = tmp_path / "o.bin"
    write_nmnist_events(f, raw)
    ev = read_nmnist_events(f)
    assert OVERFLOW_US == 8192
    assert ev.tolist() == [[3, 4, 1, 100], [5, 6, 0, 8000], [7, 8, 1, 50 + 8192], [9, 10, 0, 60 + 16384]]
    # binned with 1 ms frames, the shifted events land 8 and 16 frames later
    frames = bin_events(ev, time_steps=20, bin_us=1000)
    assert frames[8, 1, 8, 7] == 1 and frames[16, 0, 10, 9] == 1 and frames[0, 0, 8, 7] == 0


def test_model_time_steps_must_match_the_spike_train(tmp_path):
    """A spike-train input brings its own T; a model.time_steps the model would ignore is refused."""
    from bioprop.config import ConfigError
    from bioprop.train import RunConfig
    from bioprop.train.trainer import build_run

    _write_dataset(tmp_path / "N-MNIST", per_class=1)
    cfg = lambda t: RunConfig.from_dict({  # noqa: E731
        "model": {"name": "f64c5", "in_shape": [2, 34, 34], "channels": 4, "time_steps": t},
        "rule": {"name": "ide"},
        "data": {"name": "nmnist", "data_dir": str(tmp_path), "time_steps": 6},
        "train": {"device": "cpu"}})
    with pytest.raises(ConfigError, match="model.time_steps=6"):
        build_run(cfg(30), torch.device("cpu"))
    _, model, _ = build_run(cfg(6), torch.device("cpu"))
    assert model.time_steps == 6


@pytest.mark.parametrize("key", ["time_steps", "bin_us", "start_us"])
def test_the_binning_keys_are_nmnist_only(key):
    """Every dataset but ``nmnist`` rejects the event-binning keys (they would be accepted and
    ignored otherwise); ``nmnist`` takes them (its error is about the missing files, not the key)."""
    from bioprop.data import DATASETS
    from bioprop.config import ConfigError

    others = [n for n in DATASETS.names() if n != "nmnist"]
    assert {"mnist", "mnist_embedded", "cifar10", "fashion_mnist"} <= set(others)
    for name in others:
        with pytest.raises(ConfigError, match=rf"unknown config key dataset\[{name}\]\.'{key}'"):
            create_dataset(name, **{key: 3})
    with pytest.raises(DataError, match="no Train/ and Test/ folders"):
        create_dataset("nmnist", data_dir="/nonexistent", **{key: 3})
