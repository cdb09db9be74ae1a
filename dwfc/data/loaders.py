"""The data stage of `dwfc compress`: the recipe's data sets, their loaders, and the check that
the model fits them before any training."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from dwfc import inputs
from dwfc.config import Recipe
from dwfc.data import load_data_config
from dwfc.data.describe import num_classes
from dwfc.engine import distributed as dist
from dwfc.errors import InputError, first_line
from dwfc.inputs import Inputs

TOP5_ABOVE_CLASSES = 10  # top-5 accuracy is reported for data sets with more classes


@dataclass
class RunData:
    """A run's data: both sets, their loaders, and the generator that shuffles training."""

    train_set: Dataset
    eval_set: Dataset
    train_loader: DataLoader
    eval_loader: DataLoader
    generator: torch.Generator
    classes: int | None

    @property
    def f1(self) -> bool:
        return self.classes == 2

    @property
    def top5(self) -> bool:
        return self.classes is not None and self.classes > TOP5_ABOVE_CLASSES

    @property
    def samples(self) -> tuple[int, int]:
        return len(self.train_set), len(self.eval_set)  # type: ignore[arg-type]


def load_run_data(recipe: Recipe, device: torch.device) -> RunData:
    """The data sets of `recipe.data` and their loaders; under torchrun each rank gets its share.

    Example:
        data = load_run_data(load_recipe("demo"), torch.device("cpu"))
    """
    train, test = load_data_config(recipe.data)
    generator = torch.Generator().manual_seed(recipe.train.seed)
    on_cuda = device.type == "cuda"
    workers = recipe.data.num_workers or (min(4, os.cpu_count() or 1) if on_cuda else 0)
    # Not persistent: a persistent loader draws its worker seed once, so a resumed run would
    # shuffle differently from an uninterrupted one.
    common = {"num_workers": workers, "pin_memory": on_cuda}
    batch = recipe.data.batch_size
    if dist.world_size() > 1:
        sampler = DistributedSampler(train, shuffle=True, seed=recipe.train.seed)
        batch = max(1, batch // dist.world_size())  # the recipe's batch size is the global one
        train_loader = DataLoader(train, batch_size=batch, sampler=sampler, **common)
    else:
        train_loader = DataLoader(train, batch_size=batch, shuffle=True, generator=generator,
                                  **common)  # fmt: skip
    eval_loader = DataLoader(test, batch_size=recipe.data.eval_batch_size, **common)
    return RunData(train, test, train_loader, eval_loader, generator, num_classes(train))


def check_fit(model: nn.Module, data: RunData) -> Inputs:
    """One forward pass on an evaluation batch, so mismatches fail before any training.

    Returns the batch (the ONNX export's example input and parity batch).
    """
    x, y = next(iter(data.eval_loader))
    try:
        with torch.no_grad():
            logits = inputs.call(model.eval(), x)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise InputError(
            f"the model cannot take the data's input of shape {inputs.describe(x)}: "
            f"{first_line(exc)}"
        ) from None
    needed = max(data.classes or 0, int(y.max()) + 1)
    if logits.dim() != 2 or logits.shape[1] < needed:
        raise InputError(
            f"the model outputs shape {tuple(logits.shape[1:])} but the data has {needed} "
            f"classes: the model needs {needed} outputs"
        )
    return x
