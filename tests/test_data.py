"""Data readers round-trip the standard formats; bad files raise DataError naming the file."""

import gzip
import importlib.util
import pickle

import numpy as np
import pytest
import torch

from bioprop.config import ConfigError
import bioprop.data.datasets as datasets_mod
from bioprop.data import (DataError, TensorLoader, augment_batch, create_dataset, epoch_generator, read_cifar,
                          read_idx, write_idx)

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
def test_mnist_round_trip(tmp_path, gz, layout, monkeypatch):
    monkeypatch.delenv("BIOPROP_DATA", raising=False)
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


def test_read_idx_gzip_by_content(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "x.gz").write_bytes(_idx_bytes_by_hand(a))  # a .gz already decompressed (browsers do this)
    (tmp_path / "y").write_bytes(gzip.compress(_idx_bytes_by_hand(a)))  # gzip content, plain name
    assert np.array_equal(read_idx(tmp_path / "x.gz"), a) and np.array_equal(read_idx(tmp_path / "y"), a)


@pytest.mark.parametrize("layout", ["fashion-mnist", "fashion_mnist", "FashionMNIST/raw"])
def test_fashion_mnist_from_env(tmp_path, monkeypatch, layout):
    arrays = _write_mnist(tmp_path / layout, seed=3)
    monkeypatch.setenv("BIOPROP_DATA", str(tmp_path))
    ds = create_dataset("fashion_mnist")
    assert torch.equal(ds.test_y, torch.from_numpy(arrays[3]).long())
    assert ds.mean == (0.2860,) and ds.std == (0.3530,) and ds.name == "fashion_mnist"


def test_env_after_data_dir(tmp_path, monkeypatch):
    a = _write_mnist(tmp_path / "a", seed=1)
    b = _write_mnist(tmp_path / "b", seed=2)
    monkeypatch.setenv("BIOPROP_DATA", str(tmp_path / "b"))
    assert torch.equal(create_dataset("mnist").train_y, torch.from_numpy(b[1]).long())
    assert torch.equal(create_dataset("mnist", data_dir=str(tmp_path / "a")).train_y, torch.from_numpy(a[1]).long())
    # data_dir without the files: falls through to $BIOPROP_DATA
    assert torch.equal(create_dataset("mnist", data_dir=str(tmp_path)).train_y, torch.from_numpy(b[1]).long())


def test_fashion_mnist_debian_path(tmp_path, monkeypatch):
    monkeypatch.delenv("BIOPROP_DATA", raising=False)
    arrays = _write_mnist(tmp_path / "debian", seed=4)
    monkeypatch.setattr(datasets_mod, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    ds = create_dataset("fashion_mnist")  # found with no configuration
    assert torch.equal(ds.train_x[:, 0], torch.from_numpy(arrays[0]))
    with pytest.raises(DataError, match="mnist: files"):  # MNIST does not look there
        create_dataset("mnist")


def test_corrupt_idx_files(tmp_path):
    _write_mnist(tmp_path, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    data = f.read_bytes()
    f.write_bytes(data[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: truncated IDX file.*23520 bytes"):
        create_dataset("mnist", data_dir=str(tmp_path))
    f.write_bytes(b"\x12\x34" + data[2:])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: not an IDX file.*00000803"):
        create_dataset("mnist", data_dir=str(tmp_path))
    f.write_bytes(data[:10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: truncated IDX header"):
        create_dataset("mnist", data_dir=str(tmp_path))
    f.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: not a valid gzip file"):
        create_dataset("mnist", data_dir=str(tmp_path))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(data)[:-500])  # cut-off gzip stream
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
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: 30 images but 29 labels"):
        create_dataset("mnist", data_dir=str(tmp_path))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(30, 10, np.uint8))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: labels outside 0..9"):
        create_dataset("mnist", data_dir=str(tmp_path))


def test_missing_dataset_names_search_dirs(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("BIOPROP_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as e:
        create_dataset("cifar10", data_dir=str(tmp_path))
    msg = str(e.value)
    for part in ("cifar10: files data_batch_1", "test_batch", str(tmp_path / "cifar-10-batches-py"),
                 str(tmp_path / "env"), "--data-dir", "BIOPROP_DATA", "download"):
        assert part in msg, (part, msg)
    assert isinstance(e.value, ValueError)
    monkeypatch.delenv("BIOPROP_DATA")
    with pytest.raises(DataError, match=r"mnist: files .*looked in nowhere"):
        create_dataset("mnist")


def test_download_needs_a_directory_and_torchvision(tmp_path, monkeypatch):
    monkeypatch.delenv("BIOPROP_DATA", raising=False)
    with pytest.raises(DataError, match="download=true needs a directory"):
        create_dataset("mnist", download=True)
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed (and there is no network here)")
    with pytest.raises(DataError, match=r"install torchvision .*or place the files in"):
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
def test_cifar10_round_trip(tmp_path, keys_bytes, monkeypatch):
    monkeypatch.delenv("BIOPROP_DATA", raising=False)
    written = _write_cifar(tmp_path / "cifar-10-batches-py", keys_bytes=keys_bytes)
    ds = create_dataset("cifar10", data_dir=str(tmp_path))
    assert ds.train_x.shape == (35, 3, 32, 32) and ds.test_x.shape == (7, 3, 32, 32)
    data, labels = written["data_batch_2"]
    # channel-major rows: pixel (c, i, j) of image k is data[k, c*1024 + i*32 + j]
    assert int(ds.train_x[7 + 3, 2, 5, 9]) == int(data[3, 2 * 1024 + 5 * 32 + 9])
    assert ds.train_y[7:14].tolist() == labels
    assert ds.crop_padding == 4 and ds.flip  # CIFAR's standard augmentation
    assert ds.in_shape == (3, 32, 32) and ds.num_classes == 10 and ds.mean == (0.4914, 0.4822, 0.4465)
    x, y = read_cifar(tmp_path / "cifar-10-batches-py" / "test_batch")
    assert x.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(x.reshape(7, -1), written["test_batch"][0])


@pytest.mark.parametrize("keys_bytes", [False, True])
def test_cifar100_round_trip(tmp_path, keys_bytes):
    written = _write_cifar(tmp_path / "cifar-100-python", hundred=True, keys_bytes=keys_bytes)
    ds = create_dataset("cifar100", data_dir=str(tmp_path), augment=False)
    assert ds.num_classes == 100 and ds.test_y.tolist() == written["test"][1]
    assert ds.train_y.tolist() == written["train"][1]
    assert np.array_equal(ds.train_x.numpy().reshape(7, -1), written["train"][0])
    assert ds.crop_padding == 0 and not ds.flip and ds.std == (0.2673, 0.2564, 0.2762)
    # overrides of the standard augmentation
    ds = create_dataset("cifar100", data_dir=str(tmp_path), flip=False)
    assert ds.crop_padding == 4 and not ds.flip


def test_corrupt_cifar(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    f = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(DataError, match="data_batch_3: cannot be unpickled"):
        create_dataset("cifar10", data_dir=str(tmp_path))
    with open(f, "wb") as fh:
        pickle.dump({"labels": [1]}, fh)
    with pytest.raises(DataError, match="data_batch_3: CIFAR batch without 'data'"):
        create_dataset("cifar10", data_dir=str(tmp_path))
    with open(f, "wb") as fh:
        pickle.dump([1, 2, 3], fh)
    with pytest.raises(DataError, match="data_batch_3: expected a pickled dict"):
        read_cifar(f)
    with open(f, "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(DataError, match=r"data_batch_3: 'data' has shape \(2, 1024\), expected \(N, 3072\)"):
        read_cifar(f)
    with open(f, "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, fh)
    with pytest.raises(DataError, match="data_batch_3: 2 images but 1 labels"):
        read_cifar(f)
    with pytest.raises(DataError, match="data_batch_3: CIFAR batch without 'data' and 'fine_labels'"):
        read_cifar(f, "fine_labels")  # a CIFAR-10 batch read as CIFAR-100


def test_unknown_config_key():
    with pytest.raises(ConfigError, match="'batchsize'.*did you mean 'batch_size'"):
        create_dataset("mnist_embedded", batchsize=3)
    with pytest.raises(ConfigError, match="'name'"):  # the registry key, not a field
        create_dataset("mnist_embedded", name="mnist")
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'"):
        create_dataset("cifar")


def test_mnist_augmentation_options(tmp_path):
    _write_mnist(tmp_path)
    ds = create_dataset("mnist", data_dir=str(tmp_path))
    assert ds.crop_padding == 0 and not ds.flip  # none by default
    with pytest.raises(ConfigError, match="no standard augmentation"):
        create_dataset("mnist", data_dir=str(tmp_path), augment=True)
    ds = create_dataset("mnist", data_dir=str(tmp_path), crop_padding=2)
    assert ds.crop_padding == 2 and not ds.flip


def test_embedded_dataset(tmp_path):
    ds = create_dataset("mnist_embedded")
    assert len(ds.train_y) == 20000 and len(ds.test_y) == 2000
    assert set(ds.train_y.tolist()) == set(range(10)) and set(ds.test_y.tolist()) == set(range(10))
    assert ds.train_x.dtype == torch.uint8 and ds.train_x.shape[1:] == (1, 28, 28)
    assert ds.train_y.dtype == torch.int64 and ds.in_shape == (1, 28, 28) and ds.mean == (0.1307,)
    assert ds.describe() == "mnist_embedded: 20000 train / 2000 test, 1x28x28, 10 classes"
    assert 20 < ds.train_x.float().mean() < 45  # real digits, not noise: MNIST's mean is 0.1307 * 255 = 33
    # the shipped files are the standard format, read by the same reader
    f = datasets_mod.EMBEDDED_DIR / "t10k-labels-idx1-ubyte.gz"
    assert torch.equal(torch.from_numpy(read_idx(f, expect_ndim=1)).long(), ds.test_y)
    # needs no data directory: a global --data-dir does not disturb it
    assert torch.equal(create_dataset("mnist_embedded", data_dir=str(tmp_path)).test_y, ds.test_y)


def test_val_split_and_limit():
    ds = create_dataset("mnist_embedded", train_limit=1000, val_fraction=0.1, split_seed=3)
    assert len(ds.train_y) == 900 and len(ds.val_y) == 100 and len(ds.test_y) == 2000
    assert "900 train / 100 val / 2000 test" in ds.describe()
    again = create_dataset("mnist_embedded", train_limit=1000, val_fraction=0.1, split_seed=3)
    other = create_dataset("mnist_embedded", train_limit=1000, val_fraction=0.1, split_seed=4)
    assert torch.equal(again.val_x, ds.val_x) and not torch.equal(other.val_x, ds.val_x)
    vx, _ = next(iter(ds.loader("val", "cpu", batch_size=100)))  # eval order: file order, no shuffle
    torch.testing.assert_close(vx, (ds.val_x.float() / 255 - 0.1307) / 0.3081)
    with pytest.raises(ValueError, match="no validation split"):
        create_dataset("mnist_embedded", train_limit=100).loader("val", "cpu")
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
    # the device copy is made once and shared by later loaders
    assert ds.loader("train", "cpu", epoch=5).images is ds.loader("train", "cpu", epoch=6).images
    # an explicit generator, and drop_last
    g = epoch_generator(1, 2, "cpu")
    assert all(torch.equal(u, v) for u, v in zip(a, [y for _, y in ds.loader("train", "cpu", generator=g)]))
    dl = ds.loader("train", "cpu", drop_last=True)
    assert len(dl) == 7 and [len(y) for _, y in dl] == [64] * 7


def test_tensor_loader_augmented_epoch_covers_every_sample():
    n = 103
    imgs = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    labels = torch.arange(n)
    g = torch.Generator().manual_seed(0)
    loader = TensorLoader(imgs, labels, 10, (0.0,), (1.0,), shuffle=True, padding=1, flip=True, generator=g,
                          normalize=False)
    assert len(loader) == 11
    ys, xs = [], []
    for x, y in loader:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (1, 4, 4)
        ys.append(y)
        xs.append(x)
    ys, xs = torch.cat(ys), torch.cat(xs)
    assert sorted(ys.tolist()) == list(range(n)) and ys.tolist() != list(range(n))
    # each image is its own label's constant (plus zeros from the crop padding), scaled to [0, 1]
    assert torch.allclose(xs.amax(dim=(1, 2, 3)), ys.float() / 255)
    assert (xs == 0).any()  # some crops moved padding in


def test_epoch_generator_is_a_function_of_seed_and_epoch():
    draw = lambda s, e: torch.randperm(50, generator=epoch_generator(s, e)).tolist()  # noqa: E731
    assert draw(0, 0) == draw(0, 0)
    assert len({tuple(draw(s, e)) for s in range(3) for e in range(3)}) == 9


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
    # exactly the samples chosen by the documented draw are flipped
    chosen = torch.rand(16, generator=torch.Generator().manual_seed(1)) < 0.5
    assert mirrored == chosen.tolist()
    assert augment_batch(x, 0, False) is x


def test_augment_batch_matches_per_sample_reference():
    """Crop offsets and flips replayed from the documented draws, one sample at a time."""
    b, p = 32, 4
    x = torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8)
    out = augment_batch(x, padding=p, flip=True, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    oy = torch.randint(0, 2 * p + 1, (b,), generator=g)
    ox = torch.randint(0, 2 * p + 1, (b,), generator=g)
    fl = torch.rand(b, generator=g) < 0.5
    xp = torch.nn.functional.pad(x, (p, p, p, p))
    for i in range(b):
        ref = xp[i, :, oy[i]:oy[i] + 32, ox[i]:ox[i] + 32]
        assert torch.equal(out[i], ref.flip(2) if fl[i] else ref)
    assert out.dtype == torch.uint8 and len(set(zip(oy.tolist(), ox.tolist()))) > 1
