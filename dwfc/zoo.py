"""Small reference models for 1x28x28 inputs (MNIST-sized): LeNet-300-100, LeNet-5, and a small
residual CNN with BatchNorm (ResNetMini), the structured benchmark's second model.

Pass a factory on the command line as `--arch dwfc.zoo:lenet5`, `--arch dwfc.zoo:lenet_300_100`
or `--arch dwfc.zoo:resnet_mini`.
"""

from __future__ import annotations

import torch
from torch import nn

from dwfc.errors import InputError

__all__ = ["LeNet300100", "LeNet5", "ResNetMini", "lenet_300_100", "lenet5", "resnet_mini"]


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


class BasicBlock(nn.Module):
    """A basic residual block: two 3x3 convolutions with BatchNorm, a 1x1 projection when the
    shape changes."""

    def __init__(self, channels_in: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or channels_in != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNetMini(nn.Module):
    """A small ResNet for (N, 1, 28, 28) input: a `width`-channel stem of stride 2, one basic block
    at each of width, 2 x width and 4 x width channels (14, 7, 4 pixels), global average pooling
    (77,754 parameters at width 16).

    Example:
        >>> ResNetMini()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        num_classes, w = _check_num_classes(num_classes), width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w),
                                  nn.ReLU())  # fmt: skip
        self.blocks = nn.Sequential(
            BasicBlock(w, w, 1), BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 4 * w, 2)
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a (N, 1, 28, 28) batch to (N, num_classes) logits."""
        return self.head(self.blocks(self.stem(x)))


def resnet_mini(num_classes: int = 10, width: int = 16) -> ResNetMini:
    """Build a fresh ResNetMini.

    Example:
        >>> model = resnet_mini(num_classes=10, width=32)
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise InputError(f"width must be a positive integer, got {width!r}")
    return ResNetMini(num_classes, width)
