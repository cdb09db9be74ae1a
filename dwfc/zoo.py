"""Small reference models for 1x28x28 inputs (MNIST-sized): LeNet-300-100 and LeNet-5.

Pass a factory on the command line as `--arch dwfc.zoo:lenet5` or `--arch dwfc.zoo:lenet_300_100`.
"""

from __future__ import annotations

import torch
from torch import nn

from dwfc.errors import InputError

__all__ = ["LeNet300100", "LeNet5", "lenet_300_100", "lenet5"]


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


class LeNet300100(nn.Module):
    """Fully connected 784-300-100-`num_classes` network with ReLUs (266,610 parameters for 10).

    Example:
        >>> LeNet300100()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        num_classes = _check_num_classes(num_classes)
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 300),
            nn.ReLU(),
            nn.Linear(300, 100),
            nn.ReLU(),
            nn.Linear(100, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a (N, 1, 28, 28) batch to (N, num_classes) logits."""
        return self.layers(x)


class LeNet5(nn.Module):
    """The classic LeNet-5 conv net for (N, 1, 28, 28) input (61,706 parameters for 10 classes).

    Example:
        >>> LeNet5(num_classes=3)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 3])
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        num_classes = _check_num_classes(num_classes)
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(400, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a (N, 1, 28, 28) batch to (N, num_classes) logits."""
        return self.classifier(self.features(x))


def lenet_300_100(num_classes: int = 10) -> LeNet300100:
    """Build a fresh LeNet-300-100.

    Example:
        >>> model = lenet_300_100(num_classes=10)
    """
    return LeNet300100(num_classes)


def lenet5(num_classes: int = 10) -> LeNet5:
    """Build a fresh LeNet-5.

    Example:
        >>> model = lenet5(num_classes=10)
    """
    return LeNet5(num_classes)
