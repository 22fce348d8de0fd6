"""Datasets and deterministic splits: Fashion-MNIST (offline), image folders, synthetic, or
the user's own (``data.name: python:<module or file.py>:<callable>``).

Every split is a :class:`Data`: a torch ``Dataset`` plus a ``batches()`` iterator with a
seeded shuffle, so every stage sees the same images in the same order on a re-run.
"""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from lana.errors import ConfigError
from lana.model.usercode import import_callable, takes

if TYPE_CHECKING:
    from lana.config import DataConfig

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


class Data:
    """One split: a dataset of ``(image CHW float tensor, int label)`` pairs."""

    def __init__(self, dataset: Dataset, workers: int = 0) -> None:
        self.dataset = dataset
        self.workers = workers

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def subset(self, n: int | None, seed: int = 0) -> Data:
        """The first ``n`` items of a seeded permutation (all items when n is None)."""
        if n is None or n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].tolist()
        return Data(_subset(self.dataset, idx), self.workers)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0,
                augment: bool = False, rank: int = 0, world: int = 1
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches; the order depends only on ``seed``.

        With ``world > 1`` every batch is the same global batch as in one process, and this
        rank gets its share (items ``rank::world``) with the same augmentation those items
        get in one process, so data-parallel training sees exactly the single-process data
        (like torch's DistributedSampler, but per batch). A last batch with fewer items
        than ranks is skipped, since some rank would get nothing.
        """
        g = torch.Generator().manual_seed(seed)
        n = len(self)
        order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
        chunks = [order[s:s + batch_size] for s in range(0, n, batch_size)]
        local = [c[rank::world] for c in chunks]
        if isinstance(self.dataset, TensorDataset):
            # In-memory fast path: indexing whole batches beats a DataLoader on small images.
            x_all, y_all = self.dataset.tensors
            for chunk, idx in zip(chunks, local, strict=True):
                params = _augment_params(len(chunk), g) if augment else None
                if len(chunk) < world:
                    continue
                x = x_all[idx]
                yield (_apply_augment(x, params, rank, world) if params else x), y_all[idx]
            return
        # Only this rank's items are loaded; the sampler order is the permutation above.
        loader = DataLoader(self.dataset, batch_sampler=[i.tolist() for i in local if len(i)],
                            num_workers=self.workers,
                            generator=torch.Generator().manual_seed(seed))
        batches = iter(loader)
        for chunk in chunks:
            params = _augment_params(len(chunk), g) if augment else None
            if len(chunk) < world:
                continue
            x, y = next(batches)
            yield (_apply_augment(x, params, rank, world) if params else x), y

    def stream(self, batch_size: int, seed: int = 0, augment: bool = False, rank: int = 0,
               world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless shuffled batches (a new permutation each epoch), for step-based training.

        ``rank``/``world`` shard every batch as in :meth:`batches`."""
        epoch = 0
        while True:
            yield from self.batches(batch_size, shuffle=True, seed=seed * 100003 + epoch,
                                    augment=augment, rank=rank, world=world)
            epoch += 1


def _subset(ds: Dataset, idx: list[int]) -> Dataset:
    if isinstance(ds, TensorDataset):
        return TensorDataset(*(t[idx] for t in ds.tensors))
    return Subset(ds, idx)


def _augment_params(n: int, g: torch.Generator) -> tuple[int, int, torch.Tensor]:
    """Random shift (pad 2 + crop) of a whole batch and per-image horizontal flips."""
    dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()
    return dx, dy, torch.rand(n, generator=g) < 0.5


def _apply_augment(x: torch.Tensor, params: tuple[int, int, torch.Tensor], rank: int = 0,
                   world: int = 1) -> torch.Tensor:
    dx, dy, flip = params
    flip = flip[rank::world]
    _, _, h, w = x.shape
    pad = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = pad[:, :, dy:dy + h, dx:dx + w]
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random shifts (pad 2 + crop) and horizontal flips, on a whole batch."""
    return _apply_augment(x, _augment_params(len(x), g))


@dataclass
class Splits:
    """Train / held-out val / test splits plus what the model needs to know."""

    train: Data
    val: Data
    test: Data
    num_classes: int
    in_chans: int
    image_size: int
    name: str


def _read_idx(path: Path) -> torch.Tensor:
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ConfigError(
            f"{path} not found. Install Fashion-MNIST with `apt-get install "
            "dataset-fashion-mnist` (Debian) or set data.path to a folder holding the four "
            "IDX .gz files.") from None
    except (OSError, EOFError) as exc:
        raise ConfigError(f"{path} is not a readable gzip IDX file: {exc}") from None
    bad = ConfigError(f"{path} is truncated or not an unsigned-byte IDX file; reinstall "
                      "the dataset (apt-get install --reinstall dataset-fashion-mnist)")
    if len(raw) < 4:
        raise bad
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or len(raw) < 4 + 4 * ndim:
        raise bad
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    if len(raw) - 4 - 4 * ndim != math.prod(dims):
        raise bad
    data = torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8)
    return data.reshape(dims)


def _to_images(x: torch.Tensor, size: int, mean: float, std: float) -> torch.Tensor:
    x = x.float().div_(255.0).unsqueeze(1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - mean) / std


def fashion_mnist(path: str | Path | None = None, image_size: int = 28,
                  mean: float = 0.286, std: float = 0.353, channels: int = 1
                  ) -> tuple[TensorDataset, TensorDataset]:
    """Fashion-MNIST's (train, test) from the IDX files in ``path`` (default: the Debian
    package's folder), resized to ``image_size``, normalised by ``mean``/``std`` (default:
    the dataset's own statistics) and repeated to ``channels`` (e.g. 3 for a network
    pretrained on RGB; the copies are views, so memory stays that of one channel)."""
    root = Path(path or FASHION_MNIST_DIR)
    out = []
    for split in ("train", "t10k"):
        x = _to_images(_read_idx(root / f"{split}-images-idx3-ubyte.gz"), image_size, mean,
                       std)
        y = _read_idx(root / f"{split}-labels-idx1-ubyte.gz").long()
        out.append(TensorDataset(x.expand(-1, channels, -1, -1), y))
    return out[0], out[1]


def _fashion_mnist(cfg: DataConfig) -> tuple[Dataset, Dataset, int, int]:
    train, test = fashion_mnist(cfg.path, cfg.image_size)
    return train, test, 10, 1


def synthetic_dataset(n: int, image_size: int = 16, num_classes: int = 4, in_chans: int = 1,
                      seed: int = 0) -> TensorDataset:
    """A learnable toy dataset: each class is a fixed random pattern plus noise."""
    g = torch.Generator().manual_seed(1234)  # patterns shared by every split
    patterns = torch.randn(num_classes, in_chans, image_size, image_size, generator=g)
    patterns = F.avg_pool2d(patterns, 3, 1, 1) * 3
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = patterns[y] + torch.randn(n, in_chans, image_size, image_size, generator=g)
    return TensorDataset(x, y)


def _image_folder(cfg: DataConfig) -> tuple[Dataset, Dataset, int, int]:
    from torchvision import datasets, transforms

    if not cfg.path:
        raise ConfigError("data.name 'image-folder' needs data.path: a folder with train/ and "
                          "val/ (or test/) subfolders, one folder per class inside each")
    root = Path(cfg.path)
    test_dir = root / "val" if (root / "val").is_dir() else root / "test"
    if not (root / "train").is_dir() or not test_dir.is_dir():
        raise ConfigError(f"{root} must contain train/ and val/ (or test/) class folders")
    tf = transforms.Compose([transforms.Resize(cfg.image_size),
                             transforms.CenterCrop(cfg.image_size), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    train = datasets.ImageFolder(str(root / "train"), transform=tf)
    test = datasets.ImageFolder(str(test_dir), transform=tf)
    return train, test, len(train.classes), 3


def sample_shape(data: Dataset, what: str) -> tuple[int, int, int]:
    """The ``(C, H, W)`` of ``data[0]``'s image, checking that ``data`` is a map-style
    dataset of ``(image CxHxW tensor, int label)`` pairs with square images."""
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(f"{what} must be a map-style torch Dataset (with len()), got "
                          f"{type(data).__name__}") from None
    if n == 0:
        raise ConfigError(f"{what} is empty")
    item = data[0]
    if not (isinstance(item, tuple | list) and len(item) == 2
            and isinstance(item[0], torch.Tensor)):
        raise ConfigError(f"{what}[0] must be an (image tensor CxHxW, int label) pair, got "
                          f"{type(item).__name__} (for PIL images add a ToTensor transform)")
    x, y = item
    if x.dim() != 3:
        raise ConfigError(f"{what}[0] has an image of shape {tuple(x.shape)}; lana needs "
                          "CxHxW tensors (no batch dimension)")
    if x.shape[1] != x.shape[2]:
        raise ConfigError(f"{what}[0] has a {x.shape[1]}x{x.shape[2]} image; lana needs "
                          "square images (resize or crop them in the dataset)")
    if not isinstance(y, int | torch.Tensor) or (isinstance(y, torch.Tensor) and y.numel() != 1):
        raise ConfigError(f"{what}[0] has label {y!r}; labels must be class indices (int)")
    return tuple(int(s) for s in x.shape)  # type: ignore[return-value]


_BUILDER_FORMS = ("(train, test), (train, val, test) or a dict with 'train', 'test' and "
                  "optionally 'val' and 'num_classes'")


def _known_labels(ds: Dataset | None) -> torch.Tensor | None:
    """All labels of a dataset that holds them apart from its images (torchvision's
    ``targets``, a TensorDataset's second tensor); None for any other."""
    labels = getattr(ds, "targets", None)
    if labels is None and isinstance(ds, TensorDataset) and len(ds.tensors) == 2:
        labels = ds.tensors[1]
    try:
        return None if labels is None else torch.as_tensor(labels).flatten()
    except (TypeError, ValueError, RuntimeError):  # not numbers: left to the first batch
        return None


def _count_classes(ds: Dataset, what: str) -> int:
    """Classes of a dataset that says (torchvision's ``classes``/``targets``, a
    TensorDataset's labels), without loading its images."""
    if isinstance(getattr(ds, "classes", None), list | tuple) and ds.classes:
        return len(ds.classes)
    labels = _known_labels(ds)
    if labels is not None and len(labels):
        return int(labels.max()) + 1
    raise ConfigError(f"{what}: lana cannot tell how many classes the data has without "
                      "reading every image; return a dict with 'num_classes' (e.g. "
                      "{'train': train, 'test': test, 'num_classes': 10}), or give the "
                      "training dataset a 'classes' list as torchvision's datasets have")


def _python_data(cfg: DataConfig) -> tuple[Dataset, Dataset | None, Dataset, int, int]:
    """The user's dataset builder, called with ``data.kwargs`` (plus ``image_size`` and
    ``data.path`` as ``path`` where it takes them): train, val (None: carve it from train),
    test, number of classes, channels."""
    what = f"data.name {cfg.name!r}"
    fn = import_callable(cfg.name.partition(":")[2], "data.name")
    if not callable(fn):
        raise ConfigError(f"{what} names a {type(fn).__name__}, not a function that builds "
                          "the datasets")
    offered = {"image_size": cfg.image_size, **({"path": cfg.path} if cfg.path else {})}
    accepted = takes(fn, offered)
    if cfg.path and "path" not in accepted:
        raise ConfigError(f"data.path is set but {what} takes no 'path' argument: give the "
                          "builder a path parameter, or pass what it needs in data.kwargs")
    kwargs = {**{k: v for k, v in offered.items() if k in accepted}, **cfg.kwargs}
    try:
        out = fn(**kwargs)
    except Exception as exc:
        raise ConfigError(f"{what}: calling it with {kwargs} raised {type(exc).__name__}: "
                          f"{exc}") from exc
    num_classes = None
    if isinstance(out, Mapping):
        unknown = sorted(set(out) - {"train", "val", "test", "num_classes"})
        if unknown or "train" not in out or "test" not in out:
            raise ConfigError(f"{what} returned a dict with keys {sorted(out)}; it must "
                              f"return {_BUILDER_FORMS}")
        train, val, test, num_classes = out["train"], out.get("val"), out["test"], \
            out.get("num_classes")
    elif isinstance(out, tuple | list) and len(out) in (2, 3):
        train, val, test = (out[0], None, out[1]) if len(out) == 2 else out
    else:
        raise ConfigError(f"{what} returned {type(out).__name__}; it must return "
                          f"{_BUILDER_FORMS}")
    shape = sample_shape(train, f"{what}'s train split")
    for ds, split in ((val, "val"), (test, "test")):
        if ds is not None and (other := sample_shape(ds, f"{what}'s {split} split")) != shape:
            raise ConfigError(f"{what}: the {split} split's images are {other}, the train "
                              f"split's {shape}; every split needs images of one shape")
    if shape[1] != cfg.image_size:
        raise ConfigError(
            f"{what} yields {shape[0]}x{shape[1]}x{shape[2]} images but data.image_size is "
            f"{cfg.image_size}: set data.image_size: {shape[1]}, or resize in the builder "
            "(it is passed image_size= when it takes that argument)")
    if num_classes is None:
        num_classes = _count_classes(train, what)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"{what}: num_classes must be an integer of at least 2, got "
                          f"{num_classes!r}")
    for ds, split in ((train, "train"), (val, "val"), (test, "test")):
        labels = _known_labels(ds)
        if labels is not None and len(labels) and not 0 <= int(labels.min()) <= int(
                labels.max()) < num_classes:
            raise ConfigError(
                f"{what}: the {split} split has labels from {int(labels.min())} to "
                f"{int(labels.max())}, outside 0..{num_classes - 1} for {num_classes} "
                "classes; labels must be class indices (return the right num_classes)")
    return train, val, test, num_classes, shape[0]


def load_data(cfg: DataConfig, seed: int = 0) -> Splits:
    """Load the configured dataset and cut deterministic train / val / test splits (val is
    carved from the training data unless the user's own builder returns one)."""
    given_val = None
    if cfg.name.startswith("python:"):
        train, given_val, test, num_classes, in_chans = _python_data(cfg)
    elif cfg.path and not Path(cfg.path).is_dir():
        raise ConfigError(
            f"data.path {cfg.path!r} not found (no such folder). Point it at the "
            "dataset folder (image-folder: train/ and val/ subfolders, one folder per class; "
            "fashion-mnist: the four IDX .gz files), or remove it to use the default.")
    elif cfg.name == "fashion-mnist":
        train, test, num_classes, in_chans = _fashion_mnist(cfg)
    elif cfg.name == "image-folder":
        train, test, num_classes, in_chans = _image_folder(cfg)
    else:
        n = (cfg.train_samples or 512) + cfg.val_samples
        train = synthetic_dataset(n, cfg.image_size, seed=seed)
        test = synthetic_dataset(cfg.test_samples or 256, cfg.image_size, seed=seed + 1)
        num_classes, in_chans = 4, 1
    n = len(train)  # type: ignore[arg-type]
    if given_val is not None:
        return Splits(
            train=Data(train, cfg.workers).subset(cfg.train_samples, seed),
            val=Data(given_val, cfg.workers),
            test=Data(test, cfg.workers).subset(cfg.test_samples, seed),
            num_classes=num_classes, in_chans=in_chans, image_size=cfg.image_size,
            name=cfg.name)
    if cfg.val_samples >= n:
        raise ConfigError(f"data.val_samples={cfg.val_samples} leaves no training data "
                          f"(the training split has {n} items)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val_idx, train_idx = perm[:cfg.val_samples], perm[cfg.val_samples:]
    if cfg.train_samples is not None:
        train_idx = train_idx[:cfg.train_samples]
    return Splits(
        train=Data(_subset(train, train_idx), cfg.workers),
        val=Data(_subset(train, val_idx), cfg.workers),
        test=Data(test, cfg.workers).subset(cfg.test_samples, seed),
        num_classes=num_classes, in_chans=in_chans, image_size=cfg.image_size, name=cfg.name,
    )
