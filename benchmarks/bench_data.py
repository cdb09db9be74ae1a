"""Data and dense models for the benchmarks: the validation split and the dense pretraining.

The lr/decay search never sees the test set: `mnist5k_validation` carves 500 images (50 per
class) out of the 4,000 mnist5k training images and returns (3,500 train, 500 validation);
the dense model used for the search is pretrained on those 3,500 images only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dwfc._atomic import atomic_path
from dwfc.data import mnist5k
from dwfc.demo import train_dense
from dwfc.errors import InputError
from dwfc.models import import_object

MODELS = {"lenet300": "dwfc.zoo:lenet_300_100", "lenet5": "dwfc.zoo:lenet5"}
VALIDATION_SOURCE = "benchmarks.bench_data:mnist5k_validation"


def mnist5k_validation(
    split_seed: int = 0, holdout: int = 500, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """(train minus `holdout`, `holdout` validation images) from mnist5k's 4,000 training images.

    Stratified: holdout / 10 images of each class, drawn with `numpy.random.default_rng(seed)`.
    """
    if holdout % 10 or not 0 < holdout < 4000:
        raise InputError(f"holdout must be a multiple of 10 between 10 and 3990, got {holdout}")
    train, _ = mnist5k(split_seed)
    x, y = train.tensors
    rng = np.random.default_rng(seed)
    labels = y.numpy()
    val = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[: holdout // 10] for c in range(10)]
    )
    keep = np.setdiff1d(np.arange(len(labels)), val)  # sorted: keeps mnist5k's shuffled order
    val = np.sort(val)
    return (
        TensorDataset(x[torch.from_numpy(keep)], y[torch.from_numpy(keep)]),
        TensorDataset(x[torch.from_numpy(val)], y[torch.from_numpy(val)]),
    )


def splits(split: str) -> tuple[TensorDataset, TensorDataset]:
    """'test': mnist5k (4,000 / 1,000); 'val': mnist5k_validation (3,500 / 500)."""
    return mnist5k() if split == "test" else mnist5k_validation()


def build(model: str, **kwargs: object) -> nn.Module:
    """A fresh model of the benchmark's name for it ('lenet300', 'lenet5'), or of a factory
    path ('dwfc.zoo:resnet_mini') called with `kwargs`."""
    return import_object(MODELS.get(model, model), "--models")(**kwargs)


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """A short content hash of a state dict (names, shapes and exact values)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def accuracy(model: nn.Module, data: TensorDataset) -> float:
    """Top-1 accuracy of `model` on a TensorDataset, as a fraction."""
    model.eval()
    x, y = data.tensors
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def pretrain(model: str, split: str, folder: Path, epochs: int = 20, seed: int = 0,
             **kwargs: int) -> Path:  # fmt: skip
    """Train `model` (built with `kwargs`) densely once (seeded) on the split's training part;
    reuse if saved."""
    named = "".join(f"-{k}{v}" for k, v in sorted(kwargs.items()))
    path = folder / f"dense-{model.rpartition(':')[2]}{named}-{split}-e{epochs}-s{seed}.pt"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train, _ = splits(split)
    net = build(model, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    train_dense(net, DataLoader(train, batch_size=128, shuffle=True, generator=generator), epochs)
    with atomic_path(path) as tmp:
        torch.save(net.state_dict(), tmp)
    return path
