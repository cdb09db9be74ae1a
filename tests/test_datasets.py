"""Built-in data sources read by torchvision's real loaders from files written here in each
source's own format: idx files (MNIST family), pickled batches (CIFAR), .mat (SVHN) and PNG
trees (ImageFolder). Each set is a handful of images, so the whole module runs in seconds.

CIFAR and SVHN: torchvision checks the md5 sums of the official files, which tiny synthetic
files cannot match. The `no_md5` fixture replaces `check_integrity` in torchvision's cifar and
svhn modules, for these tests only, by a check that the file exists (what torchvision itself
does when it has no md5 to compare); everything else is torchvision's own code. The production
path keeps the checksums, see `test_checksum_mismatch_is_reported`.
"""

import pickle
import re
import struct

import numpy as np
import pytest
import torch
from cli_messages import raises_on_cli

from dwfc.cli.text import for_cli
from dwfc.config import DataConfig
from dwfc.data import load_data, load_data_config, num_classes, sample_shape
from dwfc.data.torchvision_sets import SPECS
from dwfc.errors import InputError

tv_datasets = pytest.importorskip("torchvision.datasets")

RNG = np.random.default_rng(0)


def _normalised(pixels_hwc: np.ndarray, mean, std) -> torch.Tensor:
    """What ToTensor + Normalize make of a uint8 HxWxC image: CxHxW floats."""
    x = torch.from_numpy(pixels_hwc.astype(np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


# --- writers, one per format -----------------------------------------------------------------


def write_idx(path, array: np.ndarray) -> None:
    """An uncompressed idx file: magic 0x0000080N (unsigned bytes, N dims), big-endian sizes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_family(root, cls: str, n_train: int = 6, n_test: int = 4) -> dict:
    raw = root / cls / "raw"
    raw.mkdir(parents=True)
    data = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
        data[split] = (images, labels)
    return data


def write_cifar10(root, per_batch: int = 2, n_test: int = 3) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        images = RNG.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(v) for v in RNG.integers(0, 10, n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": images, "labels": labels}, f)
        data[name] = (images, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return data


def write_cifar100(root, n_train: int = 4, n_test: int = 2) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        entry = {
            "data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": [int(v) for v in RNG.integers(0, 100, n)],
            "coarse_labels": [int(v) for v in RNG.integers(0, 20, n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump(
            {
                "fine_label_names": [f"fine{i}" for i in range(100)],
                "coarse_label_names": [f"coarse{i}" for i in range(20)],
            },
            f,
        )


def write_svhn(root, n_train: int = 10, n_test: int = 3) -> dict:
    sio = pytest.importorskip("scipy.io")
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # H, W, C, N as in SVHN
        labels = (np.arange(n, dtype=np.uint8) % 10 + 1).reshape(n, 1)  # 1..10, 10 is digit 0
        sio.savemat(str(root / f"{split}_32x32.mat"), {"X": images, "y": labels})
        data[split] = (images, labels)
    return data


def write_image_folder(root, classes=("cat", "dog", "emu"), per_class: int = 2, val=None) -> None:
    from PIL import Image

    for split, names in (("train", classes), ("val", val if val is not None else classes)):
        for c in names:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # not square
                Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.fixture
def no_md5(monkeypatch):
    """Let CIFAR/SVHN accept synthetic files: existence is checked, md5 sums are not."""
    from torchvision.datasets import utils

    def exists_only(fpath, md5=None):
        return utils.check_integrity(fpath, None)

    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", exists_only)
    monkeypatch.setattr("torchvision.datasets.svhn.check_integrity", exists_only)


# --- each source through load_data_config ----------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashionmnist", "kmnist"])
def test_mnist_family(tmp_path, name):
    spec = SPECS[name]
    data = write_mnist_family(tmp_path, spec.cls)
    train, test = load_data_config(DataConfig(source=name.upper(), root=str(tmp_path)))
    assert isinstance(train, getattr(tv_datasets, spec.cls))
    assert (len(train), len(test)) == (6, 4)
    x, y = test[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 3
    images, _ = data["t10k"]
    torch.testing.assert_close(x, _normalised(images[3][:, :, None], spec.mean, spec.std))
    assert num_classes(train) == 10 and sample_shape(train) == (1, 28, 28)


def test_mnist_image_size_and_mean(tmp_path):
    write_mnist_family(tmp_path, "MNIST")
    cfg = DataConfig(source="mnist", root=str(tmp_path), image_size=32, mean=[0.5], std=[0.5])
    train, test = load_data_config(cfg)
    assert sample_shape(train) == (1, 32, 32) and sample_shape(test) == (1, 32, 32)
    assert test[0][0].min() >= -1.0 and test[0][0].max() <= 1.0


def test_mnist_augment_is_a_no_op(tmp_path):
    write_mnist_family(tmp_path, "MNIST")
    train, _ = load_data_config(DataConfig(source="mnist", root=str(tmp_path), augment=True))
    assert [type(t).__name__ for t in train.transform.transforms] == ["ToTensor", "Normalize"]


def test_cifar10(tmp_path, no_md5):
    data = write_cifar10(tmp_path)
    train, test = load_data_config(DataConfig(source="cifar10", root=str(tmp_path)))
    assert isinstance(train, tv_datasets.CIFAR10)
    assert (len(train), len(test)) == (10, 3)
    assert num_classes(train) == 10 and num_classes(test) == 10
    assert sample_shape(test) == (3, 32, 32)
    images, labels = data["test_batch"]
    x, y = test[1]
    assert y == labels[1]
    hwc = images[1].reshape(3, 32, 32).transpose(1, 2, 0)
    torch.testing.assert_close(x, _normalised(hwc, SPECS["cifar10"].mean, SPECS["cifar10"].std))
    assert all(0 <= train[i][1] < 10 for i in range(len(train)))


def test_cifar10_augment_train_only(tmp_path, no_md5):
    write_cifar10(tmp_path)
    cfg = DataConfig(source="cifar10", root=str(tmp_path), augment=True)
    train, test = load_data_config(cfg)
    steps = [type(t).__name__ for t in train.transform.transforms]
    assert steps == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert train.transform.transforms[0].padding == 4
    assert [type(t).__name__ for t in test.transform.transforms] == ["ToTensor", "Normalize"]
    assert sample_shape(train) == (3, 32, 32)


def test_cifar100(tmp_path, no_md5):
    write_cifar100(tmp_path)
    cfg = DataConfig(source="Cifar100", root=str(tmp_path), image_size=16)
    train, test = load_data_config(cfg)
    assert (len(train), len(test)) == (4, 2)
    assert num_classes(train) == 100
    assert sample_shape(train) == (3, 16, 16)


def test_checksum_mismatch_is_reported(tmp_path):
    write_cifar10(tmp_path)  # no no_md5 fixture: torchvision's real md5 check runs
    with pytest.raises(InputError, match=r"do not pass torchvision's CIFAR10 checksums"):
        load_data_config(DataConfig(source="cifar10", root=str(tmp_path)))


def test_svhn(tmp_path, no_md5):
    data = write_svhn(tmp_path)
    train, test = load_data_config(DataConfig(source="svhn", root=str(tmp_path), augment=True))
    assert isinstance(train, tv_datasets.SVHN)
    assert (len(train), len(test)) == (10, 3)
    labels = [train[i][1] for i in range(len(train))]
    assert sorted(labels) == list(range(10))  # label 10 in the file is digit 0
    assert num_classes(train) == 10
    steps = [type(t).__name__ for t in train.transform.transforms]
    assert steps == ["RandomCrop", "ToTensor", "Normalize"]  # no flip for digits
    images, _ = data["test"]
    spec = SPECS["svhn"]
    torch.testing.assert_close(test[2][0], _normalised(images[:, :, :, 2], spec.mean, spec.std))


def test_image_folder(tmp_path):
    write_image_folder(tmp_path)
    train, val = load_data_config(
        DataConfig(source="imagefolder", root=str(tmp_path), image_size=16, augment=True)
    )
    assert (len(train), len(val)) == (6, 6)
    assert train.classes == ["cat", "dog", "emu"] and num_classes(val) == 3
    assert sample_shape(train) == (3, 16, 16) and sample_shape(val) == (3, 16, 16)
    assert sorted({y for _, y in val.samples}) == [0, 1, 2]
    assert type(train.transform.transforms[0]).__name__ == "RandomResizedCrop"
    x = val[0][0]
    mean = torch.tensor(SPECS["imagefolder"].mean)[:, None, None]
    std = torch.tensor(SPECS["imagefolder"].std)[:, None, None]
    pixels = x * std + mean
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_image_folder_default_size(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=1)
    train, val = load_data_config(DataConfig(source="imagefolder", root=str(tmp_path)))
    assert sample_shape(val) == (3, 224, 224)
    steps = [type(t).__name__ for t in val.transform.transforms]
    assert steps == ["Resize", "CenterCrop", "ToTensor", "Normalize"]


def test_image_folder_val_missing_a_class_keeps_train_labels(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b", "c"), per_class=1, val=("a", "c"))
    train, val = load_data_config(DataConfig(source="imagefolder", root=str(tmp_path)))
    assert [y for _, y in val.samples] == [0, 2]
    assert val.classes == train.classes and num_classes(val) == 3


def test_image_folder_val_extra_class(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=1, val=("a", "zebra"))
    with pytest.raises(InputError, match=r"val has classes that .*train lacks: zebra"):
        load_data_config(DataConfig(source="imagefolder", root=str(tmp_path)))


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mnist", "MNIST/raw"),
        ("kmnist", "KMNIST/raw"),
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("svhn", "train_32x32.mat"),
        ("imagefolder", "train"),
    ],
)
def test_missing_files_name_the_expected_path(tmp_path, name, expected):
    with pytest.raises(InputError) as info:
        load_data_config(DataConfig(source=name, root=str(tmp_path)))
    msg = for_cli(info.value)
    assert msg.startswith(f"--data {name}: {tmp_path / expected} not found")
    assert "\n" not in msg


def test_missing_single_file(tmp_path):
    write_mnist_family(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(InputError, match=r"MNIST/raw/t10k-labels-idx1-ubyte not found"):
        load_data_config(DataConfig(source="mnist", root=str(tmp_path)))


def test_gzipped_idx_files_hint(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(InputError, match=r"found train-images-idx3-ubyte\.gz: decompress it"):
        load_data_config(DataConfig(source="mnist", root=str(tmp_path)))


def test_root_one_level_too_deep(tmp_path, no_md5):
    write_cifar10(tmp_path)
    with pytest.raises(InputError, match=f"one level too deep: pass {re.escape(str(tmp_path))}$"):
        load_data(source="cifar10", root=str(tmp_path / "cifar-10-batches-py"))


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn", "imagefolder"])
def test_root_required(name):
    with raises_on_cli(InputError, match=f"^--data {name} needs --data-root: the folder"):
        load_data_config(DataConfig(source=name))


def test_root_does_not_exist(tmp_path):
    with raises_on_cli(InputError, match=r"--data-root .*nope is not an existing folder"):
        load_data_config(DataConfig(source="cifar10", root=str(tmp_path / "nope")))


def test_unknown_source_lists_valid_ones():
    with pytest.raises(InputError) as info:
        load_data_config(DataConfig(source="cifar"))
    msg = str(info.value)
    assert "did you mean 'cifar10'?" in msg
    for name in ("mnist5k", "fashionmnist", "kmnist", "cifar100", "svhn", "imagefolder"):
        assert name in msg
    assert "'package.module:factory'" in msg


def test_wrong_number_of_mean_values(tmp_path):
    write_mnist_family(tmp_path, "MNIST")
    cfg = DataConfig(source="mnist", root=str(tmp_path), mean=[0.1, 0.2, 0.3])
    with raises_on_cli(InputError, match=r"data\.mean has 3 values but --data mnist images have 1"):
        load_data_config(cfg)


def test_builtin_takes_no_options(tmp_path):
    with raises_on_cli(InputError, match=r"--data svhn takes no data\.options \(got split\)"):
        load_data_config(DataConfig(source="svhn", root=str(tmp_path), options={"split": "x"}))


def test_corrupt_idx_file(tmp_path):
    write_mnist_family(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x09")
    with raises_on_cli(InputError, match=r"^--data mnist: cannot read .*MNIST/raw"):
        load_data_config(DataConfig(source="mnist", root=str(tmp_path)))
