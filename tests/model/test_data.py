"""Tests of lana.model.data: synthetic data, deterministic batches and splits, the IDX reader."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from lana.config import DataConfig
from lana.errors import ConfigError
from lana.model.data import Data, load_data, synthetic_dataset


def test_synthetic_dataset_is_deterministic_and_learnable() -> None:
    a, b = synthetic_dataset(64, 16, seed=0), synthetic_dataset(64, 16, seed=0)
    assert all(torch.equal(s, t) for s, t in zip(a.tensors, b.tensors, strict=True))
    c = synthetic_dataset(64, 16, seed=1)
    assert not torch.equal(a.tensors[0], c.tensors[0])
    x, y = a.tensors
    assert x.shape == (64, 1, 16, 16) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) <= {0, 1, 2, 3}
    # classes are the same patterns in every split: nearest class mean from one split
    # classifies another split far above chance
    big = synthetic_dataset(400, 16, seed=2)
    means = torch.stack([big.tensors[0][big.tensors[1] == k].mean(0) for k in range(4)])
    d = ((c.tensors[0][:, None] - means[None]) ** 2).flatten(2).sum(2)
    acc = (d.argmin(1) == c.tensors[1]).float().mean().item()
    assert acc > 0.9
    assert synthetic_dataset(8, 12, num_classes=3, in_chans=3).tensors[0].shape == (8, 3, 12, 12)


def _data(n: int = 50) -> Data:
    return Data(synthetic_dataset(n, 8, seed=0))


def _cat(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_batches_without_shuffle_keep_order() -> None:
    data = _data()
    batches = list(data.batches(16))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    x, y = _cat(batches)
    assert torch.equal(x, data.dataset.tensors[0]) and torch.equal(y, data.dataset.tensors[1])


def test_shuffled_batches_depend_only_on_seed() -> None:
    data = _data()
    a = _cat(data.batches(16, shuffle=True, seed=3))
    b = _cat(data.batches(16, shuffle=True, seed=3))
    c = _cat(data.batches(16, shuffle=True, seed=4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # a permutation: every item exactly once
    assert torch.allclose(a[0].sum(0), data.dataset.tensors[0].sum(0), atol=1e-4)
    assert sorted(a[1].tolist()) == sorted(data.dataset.tensors[1].tolist())
    assert not torch.equal(a[0], data.dataset.tensors[0])
    # augmentation is seeded too
    d = _cat(data.batches(16, shuffle=True, seed=3, augment=True))
    e = _cat(data.batches(16, shuffle=True, seed=3, augment=True))
    assert torch.equal(d[0], e[0]) and torch.equal(d[1], a[1])
    assert not torch.equal(d[0], a[0])
    assert d[0].shape == a[0].shape


class ListDataset(Dataset):
    """A non-TensorDataset: exercises the DataLoader path of Data.batches."""

    def __init__(self, n: int) -> None:
        self.items = [(torch.full((1, 4, 4), float(i)), i % 3) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def test_dataloader_path_is_deterministic() -> None:
    data = Data(ListDataset(20))
    a = _cat(data.batches(6, shuffle=True, seed=1))
    b = _cat(data.batches(6, shuffle=True, seed=1))
    assert torch.equal(a[0], b[0])
    assert sorted(a[0][:, 0, 0, 0].tolist()) == [float(i) for i in range(20)]
    x, _ = _cat(data.batches(6))
    assert x[:, 0, 0, 0].tolist() == [float(i) for i in range(20)]


def test_stream_is_endless_and_reshuffles_each_epoch() -> None:
    data = _data(32)
    stream = data.stream(16, seed=0)
    epochs = [_cat([next(stream), next(stream)]) for _ in range(3)]
    for _, y in epochs:
        assert sorted(y.tolist()) == sorted(data.dataset.tensors[1].tolist())
    assert not torch.equal(epochs[0][0], epochs[1][0])
    again = data.stream(16, seed=0)
    assert torch.equal(next(again)[0], next(data.stream(16, seed=0))[0])


def test_subset() -> None:
    data = _data(40)
    sub = data.subset(10, seed=0)
    assert len(sub) == 10
    assert torch.equal(sub.dataset.tensors[0], data.subset(10, seed=0).dataset.tensors[0])
    assert data.subset(None) is data and data.subset(40) is data


def test_load_data_synthetic() -> None:
    cfg = DataConfig(name="synthetic", image_size=16, train_samples=256, val_samples=64,
                     test_samples=64)
    s = load_data(cfg, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (256, 64, 64)
    assert (s.num_classes, s.in_chans, s.image_size, s.name) == (4, 1, 16, "synthetic")
    x_tr, x_val = s.train.dataset.tensors[0], s.val.dataset.tensors[0]
    assert x_tr.shape[1:] == (1, 16, 16)
    # val is held out: no image appears in both
    assert torch.cdist(x_tr.flatten(1), x_val.flatten(1)).min() > 1e-3
    s2 = load_data(cfg, seed=0)
    for a, b in [(s.train, s2.train), (s.val, s2.val), (s.test, s2.test)]:
        assert torch.equal(a.dataset.tensors[0], b.dataset.tensors[0])
    s3 = load_data(cfg, seed=1)
    assert not torch.equal(s.val.dataset.tensors[0], s3.val.dataset.tensors[0])


# ------------------------------------------------------------------ Fashion-MNIST IDX

MEAN, STD = 0.286, 0.353


def _write_idx(path: Path, arr: torch.Tensor) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.dim()) + struct.pack(">" + "I" * arr.dim(),
                                                                   *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.to(torch.uint8).numpy().tobytes())


@pytest.fixture
def fmnist_dir(tmp_path: Path):
    g = torch.Generator().manual_seed(0)
    tr_x = torch.randint(0, 256, (48, 28, 28), generator=g, dtype=torch.uint8)
    tr_y = torch.arange(48) % 10
    te_x = torch.randint(0, 256, (20, 28, 28), generator=g, dtype=torch.uint8)
    te_y = (torch.arange(20) * 3) % 10
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", tr_x)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", tr_y)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", te_x)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", te_y)
    return tmp_path, (tr_x, tr_y, te_x, te_y)


def test_fashion_mnist_idx_reader(fmnist_dir) -> None:
    root, (tr_x, tr_y, te_x, te_y) = fmnist_dir
    s = load_data(DataConfig(name="fashion-mnist", path=str(root), image_size=28,
                             val_samples=16), seed=0)
    assert (s.num_classes, s.in_chans, s.image_size) == (10, 1, 28)
    assert (len(s.train), len(s.val), len(s.test)) == (32, 16, 20)
    # pixels are scaled to [0, 1] and normalised; labels stay attached to their images
    expected_test = (te_x.float() / 255.0 - MEAN) / STD
    x_te, y_te = s.test.dataset.tensors
    assert torch.allclose(x_te[:, 0], expected_test, atol=1e-6)
    assert torch.equal(y_te, te_y)
    x_all = torch.cat([s.train.dataset.tensors[0], s.val.dataset.tensors[0]])[:, 0]
    y_all = torch.cat([s.train.dataset.tensors[1], s.val.dataset.tensors[1]])
    raw = torch.round((x_all * STD + MEAN) * 255).to(torch.uint8)
    order = [int(((tr_x == img).flatten(1).all(1)).nonzero()[0]) for img in raw]
    assert sorted(order) == list(range(48))
    assert torch.equal(y_all, tr_y[order])


def test_fashion_mnist_resized(fmnist_dir) -> None:
    root, _ = fmnist_dir
    s = load_data(DataConfig(name="fashion-mnist", path=str(root), image_size=16,
                             val_samples=16, test_samples=16), seed=0)
    assert s.train.dataset.tensors[0].shape == (32, 1, 16, 16)
    assert len(s.test) == 16


def test_fashion_mnist_errors(fmnist_dir, tmp_path: Path) -> None:
    root, _ = fmnist_dir
    cfg = DataConfig(name="fashion-mnist", path=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="not found"):
        load_data(cfg)
    with pytest.raises(ConfigError, match="val_samples=48 leaves no training data"):
        load_data(DataConfig(name="fashion-mnist", path=str(root), val_samples=48))
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"plain bytes, not gzip")
    with pytest.raises(ConfigError, match="not a readable gzip"):
        load_data(DataConfig(name="fashion-mnist", path=str(root), val_samples=16))
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 1) + b"\0\0\0\0")
    with pytest.raises(ConfigError, match="unsigned-byte"):
        load_data(DataConfig(name="fashion-mnist", path=str(root), val_samples=16))



def test_truncated_idx_is_config_error(fmnist_dir) -> None:
    # A gzip file that decompresses fine but holds fewer bytes than its header promises
    # (an interrupted download) is bad input: a ConfigError naming the file, not a
    # RuntimeError from torch's reshape. Fails while _read_idx does not check the size.
    root, _ = fmnist_dir
    path = root / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">III", 20, 28, 28) + bytes(100))
    with pytest.raises(ConfigError, match="t10k-images-idx3-ubyte.gz"):
        load_data(DataConfig(name="fashion-mnist", path=str(root), val_samples=16))
