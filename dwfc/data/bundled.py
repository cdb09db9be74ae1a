"""The bundled MNIST subset (mnist_5k.csv.gz, beside this file): 4,000 train / 1,000 test
digits. Its source, licence, split rule and normalisation: docs/data.md."""

from __future__ import annotations

import functools
import gzip
from importlib.resources import files
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from dwfc.config import DataConfig
from dwfc.data.torchvision_sets import ROOT, SOURCE
from dwfc.errors import DwfcError, InputError

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
    raw = (files("dwfc.data") / "mnist_5k.csv.gz").read_bytes()
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


def split(**options: Any) -> tuple[TensorDataset, TensorDataset]:
    """`mnist5k(**options)`, with options that it does not take an InputError."""
    try:
        return mnist5k(**options)
    except TypeError as e:
        raise InputError(
            f"mnist5k does not accept options {sorted(options)}: it takes only split_seed"
        ) from e


def load(cfg: DataConfig) -> tuple[TensorDataset, TensorDataset]:
    """The (train, eval) pair the recipe's `data` section describes for source mnist5k."""
    if cfg.root is not None:
        raise InputError(f"{SOURCE} mnist5k is bundled with dwfc: drop {ROOT}")
    train, test = split(**cfg.options)  # no augmentation for digits
    return _transformed(train, cfg), _transformed(test, cfg)


def normalization(cfg: DataConfig) -> tuple[list[float], list[float]]:
    """The mean and std the images are normalised with: `cfg`'s, else MNIST's usual ones."""
    mean = list(cfg.mean) if cfg.mean is not None else [MNIST_MEAN]
    std = list(cfg.std) if cfg.std is not None else [MNIST_STD]
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != 1:
            raise InputError(
                f"data.{name} has {len(values)} values but mnist5k images have 1 channel: "
                "give 1 value"
            )
    if std[0] <= 0:
        raise InputError(f"data.std must be positive, got {list(std)}")
    return mean, std


def _transformed(ds: TensorDataset, cfg: DataConfig) -> TensorDataset:
    """`ds` resized to `cfg.image_size` and normalised with `cfg.mean`/`cfg.std`, if given."""
    size = cfg.image_size or 28
    mean, std = normalization(cfg)
    if size == 28 and mean[0] == MNIST_MEAN and std[0] == MNIST_STD:
        return ds
    x, y = ds.tensors
    pixels = x * MNIST_STD + MNIST_MEAN
    if size != 28:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True)
    return TensorDataset((pixels - mean[0]) / std[0], y)
