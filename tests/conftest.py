"""Shared fixtures: a briefly pretrained LeNet-300-100 on mnist5k and tiny compression recipes.

Tests marked `slow` (end-to-end runs of tens of seconds, e.g. `dwfc demo`) run by default;
`pytest -m "not slow"` leaves them out for a quick loop.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from dwfc.config import Recipe, load_recipe
from dwfc.data import mnist5k
from dwfc.zoo import lenet_300_100

ARCH = "dwfc.zoo:lenet_300_100"

# A run of a few seconds on 2 CPU cores: 1 DWF epoch, then 1 epoch of masked fine-tuning.
TINY_OVERRIDES = (f"model.arch={ARCH}", "train.epochs=1", "sparsity.finetune_epochs=1")


@pytest.fixture(scope="session")
def mnist_splits() -> tuple[TensorDataset, TensorDataset]:
    """The bundled mnist5k (train, eval) pair, as the pipeline loads it by default."""
    return mnist5k()


@pytest.fixture(scope="session")
def pretrained_dir(
    tmp_path_factory: pytest.TempPathFactory, mnist_splits: tuple[TensorDataset, TensorDataset]
) -> Path:
    """A folder with a LeNet-300-100 pretrained 1 epoch on mnist5k, saved two ways.

    `state_dict.pt` holds `model.state_dict()` (needs --arch); `module.pt` holds the whole
    pickled module (needs --trust-model).
    """
    torch.manual_seed(0)
    train, _ = mnist_splits
    model = lenet_300_100()
    loader = DataLoader(
        train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for x, y in loader:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    folder = tmp_path_factory.mktemp("pretrained")
    torch.save(model.state_dict(), folder / "state_dict.pt")
    torch.save(model, folder / "module.pt")
    return folder


@pytest.fixture(scope="session")
def state_dict_path(pretrained_dir: Path) -> Path:
    return pretrained_dir / "state_dict.pt"


@pytest.fixture(scope="session")
def module_path(pretrained_dir: Path) -> Path:
    return pretrained_dir / "module.pt"


@pytest.fixture(scope="session")
def tiny_recipe() -> Callable[..., Recipe]:
    """`tiny_recipe(target, *more_overrides)`: the default recipe shrunk to a few seconds."""

    def make(target: float = 0.9, *overrides: str) -> Recipe:
        return load_recipe("default", [*TINY_OVERRIDES, f"sparsity.target={target}", *overrides])

    return make


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"run ended before writing {path}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {path} after {timeout} s")
        time.sleep(0.005)


@pytest.fixture(scope="session")
def wait_for() -> Callable[..., None]:
    """Waits until a file exists (a run's first checkpoint), failing if the process ends first."""
    return _wait_for
