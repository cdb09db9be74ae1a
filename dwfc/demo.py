"""`dwfc demo`: pretrain a small dense model on the bundled data, then compress it."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from dwfc._atomic import atomic_path
from dwfc.config import load_recipe
from dwfc.data import mnist5k
from dwfc.engine.trainer import Callback
from dwfc.pipeline import compress
from dwfc.report.schema import RunReport
from dwfc.zoo import lenet_300_100


def train_dense(model: nn.Module, loader: DataLoader, epochs: int = 20, lr: float = 0.05) -> None:
    """Plain SGD + momentum + cosine training, as a stand-in for the user's own pretraining."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    model.eval()


def run_demo(out_dir: Path, callback: Callback | None = None) -> tuple[RunReport, str]:
    """Pretrain LeNet-300-100 into `out_dir/pretrained`, compress it into `out_dir/compressed`.

    Returns the report and the `dwfc compress` command line that does the second step.
    """
    emit = callback or (lambda event, info: None)
    recipe = load_recipe("demo")
    torch.manual_seed(recipe.train.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    pretrained = out_dir / "pretrained" / "lenet_300_100.pt"
    pretrained.parent.mkdir(exist_ok=True)
    emit("stage", {"stage": "pretrain a dense LeNet-300-100 on mnist5k"})
    train, _ = mnist5k()
    model = lenet_300_100()
    generator = torch.Generator().manual_seed(recipe.train.seed)
    train_dense(model, DataLoader(train, batch_size=128, shuffle=True, generator=generator))
    with atomic_path(pretrained) as tmp:
        torch.save(model.state_dict(), tmp)
    compressed = out_dir / "compressed"
    if compressed.exists():
        shutil.rmtree(compressed)
    report = compress(pretrained, compressed, recipe, callback=callback)
    command = (
        f"dwfc compress {pretrained} --recipe demo --arch {recipe.model.arch} "
        f"--depth {recipe.factorize.depth} --target-sparsity {recipe.sparsity.target} "
        f"--data {recipe.data.source} --out {compressed}"
    )
    return report, command
