"""Datasets: the bundled MNIST subset, torchvision data sets and ImageFolder trees read from a
local folder (dwfc/datasets.py), or a user factory "package.module:factory".

The pipeline calls `load_data_config(recipe.data)`, then checks `num_classes` and `sample_shape`
against the model. See docs/data.md for the sources, their folder layouts and defaults, and the
bundled file's source, licence, split rule and normalisation.
"""

from __future__ import annotations

import difflib
import functools
import gzip
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch.utils.data import ConcatDataset, Dataset, IterableDataset, Subset, TensorDataset

from dwfc.config import DataConfig
from dwfc.errors import DwfcError, InputError
from dwfc.models import import_object

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "SOURCES",
    "load_data",
    "load_data_config",
    "mnist5k",
    "num_classes",
    "sample_shape",
]

# Built-in sources (case-insensitive); anything with a ":" is a "package.module:factory".
SOURCES = (
    "mnist5k",
    "mnist",
    "fashionmnist",
    "kmnist",
    "cifar10",
    "cifar100",
    "svhn",
    "imagefolder",
)
_TRANSFORM_KEYS = ("image_size", "mean", "std", "augment")

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

_ROWS = 5000
_PIXELS = 784
_CLASSES = 10
_TRAIN_PER_CLASS = 400
_TEST_PER_CLASS = 100


@functools.lru_cache(maxsize=1)
def _read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """Parse the bundled CSV once: (5000, 784) uint8 pixels and (5000,) int64 labels, read-only."""
    raw = (files("dwfc") / "data" / "mnist_5k.csv.gz").read_bytes()
    text = gzip.decompress(raw).decode("ascii").replace("\n", ",")
    # np.fromstring in text mode (sep=",") is a fast C parser, ~10x quicker than np.loadtxt.
    values = np.fromstring(text, dtype=np.int32, sep=",")
    if values.size != _ROWS * (_PIXELS + 1):
        raise DwfcError("bundled mnist_5k.csv.gz is corrupt; reinstall dwfc")
    table = values.reshape(_ROWS, _PIXELS + 1)
    pixels, labels = table[:, :_PIXELS], table[:, _PIXELS].astype(np.int64)
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() >= _CLASSES:
        raise DwfcError("bundled mnist_5k.csv.gz is corrupt; reinstall dwfc")
    pixels = pixels.astype(np.uint8)
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def _to_dataset(pixels: np.ndarray, labels: np.ndarray) -> TensorDataset:
    images = (pixels.astype(np.float32) / np.float32(255.0) - np.float32(MNIST_MEAN)) / np.float32(
        MNIST_STD
    )
    x = torch.from_numpy(images.reshape(-1, 1, 28, 28))
    y = torch.from_numpy(labels.astype(np.int64))
    return TensorDataset(x, y)


def mnist5k(split_seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """The bundled MNIST subset as (train, test): 4,000 / 1,000 images, 400 / 100 per class.

    Images are float32 (N, 1, 28, 28), scaled to [0, 1] then normalised with mean 0.1307 and std
    0.3081; labels are int64. For each class 0-9 in turn, a permutation from
    `numpy.random.default_rng(split_seed)` puts 400 images in train and 100 in test; each split
    is then put in one fixed shuffled order from the same generator.

    Example:
        >>> train, test = mnist5k()
        >>> len(train), len(test)
        (4000, 1000)
    """
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)):
        raise InputError(f"split_seed must be an integer, got {split_seed!r}")
    if split_seed < 0:
        raise InputError(f"split_seed must be non-negative, got {split_seed}")
    pixels, labels = _read_mnist5k()
    rng = np.random.default_rng(split_seed)
    train_idx, test_idx = [], []
    for c in range(_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == c))
        train_idx.append(members[:_TRAIN_PER_CLASS])
        test_idx.append(members[_TRAIN_PER_CLASS : _TRAIN_PER_CLASS + _TEST_PER_CLASS])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    return _to_dataset(pixels[train], labels[train]), _to_dataset(pixels[test], labels[test])


def _unknown_source(source: str) -> InputError:
    close = difflib.get_close_matches(source.strip().lower(), SOURCES, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return InputError(
        f"unknown data source {source!r}{hint}: use one of {', '.join(SOURCES)}, "
        "or 'package.module:factory'"
    )


def load_data_config(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """Return the (train, eval) pair of datasets that the recipe's `data` section describes.

    `cfg.source` is, case-insensitively, one of `SOURCES` or "package.module:factory":

    - "mnist5k": the bundled subset; `cfg.options` go to `mnist5k` (split_seed); image_size,
      mean and std resize / renormalise it.
    - "mnist", "fashionmnist", "kmnist", "cifar10", "cifar100", "svhn": read by torchvision
      from `cfg.root` in its own format, never downloaded; "imagefolder": `<root>/train` and
      `<root>/val`. image_size, mean, std and augment default per data set (docs/data.md).
    - "package.module:factory": called as `factory(**cfg.options)` (plus `root=cfg.root` when
      given); the factory's datasets bring their own transforms.

    Example:
        >>> train, test = load_data_config(DataConfig(source="mnist5k"))
        >>> len(train), len(test)
        (4000, 1000)
        >>> cfg = DataConfig(source="cifar10", root="data", augment=True)
        >>> train, test = load_data_config(cfg)  # doctest: +SKIP
    """
    source = cfg.source.strip()
    key = source.lower()
    if ":" in source:
        given = [k for k in _TRANSFORM_KEYS if getattr(cfg, k) not in (None, False)]
        if given:
            raise InputError(
                f"data.{given[0]} does not apply to --data {source}: a factory's datasets bring "
                "their own transforms; drop it or apply it in the factory"
            )
        options = dict(cfg.options)
        if cfg.root is not None and "root" not in options:
            options["root"] = cfg.root
        return _load_factory(source, options)
    if key == "mnist5k":
        if cfg.root is not None:
            raise InputError("--data mnist5k is bundled with dwfc: drop --data-root")
        train, test = load_data("mnist5k", **cfg.options)  # no augmentation for digits
        return _mnist5k_transformed(train, cfg), _mnist5k_transformed(test, cfg)
    if key in SOURCES:
        from dwfc.datasets import load_builtin

        return load_builtin(cfg)
    raise _unknown_source(source)


def _mnist5k_transformed(ds: TensorDataset, cfg: DataConfig) -> TensorDataset:
    """`ds` resized to `cfg.image_size` and normalised with `cfg.mean`/`cfg.std`, if given."""
    size = cfg.image_size or 28
    mean = cfg.mean if cfg.mean is not None else [MNIST_MEAN]
    std = cfg.std if cfg.std is not None else [MNIST_STD]
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != 1:
            raise InputError(
                f"data.{name} has {len(values)} values but mnist5k images have 1 channel: "
                "give 1 value"
            )
    if std[0] <= 0:
        raise InputError(f"data.std must be positive, got {list(std)}")
    if size == 28 and mean[0] == MNIST_MEAN and std[0] == MNIST_STD:
        return ds
    x, y = ds.tensors
    pixels = x * MNIST_STD + MNIST_MEAN
    if size != 28:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True)
    return TensorDataset((pixels - mean[0]) / std[0], y)


def load_data(source: str, **options: Any) -> tuple[Dataset, Dataset]:
    """Return a (train, eval) pair of datasets for `source`.

    `source` is "mnist5k" (options go to `mnist5k`, e.g. split_seed), "package.module:factory"
    (a callable called with `**options` that returns a (train, eval) pair of torch Datasets), or
    another of `SOURCES`, whose options are the recipe's data fields: root, image_size, mean,
    std, augment. `load_data_config` is the same from a recipe's `data` section.

    Example:
        >>> train, test = load_data("mnist5k", split_seed=1)
        >>> train, test = load_data("cifar10", root="data", augment=True)  # doctest: +SKIP
        >>> train, test = load_data("my_pkg.datasets:cifar_pair", root="data")  # doctest: +SKIP
    """
    if not isinstance(source, str):
        raise InputError(f"data source must be a string, got {type(source).__name__}")
    key = source.strip().lower()
    if key == "mnist5k":
        try:
            return mnist5k(**options)
        except TypeError as e:
            raise InputError(
                f"mnist5k does not accept options {sorted(options)}: it takes only split_seed"
            ) from e
    if ":" in source:
        return _load_factory(source, options)
    if key not in SOURCES:
        raise _unknown_source(source)
    fields = {"root", *_TRANSFORM_KEYS}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise InputError(
            f"--data {key} does not accept options {unknown}: it takes {', '.join(sorted(fields))}"
        )
    try:
        cfg = DataConfig(source=key, **options)
    except ValidationError as e:
        first = e.errors()[0]
        raise InputError(f"--data {key}: option {first['loc'][0]}: {first['msg']}") from None
    return load_data_config(cfg)


def _load_factory(source: str, options: dict[str, Any]) -> tuple[Dataset, Dataset]:
    factory = import_object(source, "--data")
    if not callable(factory):
        raise InputError(f"--data {source!r} is a {type(factory).__name__}, not a callable")
    try:
        result = factory(**options)
    except InputError:
        raise
    except TypeError as e:
        shown = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "no arguments"
        raise InputError(f"--data {source!r} could not be called with {shown}: {e}") from e
    return _check_pair(source, result)


def _check_pair(source: str, result: Any) -> tuple[Dataset, Dataset]:
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        got = (
            f"a {type(result).__name__} of length {len(result)}"
            if isinstance(result, (tuple, list))
            else f"a {type(result).__name__}"
        )
        raise InputError(
            f"--data {source!r} must return a (train, eval) pair of torch Datasets, got {got}"
        )
    for role, ds in zip(("train", "eval"), result, strict=True):
        if not isinstance(ds, Dataset):
            raise InputError(
                f"--data {source!r} returned a {type(ds).__name__} as the {role} set, "
                "not a torch.utils.data.Dataset"
            )
        try:
            size = len(ds)  # type: ignore[arg-type]
        except TypeError:
            continue  # an IterableDataset may not know its length
        if size == 0:
            raise InputError(f"--data {source!r} returned an empty {role} set")
    return result[0], result[1]


def _label_count(labels: Any) -> int | None:
    """max label + 1 for a 1-D sequence of non-negative integer labels, else None."""
    try:
        array = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    except (TypeError, ValueError, RuntimeError):
        return None
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        return None
    if array.min() < 0:
        return None
    return int(array.max()) + 1


def num_classes(dataset: Dataset) -> int | None:
    """How many outputs a classifier needs for `dataset`, or None if it cannot be told.

    From `.classes` (torchvision data sets, ImageFolder), else max label + 1 from `.targets` or
    `.labels`, or from the last tensor of a TensorDataset; Subset and ConcatDataset look inside.

    Example:
        >>> num_classes(TensorDataset(torch.zeros(3, 2), torch.tensor([0, 4, 1])))
        5
    """
    if isinstance(dataset, Subset):
        return num_classes(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        counts = [num_classes(d) for d in dataset.datasets]
        return None if not counts or None in counts else max(c for c in counts if c is not None)
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, Sequence) and not isinstance(classes, str) and len(classes) > 0:
        return len(classes)
    for attr in ("targets", "labels"):
        labels = getattr(dataset, attr, None)
        if labels is not None and not callable(labels):
            count = _label_count(labels)
            if count is not None:
                return count
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return _label_count(dataset.tensors[-1])
    return None


def sample_shape(dataset: Dataset) -> tuple[int, ...]:
    """The shape of one input of `dataset`, without the batch dimension, e.g. (3, 32, 32).

    Reads the first item; its input must be a tensor. Raises InputError if the data set is
    empty or its items are not (input, label) pairs of a tensor and a label.

    Example:
        >>> sample_shape(TensorDataset(torch.zeros(5, 1, 28, 28), torch.zeros(5)))
        (1, 28, 28)
    """
    if isinstance(dataset, TensorDataset):
        return tuple(dataset.tensors[0].shape[1:])
    try:
        if isinstance(dataset, IterableDataset):
            item = next(iter(dataset))
        else:
            if len(dataset) == 0:  # type: ignore[arg-type]
                raise InputError("the data set is empty: it has no input to check the model with")
            item = dataset[0]
    except StopIteration:
        raise InputError("the data set is empty: it has no input to check the model with") from None
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise InputError(
            f"data set items must be (input, label) pairs, got a {type(item).__name__}"
        )
    x = item[0]
    if not isinstance(x, torch.Tensor):
        raise InputError(
            f"data set inputs must be tensors, got {type(x).__module__}.{type(x).__name__}: "
            "add transforms.ToTensor() to the datasets"
        )
    return tuple(x.shape)
