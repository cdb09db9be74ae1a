"""Image data sets read from a local folder by torchvision's own loaders, never downloaded.

MNIST, FashionMNIST, KMNIST, CIFAR10, CIFAR100 and SVHN in the formats torchvision stores them,
and ImageFolder trees (`<root>/train/<class>/<image>`, `<root>/val/<class>/<image>`). Sizes,
normalisation and augmentation come from the recipe's `data` section, with per-set defaults
(docs/data.md). torchvision (and scipy, for SVHN) is imported only when one of them is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from dwfc.config import DataConfig
from dwfc.errors import InputError, first_line, named

__all__ = ["SPECS", "TRANSFORM_KEYS", "DatasetSpec", "load", "make_transforms", "normalization"]

TRANSFORM_KEYS = ("image_size", "mean", "std", "augment")  # the data fields of the transforms
SOURCE, ROOT = named("data.source"), named("data.root")

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _idx_layout(cls: str) -> str:
    return (
        f"torchvision's {cls} reads {{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte, "
        "uncompressed, from there (dwfc never downloads)"
    )


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetSpec:
    """Where a data set's files live under data.root, and its default transforms."""

    cls: str  # torchvision.datasets class
    folder: str  # folder under the root holding `files` ("" for the root itself)
    files: tuple[str, ...]  # files (or folders, for ImageFolder) that must exist there
    size: int  # native (or, for ImageFolder, default) image size
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str  # "none" | "crop" | "crop-flip" | "resized-crop-flip"
    layout: str  # how to get the files there, for error messages


SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "MNIST", "MNIST/raw", _MNIST_FILES, 28, 1, (0.1307,), (0.3081,), "none",
        _idx_layout("MNIST"),
    ),
    "fashionmnist": DatasetSpec(
        "FashionMNIST", "FashionMNIST/raw", _MNIST_FILES, 28, 1, (0.2860,), (0.3530,), "none",
        _idx_layout("FashionMNIST"),
    ),
    "kmnist": DatasetSpec(
        "KMNIST", "KMNIST/raw", _MNIST_FILES, 28, 1, (0.1918,), (0.3483,), "none",
        _idx_layout("KMNIST"),
    ),
    "cifar10": DatasetSpec(
        "CIFAR10", "cifar-10-batches-py",
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
         "test_batch", "batches.meta"),
        32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "crop-flip",
        f"extract cifar-10-python.tar.gz under {ROOT} (dwfc never downloads)",
    ),
    "cifar100": DatasetSpec(
        "CIFAR100", "cifar-100-python", ("train", "test", "meta"),
        32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "crop-flip",
        f"extract cifar-100-python.tar.gz under {ROOT} (dwfc never downloads)",
    ),
    "svhn": DatasetSpec(
        "SVHN", "", ("train_32x32.mat", "test_32x32.mat"),
        32, 3, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "crop",
        f"put train_32x32.mat and test_32x32.mat in {ROOT} (dwfc never downloads)",
    ),
    "imagefolder": DatasetSpec(
        "ImageFolder", "", ("train", "val"), 224, 3, _IMAGENET_MEAN, _IMAGENET_STD,
        "resized-crop-flip", "expected <root>/train/<class>/<image> and <root>/val/<class>/<image>",
    ),
}  # fmt: skip


def _import_torchvision(name: str) -> Any:
    try:
        import torchvision
    except ImportError as e:
        raise InputError(f"{SOURCE} {name} needs torchvision: pip install 'dwfc[vision]'") from e
    return torchvision


def normalization(cfg: DataConfig) -> tuple[list[float], list[float]]:
    """The mean and std the images are normalised with: `cfg`'s, else the data set's usual."""
    name = cfg.source.strip().lower()
    return _normalisation(name, SPECS[name], cfg)


def _normalisation(name: str, spec: DatasetSpec, cfg: DataConfig) -> tuple[list[float], ...]:
    mean = list(cfg.mean) if cfg.mean is not None else list(spec.mean)
    std = list(cfg.std) if cfg.std is not None else list(spec.std)
    for key, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, spec.channels):
            raise InputError(
                f"data.{key} has {len(values)} values but {SOURCE} {name} images have "
                f"{spec.channels} channel(s): give 1 or {spec.channels} values"
            )
    if any(s <= 0 for s in std):
        raise InputError(f"data.std must be positive, got {std}")
    return mean, std


def make_transforms(name: str, cfg: DataConfig) -> tuple[Any, Any]:
    """(train, eval) torchvision transforms for the built-in data set `name` under `cfg`.

    Eval: resize (ImageFolder: shorter side to size * 256/224, then a centre crop to
    `image_size`; others only when `image_size` differs from their native size), ToTensor,
    Normalize. Train, when `cfg.augment`: RandomCrop(padding=4) + flip (CIFAR), RandomCrop
    (SVHN, no flip: digits), RandomResizedCrop + flip (ImageFolder); none for the MNIST family.

    Example:
        >>> train_tf, eval_tf = make_transforms("cifar10", DataConfig(augment=True))
    """
    spec = SPECS[name]
    transforms = _import_torchvision(name).transforms
    size = cfg.image_size or spec.size
    mean, std = _normalisation(name, spec, cfg)
    if name == "imagefolder":
        resize = [transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size)]
    elif size != spec.size:
        resize = [transforms.Resize(size), transforms.CenterCrop(size)]
    else:
        resize = []
    tail = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    eval_tf = transforms.Compose(resize + tail)
    if not cfg.augment or spec.augment == "none":
        return eval_tf, eval_tf
    if spec.augment == "resized-crop-flip":
        aug = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
    else:
        aug = resize + [transforms.RandomCrop(size, padding=4)]
        if spec.augment == "crop-flip":
            aug.append(transforms.RandomHorizontalFlip())
    return transforms.Compose(aug + tail), eval_tf


def _root(name: str, spec: DatasetSpec, root: str | None) -> Path:
    if root is None or not str(root).strip():
        where = (
            f"the folder that holds {spec.folder.split('/')[0]}/"
            if spec.folder
            else ("the folder that holds " + " and ".join(spec.files))
        )
        raise InputError(f"{SOURCE} {name} needs {ROOT}: {where}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise InputError(f"{SOURCE} {name}: {ROOT} {path} is not an existing folder")
    return path


def _missing(spec: DatasetSpec, root: Path) -> Path | None:
    """The first expected file or folder that is absent, or None."""
    folder = root / spec.folder
    if spec.folder and not folder.is_dir():
        return folder
    if spec.cls.endswith("MNIST") and all(
        (root / spec.cls / "processed" / f).is_file() for f in ("training.pt", "test.pt")
    ):
        return None  # torchvision still reads its old processed format
    for file in spec.files:
        if not (folder / file).exists():
            return folder / file
    return None


def _hint(spec: DatasetSpec, root: Path, missing: Path) -> str:
    gz = missing.with_name(missing.name + ".gz")
    if gz.is_file():
        return f"; found {gz.name}: decompress it (gunzip -k {gz})"
    parts = Path(spec.folder, spec.files[0]).parts
    for k in range(1, len(parts)):
        if (root / Path(*parts[k:])).exists():
            return f"; {ROOT} looks one level too deep: pass {root.resolve().parents[k - 1]}"
    return ""


def _check_files(name: str, spec: DatasetSpec, root: Path) -> None:
    missing = _missing(spec, root)
    if missing is not None:
        raise InputError(
            f"{SOURCE} {name}: {missing} not found: {spec.layout}{_hint(spec, root, missing)}"
        )


def _open_torchvision(name: str, spec: DatasetSpec, root: Path, train: bool, tf: Any) -> Dataset:
    datasets = _import_torchvision(name).datasets
    split: dict[str, Any] = (
        {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
    )
    try:
        return getattr(datasets, spec.cls)(str(root), transform=tf, download=False, **split)
    except ImportError as e:
        raise InputError(
            f"{SOURCE} {name} needs {e.name or 'scipy'} to read its files: "
            "pip install 'dwfc[vision]'"
        ) from e
    except RuntimeError as e:
        if "not found" in str(e).lower():
            raise InputError(
                f"{SOURCE} {name}: the files under {root / spec.folder} do not pass "
                f"torchvision's {spec.cls} checksums (corrupt, incomplete or another version?)"
            ) from e
        raise InputError(
            f"{SOURCE} {name}: cannot read {root / spec.folder}: {first_line(e)}"
        ) from e
    except Exception as e:
        raise InputError(
            f"{SOURCE} {name}: cannot read {root / spec.folder} ({type(e).__name__}: "
            f"{first_line(e)})"
        ) from e


def _image_folder(root: Path, train_tf: Any, eval_tf: Any) -> tuple[Dataset, Dataset]:
    datasets = _import_torchvision("imagefolder").datasets

    def open_split(split: str, tf: Any, allow_empty: bool) -> Any:
        try:
            return datasets.ImageFolder(str(root / split), transform=tf, allow_empty=allow_empty)
        except (FileNotFoundError, OSError) as e:
            raise InputError(
                f"{SOURCE} imagefolder: {root / split}: {first_line(e)} "
                "(expected one subfolder of images per class)"
            ) from e

    train = open_split("train", train_tf, False)
    val = open_split("val", eval_tf, True)
    extra = [c for c in val.classes if c not in train.class_to_idx]
    if extra:
        raise InputError(
            f"{SOURCE} imagefolder: {root / 'val'} has classes that {root / 'train'} lacks: "
            f"{', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}"
        )
    if val.classes != train.classes:  # val lacks some classes: use train's label numbers
        relabel = [train.class_to_idx[c] for c in val.classes]
        val.samples = [(path, relabel[t]) for path, t in val.samples]
        val.imgs = val.samples
        val.targets = [t for _, t in val.samples]
        val.classes, val.class_to_idx = list(train.classes), dict(train.class_to_idx)
    if len(val) == 0:
        raise InputError(f"{SOURCE} imagefolder: {root / 'val'} holds no images")
    return train, val


def load(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """(train, eval) for a torchvision data set or ImageFolder tree named by `cfg.source`.

    Example:
        >>> train, test = load(DataConfig(source="cifar10", root="data"))  # doctest: +SKIP
    """
    name = cfg.source.strip().lower()
    spec = SPECS[name]
    if cfg.options:
        raise InputError(
            f"{SOURCE} {name} takes no data.options (got {', '.join(sorted(cfg.options))}): "
            f"use {ROOT}, data.image_size, data.mean, data.std and data.augment"
        )
    root = _root(name, spec, cfg.root)
    _check_files(name, spec, root)
    train_tf, eval_tf = make_transforms(name, cfg)
    if name == "imagefolder":
        return _image_folder(root, train_tf, eval_tf)
    train = _open_torchvision(name, spec, root, True, train_tf)
    test = _open_torchvision(name, spec, root, False, eval_tf)
    return train, test
