"""Data readers round-trip the standard formats; bad files raise DataError naming the file."""

import gzip
import pickle

import numpy as np
import pytest
import torch

from bioprop.config import ConfigError
from bioprop.data import DataError, augment_batch, create_dataset, read_cifar_batch, read_idx, write_idx

IDX = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _write_mnist(d, n_train=30, n_test=10, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train),
              rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test)]
    d.mkdir(parents=True, exist_ok=True)
    for name, a in zip(IDX, arrays):
        write_idx(d / (name + (".gz" if gz else "")), a.astype(np.uint8))
    return [a.astype(np.uint8) for a in arrays]


def _idx_bytes_by_hand(a):
    """IDX written independently of write_idx: magic, big-endian dims, data."""
    head = bytes([0, 0, 8, a.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in a.shape)
    return head + a.astype(np.uint8).tobytes()


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["", "mnist", "MNIST/raw"])
def test_mnist_round_trip(tmp_path, gz, layout):
    arrays = _write_mnist(tmp_path / layout if layout else tmp_path, gz=gz)
    ds = create_dataset("mnist", data_dir=str(tmp_path))
    assert torch.equal(ds.train_x[:, 0], torch.from_numpy(arrays[0]))
    assert torch.equal(ds.train_y, torch.from_numpy(arrays[1]).long())
    assert torch.equal(ds.test_x[:, 0], torch.from_numpy(arrays[2]))
    assert ds.in_shape == (1, 28, 28) and ds.num_classes == 10


def test_read_idx_matches_hand_written_file(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "x-idx3-ubyte").write_bytes(_idx_bytes_by_hand(a))
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as f:
        f.write(_idx_bytes_by_hand(a))
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte"), a)
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), a)
    write_idx(tmp_path / "y.gz", a)
    assert gzip.decompress((tmp_path / "y.gz").read_bytes()) == _idx_bytes_by_hand(a)


def test_fashion_mnist_from_env(tmp_path, monkeypatch):
    arrays = _write_mnist(tmp_path / "fashion-mnist", seed=3)
    monkeypatch.setenv("BIOPROP_DATA", str(tmp_path))
    ds = create_dataset("fashion_mnist")
    assert torch.equal(ds.test_y, torch.from_numpy(arrays[3]).long())
    assert ds.mean == (0.2860,)


def test_corrupt_idx_files(tmp_path):
    _write_mnist(tmp_path, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    data = f.read_bytes()
    f.write_bytes(data[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated IDX file.*23520 bytes"):
        create_dataset("mnist", data_dir=str(tmp_path))
    f.write_bytes(b"\x12\x34" + data[2:])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: not an IDX file"):
        create_dataset("mnist", data_dir=str(tmp_path))
    f.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: not a valid gzip file"):
        create_dataset("mnist", data_dir=str(tmp_path))
    # labels and images swapped: wrong number of dimensions
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros(30, np.uint8))
    with pytest.raises(DataError, match="expected images"):
        create_dataset("mnist", data_dir=str(tmp_path))


def test_count_mismatch(tmp_path):
    _write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    with pytest.raises(DataError, match="30 images but 29 labels"):
        create_dataset("mnist", data_dir=str(tmp_path))


def test_missing_dataset_names_search_dirs(tmp_path, monkeypatch):
    monkeypatch.delenv("BIOPROP_DATA", raising=False)
    with pytest.raises(DataError, match=rf"mnist: files .* not found; looked in {tmp_path}.*--data-dir"):
        create_dataset("mnist", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="torchvision"):
        try:
            import torchvision  # noqa: F401
            pytest.skip("torchvision installed")
        except ImportError:
            create_dataset("mnist", data_dir=str(tmp_path), download=True)


def _write_cifar(d, n_per_batch=7, keys_bytes=False, hundred=False):
    rng = np.random.default_rng(1)
    d.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    out = {}
    for name in names + (["test"] if hundred else ["test_batch"]):
        data = rng.integers(0, 256, (n_per_batch, 3072)).astype(np.uint8)
        labels = rng.integers(0, 100 if hundred else 10, n_per_batch).tolist()
        batch = {"data": data, label_key: labels, "batch_label": "x"}
        if keys_bytes:
            batch = {k.encode(): v for k, v in batch.items()}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        out[name] = (data, labels)
    return out


@pytest.mark.parametrize("keys_bytes", [False, True])
def test_cifar10_round_trip(tmp_path, keys_bytes):
    written = _write_cifar(tmp_path / "cifar-10-batches-py", keys_bytes=keys_bytes)
    ds = create_dataset("cifar10", data_dir=str(tmp_path))
    assert ds.train_x.shape == (35, 3, 32, 32) and ds.test_x.shape == (7, 3, 32, 32)
    data, labels = written["data_batch_2"]
    # channel-major rows: pixel (c, i, j) of image k is data[k, c*1024 + i*32 + j]
    assert int(ds.train_x[7 + 3, 2, 5, 9]) == int(data[3, 2 * 1024 + 5 * 32 + 9])
    assert ds.train_y[7:14].tolist() == labels
    assert ds.crop_padding == 4 and ds.flip  # CIFAR's standard augmentation


def test_cifar100_round_trip(tmp_path):
    written = _write_cifar(tmp_path / "cifar-100-python", hundred=True, keys_bytes=True)
    ds = create_dataset("cifar100", data_dir=str(tmp_path), augment=False)
    assert ds.num_classes == 100 and ds.test_y.tolist() == written["test"][1]
    assert ds.crop_padding == 0 and not ds.flip


def test_corrupt_cifar(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    f = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(DataError, match="data_batch_3: cannot be unpickled"):
        create_dataset("cifar10", data_dir=str(tmp_path))
    with open(f, "wb") as fh:
        pickle.dump({"labels": [1]}, fh)
    with pytest.raises(DataError, match="data_batch_3: CIFAR batch without 'data'"):
        read_cifar_batch(f)


def test_unknown_config_key():
    with pytest.raises(ConfigError, match="'batchsize'.*did you mean 'batch_size'"):
        create_dataset("mnist_embedded", batchsize=3)


def test_embedded_dataset():
    ds = create_dataset("mnist_embedded")
    assert len(ds.train_y) == 20000 and len(ds.test_y) == 2000
    assert set(ds.train_y.tolist()) == set(range(10)) and set(ds.test_y.tolist()) == set(range(10))
    assert ds.train_x.dtype == torch.uint8 and ds.train_x.shape[1:] == (1, 28, 28)


def test_val_split_and_limit():
    ds = create_dataset("mnist_embedded", train_limit=1000, val_fraction=0.1, split_seed=3)
    assert len(ds.train_y) == 900 and len(ds.val_y) == 100
    full = create_dataset("mnist_embedded", train_limit=1000)
    rows = {bytes(x.numpy()) for x in full.train_x}
    tr = {bytes(x.numpy()) for x in ds.train_x}
    va = {bytes(x.numpy()) for x in ds.val_x}
    assert tr | va == rows and not (tr & va)


def test_loader_determinism_and_coverage():
    ds = create_dataset("mnist_embedded", train_limit=500, batch_size=64)
    a = [y.clone() for _, y in ds.loader("train", "cpu", seed=1, epoch=2)]
    b = [y.clone() for _, y in ds.loader("train", "cpu", seed=1, epoch=2)]
    c = [y.clone() for _, y in ds.loader("train", "cpu", seed=1, epoch=3)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))
    assert len(a) == len(ds.loader("train", "cpu")) == 8 and a[-1].shape[0] == 500 - 7 * 64
    # every sample exactly once per epoch: the images, not just the labels
    xs = torch.cat([x for x, _ in ds.loader("train", "cpu", seed=1, epoch=0)])
    u8 = ((xs * 0.3081 + 0.1307) * 255).round().to(torch.uint8)  # undo the normalisation
    key = lambda t: sorted(bytes(r.numpy().tobytes()) for r in t.flatten(1))  # noqa: E731
    assert key(u8) == key(ds.train_x)
    x, _ = next(iter(ds.loader("test", "cpu")))
    torch.testing.assert_close(x, (ds.test_x[:1000].float() / 255 - 0.1307) / 0.3081)


def test_augment_batch_crops_and_flips():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 8, 8)
    p = 2
    out = augment_batch(x, padding=p, flip=False, generator=g)
    xp = torch.nn.functional.pad(x, (p, p, p, p))
    for i in range(16):
        crops = [xp[i, :, dy:dy + 8, dx:dx + 8] for dy in range(2 * p + 1) for dx in range(2 * p + 1)]
        assert any(torch.equal(out[i], c) for c in crops)
    flipped = augment_batch(x, padding=0, flip=True, generator=torch.Generator().manual_seed(1))
    same = [torch.equal(flipped[i], x[i]) for i in range(16)]
    mirrored = [torch.equal(flipped[i], x[i].flip(2)) for i in range(16)]
    assert all(s or m for s, m in zip(same, mirrored)) and 0 < sum(mirrored) < 16
