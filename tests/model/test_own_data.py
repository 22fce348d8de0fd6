"""Your own dataset from the CLI: ``data.name: python:<module or file.py>:<function>``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import lana
from lana.cli.commands import main
from lana.config import DataConfig, config_from_dict
from lana.core.io import read_json
from lana.errors import ConfigError
from lana.model.data import load_data
from tests.conftest import tiny_config_dict

DATASETS = textwrap.dedent('''
    import torch
    from torch.utils.data import Dataset, TensorDataset


    def _images(n, size, classes, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, classes, (n,), generator=g)
        x = torch.randn(n, 3, size, size, generator=g) + y.view(-1, 1, 1, 1).float()
        return x, y


    def as_dict(image_size, classes=3, n=96):
        """In-memory splits with the class count given."""
        return {"train": TensorDataset(*_images(n, image_size, classes, 0)),
                "test": TensorDataset(*_images(48, image_size, classes, 1)),
                "num_classes": classes}


    class Shapes(Dataset):
        """A lazily built dataset, torchvision style (classes listed, images made on
        access), as a user's own folder or CSV reader would be."""

        classes = ["circle", "square"]

        def __init__(self, n, size, seed, chans=3):
            self.n, self.size, self.seed, self.chans = n, size, seed, chans

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(self.seed * 100000 + i)
            return torch.randn(self.chans, self.size, self.size, generator=g), i % 2


    def two(path, image_size=16):
        assert path.endswith("shapes")
        return Shapes(80, image_size, 0), Shapes(40, image_size, 1)


    def three(image_size, **kwargs):
        return (Shapes(60, image_size, 0), Shapes(30, image_size, 2),
                Shapes(40, image_size, 1))


    def fixed(n=10):
        return Shapes(n, 24, 0), Shapes(n, 24, 1)


    def uneven(image_size):
        return Shapes(20, image_size, 0), Shapes(20, image_size, 1, chans=1)


    def unlabelled(image_size):
        return {"train": TensorDataset(torch.zeros(20, 3, image_size, image_size)),
                "test": TensorDataset(torch.zeros(20, 3, image_size, image_size))}


    class _NoClasses(Shapes):
        classes = None


    def no_classes(image_size):
        return _NoClasses(20, image_size, 0), _NoClasses(20, image_size, 1)


    def one_split(image_size):
        return Shapes(20, image_size, 0)


    def extra_key(image_size):
        return {"train": Shapes(20, image_size, 0), "test": Shapes(20, image_size, 1),
                "classes": 2}


    def too_few(image_size):
        return {**as_dict(image_size, classes=4), "num_classes": 3}


    def broken(image_size):
        raise FileNotFoundError("labels.csv")
''')


def _write(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "my_data.py"
    path.write_text(DATASETS)
    return path


def _data(code: Path, fn: str, **over) -> DataConfig:
    return DataConfig(name=f"python:{code}:{fn}", image_size=over.pop("image_size", 16),
                      val_samples=16, **over)


def test_own_data_from_a_file_end_to_end(tmp_path: Path) -> None:
    """A CLI run on the user's own splits: 3 classes and 3 channels reach the teacher, and
    the student that comes back classifies into them."""
    data = _write(tmp_path / "code")
    cfg = tiny_config_dict(tmp_path / "cache")
    cfg["data"] = {"name": f"python:{data}:as_dict", "image_size": 16, "val_samples": 16,
                   "kwargs": {"classes": 3}}
    cfg["space"]["ops"] = ["teacher", "identity", "cb_k3"]
    cfg["search"]["budget"] = {"latency_ms": 1000.0}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    assert read_json(tmp_path / "run" / "teacher.json")["data"] == f"python:{data}:as_dict"
    student = read_json(tmp_path / "run" / "summary.json")["students"][0]
    loaded = lana.load_student(student["path"])
    assert loaded(torch.zeros(2, 3, 16, 16)).shape == (2, 3)


def test_the_forms_a_builder_may_return(tmp_path: Path) -> None:
    data = _write(tmp_path)
    # a dict with the class count; val carved from train (val_samples), kwargs passed
    s = load_data(_data(data, "as_dict", kwargs={"classes": 5, "n": 64}), seed=0)
    assert (s.num_classes, s.in_chans, s.image_size) == (5, 3, 16)
    assert (len(s.train), len(s.val), len(s.test)) == (48, 16, 48)
    # (train, test) of a lazy dataset: its classes list counts; data.path as path=
    (tmp_path / "shapes").mkdir()
    s = load_data(_data(data, "two", path=str(tmp_path / "shapes"), train_samples=32))
    assert (s.num_classes, len(s.train), len(s.val), len(s.test)) == (2, 32, 16, 40)
    assert s.train.dataset[0][0].shape == (3, 16, 16)
    # (train, val, test): the builder's own val split is used as it is
    s = load_data(_data(data, "three", image_size=12))
    assert (len(s.train), len(s.val), len(s.test)) == (60, 30, 40)
    assert torch.equal(s.val.dataset[3][0], torch.randn(
        3, 12, 12, generator=torch.Generator().manual_seed(200003)))
    # the same splits every time (a seeded carve)
    a = load_data(_data(data, "two", path=str(tmp_path / "shapes")), seed=1)
    b = load_data(_data(data, "two", path=str(tmp_path / "shapes")), seed=1)
    assert a.val.dataset.indices == b.val.dataset.indices


@pytest.mark.parametrize("fn, over, needle", [
    ("fixed", {}, "yields 3x24x24 images but data.image_size is 16: set data.image_size: 24"),
    ("fixed", {"path": "x"}, "data.path is set but data.name 'python:"),
    ("uneven", {}, "the test split's images are (1, 16, 16), the train split's (3, 16, 16)"),
    ("unlabelled", {}, "must be an (image tensor CxHxW, int label) pair"),
    ("no_classes", {}, "cannot tell how many classes"),
    ("one_split", {}, "returned Shapes; it must return (train, test), (train, val, test)"),
    ("extra_key", {}, "returned a dict with keys ['classes', 'test', 'train']"),
    ("broken", {}, "raised FileNotFoundError: labels.csv"),
    ("too_few", {}, "the train split has labels from 0 to 3, outside 0..2 for 3 classes"),
    ("missing", {}, "has no 'missing'; it defines ['Shapes', 'as_dict', 'broken'"),
])
def test_a_builder_that_does_not_fit(tmp_path: Path, fn: str, over: dict, needle: str) -> None:
    data = _write(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_data(_data(data, fn, **over))
    assert needle in str(info.value)


def test_dataset_names_are_checked_and_edits_retrain(tmp_path: Path) -> None:
    from lana.pipeline.keys import locked_section
    from lana.pipeline.runner import Run
    from lana.pipeline.teacher import cache_entry

    with pytest.raises(ConfigError, match="unknown dataset 'fashon-mnist' .did you mean "
                       "'fashion-mnist'.."):
        config_from_dict({"data": {"name": "fashon-mnist"}})
    cfg = tiny_config_dict(tmp_path / "cache")
    # data.kwargs came later: a config without them keys the teacher as before
    assert "kwargs" not in locked_section(config_from_dict(cfg), "data")
    data = _write(tmp_path)
    cfg["data"] = {"name": f"python:{data}:as_dict", "image_size": 16, "val_samples": 16}
    key, _ = cache_entry(Run(tmp_path / "r", config_from_dict(cfg)))
    assert cache_entry(Run(tmp_path / "r", config_from_dict(cfg)))[0] == key
    data.write_text(DATASETS.replace("n=96", "n=97"))  # the data changed: a new teacher
    assert cache_entry(Run(tmp_path / "r", config_from_dict(cfg)))[0] != key
