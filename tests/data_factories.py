"""Data factories for the bad-input tests (`--data data_factories:NAME`)."""

import torch
from torch.utils.data import TensorDataset


def _images(n: int, shape: tuple[int, ...], classes: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, *shape, generator=g), torch.arange(n) % classes)


def rgb32():
    """CIFAR-shaped images: LeNet-300-100 (784 inputs) cannot take them."""
    return _images(64, (3, 32, 32), 10), _images(32, (3, 32, 32), 10)


def twenty_classes():
    """MNIST-shaped images with 20 labels: a 10-output model cannot fit them."""
    return _images(64, (1, 28, 28), 20), _images(40, (1, 28, 28), 20)


def empty():
    return _images(0, (1, 28, 28), 10), _images(0, (1, 28, 28), 10)
