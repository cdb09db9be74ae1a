"""A tiny synthetic classification task and MLP shared by the training tests."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def loaders() -> tuple[DataLoader, DataLoader]:
    """192 train / 64 test points of 20 features; the label is the argmax of the first 4."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 20, generator=g)
    y = (x[:, :4].argmax(dim=1)).long()
    train = TensorDataset(x[:192], y[:192])
    test = TensorDataset(x[192:], y[192:])
    return (
        DataLoader(train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)),
        DataLoader(test, batch_size=64),
    )


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))
